r"""The project's figures on real data: hippocampus transfer on the Decathlon sample in ../shared/data.

Source task: the whole hippocampus (anterior and posterior merged) on most cases. Target task: the
anterior / posterior split, learnt from few cases in k-fold cross-validation and tested on cases
seen by neither. Every method is run through nnU-Net's own commands and the plugin's CLI:

    convert (paired, via symlinks) -> nnUNetv2_plan_and_preprocess (source) -> pretrain (source)
    -> plan-from-checkpoint (target) -> nnunet-peft benchmark (all trainers, all folds, test set)

    python scripts/hippocampus_transfer.py --work /tmp/hippo --base-features 16 --batch-size 2 --epochs 10 --iterations 10 \
        --source-epochs 15 --source-iterations 20 --test-folds 0

The data are read in place and never copied into the repository; the work folder holds links,
nnU-Net's folders and the report.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd_hippocampus_sample"
ADAPTERS = ["LoRAC", "ConvLoRA", "CPLoRA", "DoRAC", "ConvDoRA", "CPDoRA", "LoRAPT", "TCURLoRA", "HyPS"]


def trainers(epochs: int, iterations: int) -> list[str]:
    schedule = f"{epochs}ep_{iterations}it"
    return ([f"nnUNetTrainer{m}_{schedule}" for m in ADAPTERS + ["Finetune", "SegHead"]]
            + ["nnUNetTrainerNoFinetune", f"nnUNetTrainerFinetune_scratch_{schedule}"])


def link_subset(cases: list[str], folder: Path, test_layout: bool = False) -> Path:
    """Symlinks to the cases' image and label files (kept when a resumed run finds them)."""
    # the layout `nnunet-peft convert paired` reads by default, or nnU-Net's input naming for the test set
    images, labels = (folder / "imagesTs", folder / "labelsTs") if test_layout else (folder / "images", folder / "masks")
    if folder.is_dir():
        linked = {p.name.removesuffix(".nii.gz").removesuffix("_0000") for p in images.glob("*.nii.gz")}
        if linked != set(cases):
            raise SystemExit(f"{folder} holds other cases than this split; use a new --work folder")
        return folder
    images.mkdir(parents=True)
    labels.mkdir()
    for case in cases:
        (images / (f"{case}_0000.nii.gz" if test_layout else f"{case}.nii.gz")).symlink_to(DATA / "imagesTr" / f"{case}.nii.gz")
        (labels / f"{case}.nii.gz").symlink_to(DATA / "labelsTr" / f"{case}.nii.gz")
    return folder


def step(title: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
    """Run one step, its output in its own log; a step that finished before is skipped."""
    slug = "".join(c if c.isalnum() else "_" for c in title.split(" (")[0]).strip("_")
    log, done = log_dir / f"{slug}.log", log_dir / f"{slug}.done"
    if done.is_file():
        print(f"[{time.strftime('%H:%M:%S')}] {title}: done before, skipped", flush=True)
        return
    start = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {title} ...", flush=True)
    with log.open("w", encoding="utf-8") as f:
        code = subprocess.call(command, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log.read_text(encoding="utf-8")[-3000:]
        raise SystemExit(f"{title} failed (exit {code}); log: {log}\n{tail}")
    done.write_text(f"{time.time() - start:.0f} s\n", encoding="utf-8")
    print(f"    done in {time.time() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True,
                   help="work folder (created; running again with the same arguments resumes: finished steps and "
                        "finished benchmark runs are skipped)")
    p.add_argument("--n-target", type=int, default=15, help="target training cases (10-20)")
    p.add_argument("--n-test", type=int, default=20, help="held-out test cases")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8, help="target fine-tuning epochs")
    p.add_argument("--iterations", type=int, default=12, help="target iterations per epoch")
    p.add_argument("--source-epochs", type=int, default=20)
    p.add_argument("--source-iterations", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=None,
                   help="override the planned batch size (nnU-Net plans 6 for this task; 2 makes a CPU run "
                        "3x cheaper)")
    p.add_argument("--base-features", type=int, default=None,
                   help="width of the U-Net's first stage (nnU-Net plans 32; 16 makes a CPU iteration ~3.5x "
                        "cheaper). With either override the source is trained with a plans variant sharing "
                        "nnU-Net's preprocessed data, and the target inherits it through the checkpoint")
    p.add_argument("--test-folds", nargs="+", default=None, metavar="FOLD",
                   help="folds whose models predict the test set (default: all); 0 saves two thirds of it on a CPU")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent (the Decathlon hippocampus sample lives in ../shared/data)")
        return 0
    from nnunet_peft.commands.trainer_dir import trainer_environment

    work = args.work.resolve()
    env = trainer_environment()  # the plugin's trainers first; the user's own folders are kept
    for key, sub in [("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")]:
        (work / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(work / sub)
    # nnU-Net's export and preprocessing pools default to 8 workers, each importing torch: on a small
    # machine starting them cost ~40 s per validation, more than predicting the 5 validation cases
    env.setdefault("nnUNet_def_n_proc", str(min(4, os.cpu_count() or 1)))
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    cases = sorted(p.name[:-7] for p in (DATA / "imagesTr").glob("hippocampus_*.nii.gz"))
    order = np.random.default_rng(args.seed).permutation(len(cases))
    test = [cases[i] for i in order[:args.n_test]]
    target = [cases[i] for i in order[args.n_test:args.n_test + args.n_target]]
    source = [cases[i] for i in order[args.n_test + args.n_target:]]
    print(f"{len(source)} source, {len(target)} target ({args.folds}-fold CV), {len(test)} test cases; work folder {work}")
    src_links, tgt_links = link_subset(source, work / "links" / "source"), link_subset(target, work / "links" / "target")
    test_links = link_subset(test, work / "links" / "test", test_layout=True)

    py = sys.executable
    convert = [py, "-m", "nnunet_peft.cli", "convert", "paired"]
    step("convert source (labels 1, 2 -> 1)", convert + [str(src_links), "-d", "501", "-n", "HippocampusWhole",
         "--labels", ">0->1", "--label-names", "hippocampus", "--channel-name", "MRI", "-q"], env, logs)
    step("convert target (anterior / posterior)", convert + [str(tgt_links), "-d", "502", "-n", "HippocampusSplit",
         "--label-names", "anterior,posterior", "--channel-name", "MRI", "--folds", str(args.folds), "-q"], env, logs)
    step("plan and preprocess the source", ["nnUNetv2_plan_and_preprocess", "-d", "501", "-c", "3d_fullres", "-np", "2"],
         env, logs)
    plans = "nnUNetPlans"
    if args.batch_size or args.base_features:
        from nnunet_peft.plans_variant import write_plans_variant

        plans = "_".join(["nnUNetPlans"] + ([f"w{args.base_features}"] if args.base_features else [])
                         + ([f"b{args.batch_size}"] if args.batch_size else []))
        write_plans_variant(work / "preprocessed" / "Dataset501_HippocampusWhole", plans, "3d_fullres",
                            base_features=args.base_features, batch_size=args.batch_size)
        print(f"    plans variant {plans}: width {args.base_features or 'as planned'}, batch "
              f"{args.batch_size or 'as planned'}")
    pretrain = f"nnUNetTrainerFinetune_scratch_{args.source_epochs}ep_{args.source_iterations}it"
    # fold 0 of nnU-Net's own split: fold "all" would validate on every source case afterwards
    step(f"pretrain on the source ({pretrain}, fold 0)",
         ["nnUNetv2_train", "501", "3d_fullres", "0", "-tr", pretrain, "-p", plans, "-device", args.device], env, logs)
    checkpoint = work / "results" / "Dataset501_HippocampusWhole" / f"{pretrain}__{plans}__3d_fullres" / "fold_0" / "checkpoint_final.pth"
    step("plan the target from the checkpoint", [py, "-m", "nnunet_peft.cli", "plan-from-checkpoint", "-d", "502",
         "-c", str(checkpoint), "-np", "2"], env, logs)
    step("benchmark every method", [py, "-m", "nnunet_peft.cli", "benchmark", "-d", "502", "-c", "3d_fullres",
         "-p", "nnUNetPlans_pretrained", "--pretrained", str(checkpoint), "--trainers", *trainers(args.epochs, args.iterations),
         "--folds", *map(str, range(args.folds)), "--device", args.device, "--test-images", str(test_links / "imagesTs"),
         "--test-labels", str(test_links / "labelsTs"), "--out", str(work / "benchmark"),
         # on a CPU, nnU-Net's 8-fold mirroring would make predicting the test set cost as much as training
         *(["--disable-tta"] if args.device == "cpu" else []),
         *(["--test-folds", *args.test_folds] if args.test_folds else [])], env, logs)
    print(f"report: {work / 'benchmark' / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
