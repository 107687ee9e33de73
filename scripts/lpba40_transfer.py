r"""Cross-dataset transfer on real data: Decathlon hippocampus (source) to LPBA40 (target).

The setting of the LoRA-PT and HyPS papers: pretrain on one hippocampus cohort, adapt to a small
cohort from another site, scanner and annotation protocol. Every step is nnU-Net's own command or
the plugin's CLI, so the figures are what a user of those commands gets:

    source: convert paired (Decathlon, anterior+posterior -> hippocampus) -> nnUNetv2_plan_and_preprocess
            -> width/batch plans variant -> pretrain from scratch (nnUNetTrainerFinetune_scratch_...)
    target: convert lpba40 (training subjects; hippocampus crops, one case per side, subject-grouped
            folds) -> plan-from-checkpoint -> nnunet-peft benchmark (phases below)
    test:   convert lpba40 (the other subjects, the same crops), predicted once, after every choice

Phases (each resumable; run them in order, each its own invocation):

    sweep   learning rate and rank on validation folds 0 and 1, no test set
    final   every method (or those --methods names) with the defaults the sweep chose, validation +
            test set; the old task: every test model and the base on the Decathlon cases the base never
            trained on (its fold-0 validation cases), on the class the tasks share (forgetting)
    curve   test Dice against the number of training subjects and the schedule length

    python scripts/lpba40_transfer.py --work /tmp/lpba --phase source
    python scripts/lpba40_transfer.py --work /tmp/lpba --phase sweep

The data are read in place and never copied into the repository; the work folder holds links,
nnU-Net's folders and the reports.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nnunet_peft.config import METHODS
from nnunet_peft.planning.from_checkpoint import DEFAULT_PLANS_NAME

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MSD = SHARED / "msd_hippocampus_sample"
LPBA40 = SHARED / "lpba40"
SOURCE_ID, TARGET_ID, TEST_ID = 601, 602, 603
TARGET, TARGET_PLANS = f"Dataset{TARGET_ID}_LPBA40Hippocampus", DEFAULT_PLANS_NAME
N_TRAIN_SUBJECTS = 10


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


def link_msd(folder: Path, msd: Path = MSD) -> Path:
    """The Decathlon folder ``msd`` as `convert paired` reads it (images/, masks/), through symlinks.

    A folder linked by an earlier run is kept (the run resumes with the source it started from).
    """
    if folder.is_dir():
        return folder
    images = sorted((msd / "imagesTr").glob("hippocampus_*.nii.gz"))
    if not images:
        raise SystemExit(f"--msd {msd}: no imagesTr/hippocampus_*.nii.gz; expected the Decathlon Task04_Hippocampus "
                         "layout (imagesTr/ and labelsTr/)")
    tmp = folder.with_name(folder.name + ".partial")
    for sub in ("images", "masks"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    for image in images:
        (tmp / "images" / image.name).symlink_to(image)
        (tmp / "masks" / image.name).symlink_to(msd / "labelsTr" / image.name)
    tmp.rename(folder)
    return folder


def source_phase(args: argparse.Namespace, env: dict[str, str], work: Path, logs: Path) -> Path:
    py = sys.executable
    links = link_msd(work / "links" / "msd", args.msd)
    step("convert source (Decathlon, labels 1, 2 -> 1)",
         [py, "-m", "nnunet_peft.cli", "convert", "paired", str(links), "-d", str(SOURCE_ID), "-n", "MSDHippocampus",
          "--labels", ">0->1", "--label-names", "hippocampus", "--channel-name", "MRI", "-q"], env, logs)
    step("plan and preprocess the source",
         ["nnUNetv2_plan_and_preprocess", "-d", str(SOURCE_ID), "-c", "3d_fullres", "-np", "2"], env, logs)
    from nnunet_peft.planning.plans_variant import write_plans_variant

    write_plans_variant(work / "preprocessed" / f"Dataset{SOURCE_ID}_MSDHippocampus", source_plans_name(args),
                        "3d_fullres", base_features=args.base_features, batch_size=args.batch_size)
    step(f"pretrain on the source ({pretrain_trainer(args)}, fold 0)",
         ["nnUNetv2_train", str(SOURCE_ID), "3d_fullres", "0", "-tr", pretrain_trainer(args),
          "-p", source_plans_name(args), "-device", args.device], env, logs)
    return source_checkpoint(args, work)


def source_holdout(work: Path) -> Path:
    """The source's fold-0 validation cases, which the base never trained on, as ``images/`` and
    ``labels/`` (links into the source's raw dataset): the old task's test set for the forgetting check."""
    folder = work / "links" / "source_holdout"
    if folder.is_dir():
        return folder
    name = f"Dataset{SOURCE_ID}_MSDHippocampus"
    raw, splits = work / "raw" / name, work / "preprocessed" / name / "splits_final.json"
    if not splits.is_file():
        raise SystemExit(f"{splits} not found: the source's pretraining writes it (--phase source)")
    ending = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))["file_ending"]
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "labels").mkdir()
    for case in json.loads(splits.read_text(encoding="utf-8"))[0]["val"]:
        image, label = raw / "imagesTr" / f"{case}_0000{ending}", raw / "labelsTr" / f"{case}{ending}"
        if not (image.is_file() and label.is_file()):
            raise SystemExit(f"source validation case {case}: {image} or {label} is missing; "
                             f"convert the source again (delete {raw} and rerun --phase source)")
        (tmp / "images" / image.name).symlink_to(image)
        (tmp / "labels" / label.name).symlink_to(label)
    tmp.rename(folder)
    return folder


def source_plans_name(args: argparse.Namespace) -> str:
    return f"nnUNetPlans_w{args.base_features}_b{args.batch_size}"


def pretrain_trainer(args: argparse.Namespace) -> str:
    return f"nnUNetTrainerFinetune_scratch_{args.source_epochs}ep_{args.source_iterations}it"


def source_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    return (work / "results" / f"Dataset{SOURCE_ID}_MSDHippocampus"
            / f"{pretrain_trainer(args)}__{source_plans_name(args)}__3d_fullres" / "fold_0" / "checkpoint_final.pth")


# ------------------------------------------------------------------ target
def subjects(folder: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in (folder / "images").glob("S*.delineation.skullstripped.nii.gz"))


def split_subjects(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Training and test subjects: the arguments' lists, or a seeded draw of N_TRAIN_SUBJECTS."""
    available = subjects(args.lpba40)
    if args.train_subjects:
        train = sorted(args.train_subjects)
        test = sorted(args.test_subjects or [s for s in available if s not in train])
    else:
        order = np.random.default_rng(args.seed).permutation(len(available))
        train = sorted(available[i] for i in order[:N_TRAIN_SUBJECTS])
        test = sorted(args.test_subjects or [s for s in available if s not in train])
    missing = sorted(set(train + test) - set(available))
    if missing or set(train) & set(test):
        raise SystemExit(f"subjects {missing or sorted(set(train) & set(test))} are missing from {args.lpba40} "
                         f"or both training and test subjects")
    return train, test


def link_lpba40(root: Path, chosen: list[str], folder: Path) -> Path:
    """The chosen subjects' image and label files, through symlinks, in LPBA40's own naming."""
    if folder.is_dir():
        if subjects(folder) != chosen:
            raise SystemExit(f"{folder} holds other subjects than this split; use a new --work folder")
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    for sub in ("images", "labels"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    for subject in chosen:
        for sub, suffix in (("images", "skullstripped"), ("labels", "structure.label")):
            name = f"{subject}.delineation.{suffix}.nii.gz"
            (tmp / sub / name).symlink_to(root / sub / name)
    tmp.rename(folder)
    return folder


CURVE_SIZES = (1, 2, 4)  # training subjects of the learning-curve folds; fold 0 itself trains on 8


def add_curve_folds(splits_file: Path, seed: int) -> None:
    """Append folds 5, 6, 7 to nnU-Net's splits: fold 0's validation subjects, trained on nested subsets
    (1, 2, 4 subjects) of fold 0's training subjects, so that one preprocessed dataset serves the curve."""
    splits = json.loads(splits_file.read_text(encoding="utf-8"))
    if len(splits) > 5:
        return
    train = splits[0]["train"]
    by_subject = sorted({case[:-1] for case in train})  # S05L, S05R -> S05
    order = [by_subject[i] for i in np.random.default_rng(seed).permutation(len(by_subject))]
    for size in CURVE_SIZES:
        keep = set(order[:size])
        splits.append({"train": [c for c in train if c[:-1] in keep], "val": splits[0]["val"]})
    tmp = splits_file.with_name(splits_file.name + ".partial")
    tmp.write_text(json.dumps(splits, indent=2), encoding="utf-8")
    tmp.replace(splits_file)


def target_phase(args: argparse.Namespace, env: dict[str, str], work: Path, logs: Path, checkpoint: Path) -> None:
    py = sys.executable
    train, test = split_subjects(args)
    print(f"target: {len(train)} training subjects ({' '.join(train)}); test: {len(test)} subjects ({' '.join(test)})")
    crops = ["--structures", "hippocampus", "--sides", "merged", "--crop-margin", str(args.crop_margin),
             "--split-sides", "-q"]
    step("convert target (LPBA40 training subjects, hippocampus crops per side)",
         [py, "-m", "nnunet_peft.cli", "convert", "lpba40", str(link_lpba40(args.lpba40, train, work / "links" / "train")),
          "-d", str(TARGET_ID), "-n", "LPBA40Hippocampus", "--folds", "5", *crops], env, logs)
    step("convert test (LPBA40 test subjects, the same crops)",
         [py, "-m", "nnunet_peft.cli", "convert", "lpba40", str(link_lpba40(args.lpba40, test, work / "links" / "test")),
          "-d", str(TEST_ID), "-n", "LPBA40HippocampusTest", *crops], env, logs)
    add_curve_folds(work / "preprocessed" / TARGET / "splits_final.json", args.seed)
    step("plan the target from the checkpoint",
         [py, "-m", "nnunet_peft.cli", "plan-from-checkpoint", "-d", str(TARGET_ID), "--checkpoint", str(checkpoint), "-np", "2"],
         env, logs)


def benchmark(args: argparse.Namespace, env: dict[str, str], work: Path, checkpoint: Path, trainers: list[str],
              folds: list[int], out: str, test_folds: list[int] | None = None, reference: str | None = None,
              source_test: Path | None = None) -> None:
    """`nnunet-peft benchmark` over these runs; finished runs are skipped, so calling it again resumes."""
    test_set = work / "raw" / f"Dataset{TEST_ID}_LPBA40HippocampusTest"
    command = [sys.executable, "-m", "nnunet_peft.cli", "benchmark", "-d", str(TARGET_ID), "-c", "3d_fullres",
               "-p", TARGET_PLANS, "--pretrained", str(checkpoint), "--trainers", *trainers,
               "--folds", *map(str, folds), "--device", args.device, "--out", str(work / out)]
    if test_folds:
        # on a CPU, nnU-Net's 8-fold mirroring would make predicting the test set cost as much as training
        command += ["--test-images", str(test_set / "imagesTr"), "--test-labels", str(test_set / "labelsTr"),
                    "--test-folds", *map(str, test_folds), *(["--disable-tta"] if args.device == "cpu" else [])]
    if source_test is not None:
        command += ["--source-test-images", str(source_test / "images"), "--source-test-labels", str(source_test / "labels")]
    if reference:
        command += ["--reference", reference]
    print(f"[{time.strftime('%H:%M:%S')}] benchmark {out}: {len(trainers)} trainers x folds {folds}", flush=True)
    code = subprocess.call(command, env=env)
    if code != 0:
        raise SystemExit(f"benchmark {out} failed (exit {code})")


def schedule(epochs: int, iterations: int) -> str:
    return f"{epochs}ep_{iterations}it"


SWEEP_LEARNING_RATES = {"Finetune": ("0p001", "0p003", "0p01"), "LoRAC": ("0p01", "0p03", "0p1"),
                        "CPLoRA": ("0p01", "0p03", "0p1")}
# CP-LoRA, the SAH paper's method, at ranks that keep it under 5% of Finetune's trainable parameters
# (rank 8 is 1.1% on this plan, the count grows linearly with rank); 2 x 2 runs fit the CPU budget
SWEEP_RANKS = {"CPLoRA": (4, 32)}


def sweep_phase(args: argparse.Namespace, env: dict[str, str], work: Path, checkpoint: Path) -> None:
    """Learning rate per family, then rank at the chosen rate, on validation folds 0 and 1 only."""
    s = schedule(args.epochs, args.iterations)
    trainers = [f"nnUNetTrainer{m}_{s}_lr{lr}" for m, rates in SWEEP_LEARNING_RATES.items() for lr in rates]
    benchmark(args, env, work, checkpoint, trainers, [0, 1], "sweep_lr", reference=f"nnUNetTrainerFinetune_{s}_lr0p01")
    if args.adapter_lr:
        trainers = [f"nnUNetTrainer{m}_{s}_r{r}_lr{args.adapter_lr}" for m, ranks in SWEEP_RANKS.items() for r in ranks]
        benchmark(args, env, work, checkpoint, trainers, [0, 1], "sweep_rank")


# the trainer-name tokens of every adapter method, in the registry's (the docs') order
ADAPTERS = [spec.token for spec in METHODS.values()]
FINAL_METHODS = [*ADAPTERS, "Finetune", "SegHead", "Finetune_scratch"]


def reuse_sweep_runs(work: Path, trainers: list[str], folds: list[int]) -> None:
    """Link a plain name's fold to the sweep's run of the same configuration, when the sweep trained it.

    The sweep's rate that became the default (e.g. ``CPLoRA_15ep_20it_lr0p03`` for ``CPLoRA_15ep_20it``)
    is the very run the plain name would train again; its validation decided the default, and it has
    never seen the test subjects, so its model may predict them once like any other fold-0 model.
    """
    from nnunet_peft.name_grammar import parse_trainer_name

    results = work / "results" / TARGET
    suffix = f"__{TARGET_PLANS}__3d_fullres"
    for trainer in trainers:
        rate = f"{parse_trainer_name(trainer).initial_lr:g}".replace(".", "p")
        sweep, plain = results / f"{trainer}_lr{rate}{suffix}", results / f"{trainer}{suffix}"
        for fold in folds:
            done = sweep / f"fold_{fold}"
            if not (done / "checkpoint_final.pth").is_file() or (plain / f"fold_{fold}").exists():
                continue
            plain.mkdir(parents=True, exist_ok=True)
            for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
                if not (plain / name).exists():
                    (plain / name).write_bytes((sweep / name).read_bytes())
            (plain / f"fold_{fold}").symlink_to(done, target_is_directory=True)
            print(f"{trainer} fold {fold}: the sweep's run {done.parent.name.split('__')[0]} (same configuration)")


SMALL_ADAPTER_SHARE = 0.05  # the bar: under 5% of Finetune's trainable parameters


def best_adapters(work: Path, requested: list[str] | None) -> list[str] | None:
    """``--best auto``: the adapter method with the highest mean validation Dice of the final phase's
    fold 0 (every method trained on the same subjects), and the best of those that train under 5% of
    ``Finetune``'s parameters, the regime the comparison is about. The test cases play no part."""
    if requested != ["auto"]:
        return requested
    import pandas as pd

    report = work / "final" / "report"
    if not (report / "cases.csv").is_file():
        raise SystemExit(f"--best auto reads {report / 'cases.csv'}: run --phase final first")
    cases = pd.read_csv(report / "cases.csv", dtype={"fold": str})
    cases = cases[(cases["split"] == "val") & (cases["fold"] == "0")]
    costs = pd.read_csv(report / "costs.csv").set_index("method")["trainable_parameters"]
    family = {m: m.split("_")[0] for m in cases["method"].unique() if m.split("_")[0] in ADAPTERS}
    ranked = cases[cases["method"].isin(family)].groupby("method")["dice"].mean().sort_values(ascending=False)
    finetune = next(costs[m] for m in costs.index if m.split("_")[0] == "Finetune" and "_scratch" not in m)
    small = [m for m in ranked.index if costs[m] < SMALL_ADAPTER_SHARE * finetune]
    print("adapters by fold-0 validation Dice: " + ", ".join(
        f"{family[m]} {d:.3f} ({costs[m] / finetune:.1%} of Finetune's parameters)" for m, d in ranked.items()), flush=True)
    chosen = [ranked.index[0]] + [m for m in small[:1] if m != ranked.index[0]]
    if len(chosen) == 1:  # the best is small itself: the runner-up is the second
        chosen.append(ranked.index[1])
    return [family[m] for m in chosen]


def final_phase(args: argparse.Namespace, env: dict[str, str], work: Path, checkpoint: Path) -> None:
    """The --methods (default: every method) with the plain names' defaults on fold 0, test set predicted
    once by each fold-0 model; then two more folds for Finetune, from-scratch and the --best adapters."""
    s = schedule(args.epochs, args.iterations)
    # the base itself (NoFinetune) always: it is what every method's forgetting is measured against
    trainers = [f"nnUNetTrainer{m}_{s}" for m in args.methods] + ["nnUNetTrainerNoFinetune"]
    reuse_sweep_runs(work, trainers, [0, 1])
    holdout = source_holdout(work)
    benchmark(args, env, work, checkpoint, trainers, [0], "final", test_folds=[0], source_test=holdout)
    args.best = best_adapters(work, args.best)
    if args.best:
        trainers = [f"nnUNetTrainer{m}_{s}" for m in ["Finetune", *args.best]] + [f"nnUNetTrainerFinetune_scratch_{s}"]
        benchmark(args, env, work, checkpoint, trainers, [0, 1, 2], "final_3folds", test_folds=[0], source_test=holdout)


def curve_phase(args: argparse.Namespace, env: dict[str, str], work: Path, checkpoint: Path) -> None:
    """Test Dice against training subjects (folds 5, 6, 7 and 0: 1, 2, 4, 8 subjects, one validation set)
    and against the schedule (a third of the iterations), for Finetune, from scratch and the --best adapters."""
    args.best = best_adapters(work, args.best)
    if not args.best:
        raise SystemExit("--phase curve needs --best ADAPTER [ADAPTER] (or auto): the adapters the final phase ranked first")
    folds = [5, 6, 7, 0]
    for epochs in (args.epochs, max(1, args.epochs // 3)):
        s = schedule(epochs, args.iterations)
        trainers = ([f"nnUNetTrainer{m}_{s}" for m in ["Finetune", *args.best]]
                    + [f"nnUNetTrainerFinetune_scratch_{s}"])
        benchmark(args, env, work, checkpoint, trainers, folds, f"curve_{s}", test_folds=folds)
    summarise_curve(work, folds)


def summarise_curve(work: Path, folds: list[int]) -> None:
    """curve.csv / curve.md / curve.png: mean test Dice per method, schedule and number of training subjects."""
    import pandas as pd

    sizes = dict(zip(map(str, folds), (*CURVE_SIZES, 8)))
    frames = []
    for report in sorted(work.glob("curve_*/report/cases.csv")):
        cases = pd.read_csv(report, dtype={"fold": str})
        cases = cases[(cases["split"] == "test") & cases["fold"].isin(sizes)]
        cases["schedule"] = report.parts[-3].removeprefix("curve_")
        frames.append(cases)
    if not frames:
        return
    cases = pd.concat(frames)
    cases["subjects"] = cases["fold"].map(sizes)
    cases["method"] = [m.split("_")[0] + ("_scratch" if "_scratch" in m else "") for m in cases["method"]]
    table = (cases.groupby(["schedule", "method", "subjects"])["dice"].agg(["mean", "std", "count"])
             .reset_index().sort_values(["schedule", "method", "subjects"]))
    table.to_csv(work / "curve.csv", index=False)
    wide = table.pivot_table(index=["schedule", "method"], columns="subjects", values="mean")
    lines = ["| schedule | method | " + " | ".join(f"{n} subject{'s' * (n > 1)}" for n in wide.columns) + " |",
             "|---|---|" + "---|" * len(wide.columns)]
    lines += [f"| {sched} | {method} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
              for (sched, method), row in wide.iterrows()]
    (work / "curve.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, table["schedule"].nunique(), figsize=(5 * table["schedule"].nunique(), 4),
                             sharey=True, squeeze=False)
    schedules = sorted(table["schedule"].unique(), key=lambda name: int(name.split("ep")[0]))  # short first
    for ax, sched in zip(axes[0], schedules):
        group = table[table["schedule"] == sched]
        for method, rows in group.groupby("method"):
            ax.errorbar(rows["subjects"], rows["mean"], yerr=rows["std"], marker="o", capsize=3, label=method)
        ax.set(xscale="log", xticks=list(sizes.values()), xticklabels=list(sizes.values()),
               xlabel="training subjects (2 crops each)", title=f"schedule {sched}")
        ax.minorticks_off()  # a log axis otherwise labels 3 and 6 as 3x10^0
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test Dice (20 subjects, 40 crops)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(work / "curve.png", dpi=120)
    print((work / "curve.md").read_text(encoding="utf-8"))


def environment(work: Path) -> dict[str, str]:
    from nnunet_peft.trainer_folder import trainer_environment

    env = trainer_environment()  # the plugin's trainers first; the user's own folders are kept
    for key, sub in [("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")]:
        (work / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(work / sub)
    # nnU-Net's export and preprocessing pools default to 8 workers, each importing torch: on a small
    # machine starting them costs more than predicting a handful of validation cases
    env.setdefault("nnUNet_def_n_proc", str(min(4, os.cpu_count() or 1)))
    return env


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default.

    An option whose default is None (required, or worked out at run time) says what it means in
    its own help, where "(default: None)" would say nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="work folder (created; a rerun resumes)")
    p.add_argument("--phase", choices=("source", "sweep", "final", "curve"), required=True,
                   help="the phase to run (above); each runs the source phase first, skipped once done")
    p.add_argument("--base-features", type=int, default=16,
                   help="width of the U-Net's first stage (nnU-Net plans 32; 16 makes a CPU iteration ~3.5x cheaper)")
    p.add_argument("--batch-size", type=int, default=2, help="batch size (nnU-Net plans 9 for these crops)")
    p.add_argument("--source-epochs", type=int, default=60, help="pretraining epochs")
    p.add_argument("--source-iterations", type=int, default=20, help="pretraining iterations per epoch")
    p.add_argument("--msd", type=Path, default=MSD,
                   help="Decathlon hippocampus folder (Task04 layout: imagesTr/ and labelsTr/), the source")
    p.add_argument("--lpba40", type=Path, default=LPBA40, help="LPBA40 folder with images/ and labels/, the target")
    p.add_argument("--train-subjects", nargs="+", metavar="SNN",
                   help=f"target training subjects (default: {N_TRAIN_SUBJECTS} drawn with --seed)")
    p.add_argument("--test-subjects", nargs="+", metavar="SNN", help="test subjects (default: all others)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject split and the learning-curve folds")
    p.add_argument("--crop-margin", type=float, default=8.0, help="mm around each hippocampus")
    p.add_argument("--epochs", type=int, default=15, help="target epochs")
    p.add_argument("--iterations", type=int, default=20, help="target iterations per epoch")
    p.add_argument("--adapter-lr", metavar="LR",
                   help="the sweep's chosen CP-LoRA rate (e.g. 0p03): runs the rank sweep at that rate (default: none, "
                        "the learning-rate sweep alone)")
    p.add_argument("--best", nargs="+", metavar="METHOD",
                   help="final/curve: the adapter methods (e.g. CPLoRA LoRAC) that validation ranked first, or 'auto' "
                        "for the best by the final phase's fold-0 validation Dice and the best under 5%% of "
                        "Finetune's trainable parameters (default: none; final then skips the three-fold repeat "
                        "of the best, curve needs it)")
    p.add_argument("--methods", nargs="+", choices=FINAL_METHODS, default=FINAL_METHODS, metavar="METHOD",
                   help="final: the methods trained and tested, beside the base (NoFinetune), which is always scored; "
                        "a later run with more methods resumes and adds them")
    p.add_argument("--device", default="cpu", help="nnUNetv2_train -device (cpu, cuda or mps)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for flag, folder, default in (("--msd", args.msd, MSD), ("--lpba40", args.lpba40, LPBA40)):
        if folder.is_dir():
            continue
        if folder == default:
            print(f"skipped: {folder} is absent (the shared data live in ../shared/data beside the checkout; "
                  f"or give {flag})")
            return 0
        raise SystemExit(f"{flag} {folder} is not a folder")
    work = args.work.resolve()
    env = environment(work)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    checkpoint = source_phase(args, env, work, logs)
    print(f"source checkpoint: {checkpoint}")
    if args.phase == "source":
        return 0
    target_phase(args, env, work, logs, checkpoint)
    {"sweep": sweep_phase, "final": final_phase, "curve": curve_phase}[args.phase](args, env, work, checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
