"""Tri-planar 2-D nnU-Net on the demo's synthetic head CT: pretrain per view, adapt per view, score the ensemble.

The SAH study's "multi-view Unet" read as nnU-Net users mean it: one 2-D network per orientation,
probabilities averaged. On the synthetic data of ``nnunet-peft demo`` (source: TBI-like bleeds,
target: SAH-like blood in the CSF spaces; 24 x 48 x 48 voxels at 6 x 4.5 x 4.5 mm):

1. ``nnunet-peft plan-views`` plans and preprocesses the source three times (axial, coronal,
   sagittal), with nnU-Net's 2-D U-Net or (``--architecture multiview``) the laboratory's Multiview
   network;
2. a stock network is trained from scratch per view on the source (``Finetune_scratch``, nnU-Net's
   own training with a short schedule in its name);
3. ``plan-views --checkpoints`` plans the target from the three checkpoints (each keeps its view);
4. ``nnunet-peft benchmark --views`` fine-tunes each method per view on the target, ensembles the
   views' probabilities with nnU-Net's ensembling and scores every view and the ensemble on
   validation and on the held-out test cases, with paired tests of each view against the ensemble.

Everything runs through nnU-Net's and this plugin's command lines, in ``--work`` (nnU-Net folders
inside it); steps whose outputs exist are skipped, so a rerun resumes. The CPU schedule is short
(``--pretrain 16x40 --finetune 6x10`` by default, as the 3-D demo): it shows that the path works and
what each view costs, not a ranking; with nnU-Net's 2-D U-Net it ran in 51 minutes on a quiet
2-core CPU (2026-12-02), with the Multiview network in 89 minutes on the same CPU shared with
another training (2026-12-05; docs/results/multiview_demo.md). ``--smoke`` checks the
set-up (6 cases, 1 epoch of 2 iterations, Dice near 0 expected): 20 minutes wall, 11 minutes of CPU,
on a 2-core CPU shared with another training (2026-12-01).

    python scripts/multiview_demo.py --work /tmp/mv_demo                          # CPU schedule
    python scripts/multiview_demo.py --work /tmp/mv_demo_mv --architecture multiview
    python scripts/multiview_demo.py --work /tmp/mv_smoke --smoke                 # set-up check
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from nnunet_peft.demo import synthetic
from nnunet_peft.planning.view_planner import VIEWS, default_plans_name

SOURCE_ID, TARGET_ID = 911, 912
FOLD = 0


def schedule(text: str) -> tuple[int, int]:
    try:
        epochs, iterations = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected EPOCHSxITERATIONS such as 16x40, got {text!r}") from None
    if epochs < 1 or iterations < 1:
        raise argparse.ArgumentTypeError(f"epochs and iterations must be positive, got {text!r}")
    return epochs, iterations


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="work folder (nnUNet_raw/_preprocessed/_results inside)")
    p.add_argument("--architecture", choices=("unet", "multiview"), default="unet")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--pretrain", type=schedule, default=(16, 40), metavar="ExI", help="source schedule (16x40)")
    p.add_argument("--finetune", type=schedule, default=(6, 10), metavar="ExI", help="target schedule (6x10)")
    p.add_argument("--methods", nargs="+", default=["CPLoRA", "NoFinetune"],
                   help="trainer methods on the target (default: CPLoRA NoFinetune)")
    p.add_argument("--source-cases", type=int, default=30)
    p.add_argument("--target-cases", type=int, default=24, help="target training cases (default 24)")
    p.add_argument("--test-cases", type=int, default=6)
    p.add_argument("--smoke", action="store_true",
                   help="set-up check: 6 source and 6 target cases, 2 test cases, 1 epoch of 2 iterations")
    p.add_argument("-np", "--num-processes", type=int, default=2)
    args = p.parse_args(argv)
    if args.smoke:
        args.pretrain = args.finetune = (1, 2)
        args.source_cases, args.target_cases, args.test_cases = 6, 6, 2
    return args


def run(command: list[str], env: dict[str, str], log: Path) -> None:
    print("$ " + " ".join(command), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        code = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        sys.exit(f"failed ({code}): {' '.join(command)}\nlog {log}:\n" + "\n".join(tail))


def trainer_name(method: str, epochs: int, iterations: int) -> str:
    return "nnUNetTrainerNoFinetune" if method == "NoFinetune" else f"nnUNetTrainer{method}_{epochs}ep_{iterations}it"


def main(argv=None) -> int:
    from nnunet_peft.trainer_folder import trainer_environment

    args = parse_args(argv)
    work = args.work.resolve()
    raw, pre, results, logs = (work / n for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "logs"))
    env = trainer_environment(dict(os.environ))
    env.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(results),
               nnUNet_def_n_proc=str(args.num_processes))
    np_ = str(args.num_processes)

    source = raw / f"Dataset{SOURCE_ID}_SyntheticTBI"
    target = raw / f"Dataset{TARGET_ID}_SyntheticSAH"
    if not source.is_dir():
        synthetic.write_dataset(raw, SOURCE_ID, "tbi", args.source_cases, 0)
    if not target.is_dir():
        synthetic.write_dataset(raw, TARGET_ID, "sah", args.target_cases, args.test_cases)

    plans = [default_plans_name(v, args.architecture) for v in VIEWS]
    if not all((pre / source.name / f"{p}.json").is_file() for p in plans):
        run(["nnunet-peft", "plan-views", "-d", str(SOURCE_ID), "--architecture", args.architecture, "-np", np_],
            env, logs / "plan_source.log")

    epochs, iterations = args.pretrain
    pretrain = f"nnUNetTrainerFinetune_scratch_{epochs}ep_{iterations}it"
    checkpoints = []
    for view, p in zip(VIEWS, plans):
        ckpt = results / source.name / f"{pretrain}__{p}__2d" / f"fold_{FOLD}" / "checkpoint_final.pth"
        if not ckpt.is_file():
            run(["nnUNetv2_train", str(SOURCE_ID), "2d", str(FOLD), "-p", p, "-tr", pretrain, "-device", args.device],
                env, logs / f"pretrain_{view}.log")
        checkpoints.append(str(ckpt))

    prefix = f"nnUNetPlans_pretrained_{args.architecture}"
    target_plans = [f"{prefix}_{v}" for v in VIEWS]
    if not all((pre / target.name / f"{p}.json").is_file() for p in target_plans):
        run(["nnunet-peft", "plan-views", "-d", str(TARGET_ID), "--checkpoints", *checkpoints,
             "--plans-prefix", prefix, "-np", np_], env, logs / "plan_target.log")

    trainers = [trainer_name(m, *args.finetune) for m in args.methods]
    out = work / f"benchmark_{args.architecture}"
    run(["nnunet-peft", "benchmark", "-d", str(TARGET_ID), "-c", "2d", "--views", *target_plans,
         "--pretrained", *checkpoints, "--trainers", *trainers, "--folds", str(FOLD),
         "--test-images", str(target / "imagesTs"), "--test-labels", str(target / "labelsTs"),
         "--disable-tta", "--device", args.device, "-np", np_, "--out", str(out)], env, logs / "benchmark.log")
    print(f"report: {out / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
