r"""Where adapters should pay: a strong base of the same modality, a new structure, 1 to 5 subjects.

The regime that parameter-efficient fine-tuning studies of 3-D segmentation report adapters ahead of full
fine-tuning in (Silva-Rodriguez et al. 2025; the SAH study's TBI base), built from LPBA40 alone:

    base:   nnU-Net trained from scratch on the temporal-lobe and subcortical structures around the
            hippocampus (not the hippocampus: its voxels are background to the base), on --base-count
            subjects, in crops around each hippocampus (one case per side)
    target: the same crops with the hippocampus as a new class and the base's structures kept (the label
            mapping by name keeps their heads); 1, 2 and 5 training subjects drawn --draws times from a
            pool of subjects the base never saw (nested within a draw); validated on the pool's others
    test:   --test-count other subjects, predicted once per trained model, after every choice was made

Learning is the test Dice of the hippocampus; forgetting is the change of the base structures' test Dice
against the base's own prediction of them. Every step is nnU-Net's own command or the plugin's CLI.

Phases (each resumable; run them in order, each its own invocation):

    base     convert, plan, pretrain the base; predict the test subjects' base structures with it
    select   the candidate adapters on one fold (2 subjects) of the first draw; the best by the
             hippocampus' validation Dice becomes the "best adapter" of the grid
    grid     Finetune, from scratch, the best adapter, CP-LoRA and CP-LoRA_ftdec (adapters in encoder and
             bottleneck, the decoder trained fully) on every fold, draw by draw; then the summary

    python scripts/lpba40_strong_base.py --work /tmp/strong --phase grid

The data are read in place and never copied into the repository; the work folder holds links, nnU-Net's
folders and the reports (--work/summary.md, summary.csv, gain_forgetting.png).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lpba40_transfer import LPBA40, environment, link_lpba40, step, subjects  # noqa: E402

BASE_ID, TARGET_ID, TEST_ID = 611, 612, 613
BASE = f"Dataset{BASE_ID}_LPBA40Temporal"
TARGET = f"Dataset{TARGET_ID}_LPBA40NewHippocampus"
TEST = f"Dataset{TEST_ID}_LPBA40NewHippocampusTest"
TARGET_PLANS = "nnUNetPlans_pretrained"
# the structures around the hippocampus that its 8 mm crops hold (parahippocampal gyrus whole, the others
# in part); midline structures (brainstem) are left out because each crop holds one side
OLD_STRUCTURES = ("parahippocampal_gyrus", "fusiform_gyrus", "inferior_temporal_gyrus", "middle_temporal_gyrus",
                  "superior_temporal_gyrus", "insular_cortex", "putamen")
NEW_STRUCTURE = "hippocampus"
SIZES = (1, 2, 5)
SELECT_FOLD = 1  # draw 0, 2 subjects: the most validation subjects of any fold that trains on more than one
# convLoRA was the best adapter by validation in the Decathlon -> LPBA40 study (HyPS second, at 1.36x
# the epoch time); CP-LoRA runs in the grid anyway, so on a 2-core CPU the selection weighs the two
CANDIDATES = ("ConvLoRA", "CPLoRA")
HYBRID = "CPLoRA_ftdec"


# ------------------------------------------------------------------------------------ subjects and folds
def split_subjects(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """Base, target pool and test subjects: the arguments' lists, or a seeded draw."""
    available = subjects(args.lpba40)
    order = [available[i] for i in np.random.default_rng(args.seed).permutation(len(available))]
    base = sorted(args.base_subjects or order[:args.base_count])
    rest = [s for s in order if s not in base]
    test = sorted(args.test_subjects or rest[len(rest) - args.test_count:])
    pool = sorted(args.pool_subjects or [s for s in rest if s not in test])
    chosen = base + pool + test
    if missing := sorted(set(chosen) - set(available)):
        raise SystemExit(f"subjects {missing} are not in {args.lpba40}")
    if len(set(chosen)) != len(chosen):
        raise SystemExit("the base, pool and test subjects must be disjoint")
    if len(pool) <= max(SIZES):
        raise SystemExit(f"the target pool needs more than {max(SIZES)} subjects (one left for validation), "
                         f"got {len(pool)}")
    return base, pool, test


def fold_of(draw: int, size: int) -> int:
    return draw * len(SIZES) + SIZES.index(size)


def target_splits(pool: list[str], draws: int, seed: int) -> list[dict[str, list[str]]]:
    """One nnU-Net fold per (draw, size): nested training subsets of a shuffled pool, validated on the rest.
    Cases are per side (S05L, S05R), so a subject's two sides are always on the same side of a split."""
    folds, singles = [], []
    for draw in range(draws):
        order = [pool[i] for i in np.random.default_rng(seed + 1000 + draw).permutation(len(pool))]
        # the one-subject runs are the noisiest: give each draw its own subject while the pool has one
        fresh = next((s for s in order if s not in singles), order[0])
        order.remove(fresh)
        order.insert(0, fresh)
        singles.append(fresh)
        for size in SIZES:
            train, val = order[:size], order[size:]
            folds.append({"train": [f"{s}{side}" for s in train for side in "LR"],
                          "val": [f"{s}{side}" for s in val for side in "LR"]})
    return folds


def write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------- phases
def crops(args: argparse.Namespace) -> list[str]:
    return ["--sides", "merged", "--crop-around", NEW_STRUCTURE, "--crop-margin", str(args.crop_margin),
            "--split-sides", "-q"]


def base_trainer(args: argparse.Namespace) -> str:
    return f"nnUNetTrainerFinetune_scratch_{args.base_epochs}ep_{args.iterations}it"


def base_plans(args: argparse.Namespace) -> str:
    return f"nnUNetPlans_w{args.base_features}_b{args.batch_size}"


def base_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    return work / "results" / BASE / f"{base_trainer(args)}__{base_plans(args)}__3d_fullres" / "fold_0" / "checkpoint_final.pth"


def base_phase(args, env, work: Path, logs: Path) -> Path:
    py = sys.executable
    base, pool, test = split_subjects(args)
    print(f"base: {len(base)} subjects ({' '.join(base)})\ntarget pool: {' '.join(pool)}\ntest: {' '.join(test)}",
          flush=True)
    old = ",".join(OLD_STRUCTURES)
    step("convert base (LPBA40 base subjects, the structures around the hippocampus)",
         [py, "-m", "nnunet_peft.cli", "convert", "lpba40", str(link_lpba40(args.lpba40, base, work / "links" / "base")),
          "-d", str(BASE_ID), "-n", BASE.split("_", 1)[1], "--structures", old, "--folds", "5", *crops(args)], env, logs)
    step("plan and preprocess the base",
         ["nnUNetv2_plan_and_preprocess", "-d", str(BASE_ID), "-c", "3d_fullres", "-np", "2"], env, logs)
    from nnunet_peft.planning.plans_variant import write_plans_variant

    write_plans_variant(work / "preprocessed" / BASE, base_plans(args), "3d_fullres",
                        base_features=args.base_features, batch_size=args.batch_size)
    step(f"pretrain the base ({base_trainer(args)}, fold 0)",
         ["nnUNetv2_train", str(BASE_ID), "3d_fullres", "0", "-tr", base_trainer(args), "-p", base_plans(args),
          "-device", args.device], env, logs)
    target = f"{old},{NEW_STRUCTURE}"
    step("convert target pool (the new structure and the base's)",
         [py, "-m", "nnunet_peft.cli", "convert", "lpba40", str(link_lpba40(args.lpba40, pool, work / "links" / "pool")),
          "-d", str(TARGET_ID), "-n", TARGET.split("_", 1)[1], "--structures", target, *crops(args)], env, logs)
    step("convert test subjects (the same crops and labels)",
         [py, "-m", "nnunet_peft.cli", "convert", "lpba40", str(link_lpba40(args.lpba40, test, work / "links" / "test")),
          "-d", str(TEST_ID), "-n", TEST.split("_", 1)[1], "--structures", target, *crops(args)], env, logs)
    checkpoint = base_checkpoint(args, work)
    step("plan the target from the base checkpoint",
         [py, "-m", "nnunet_peft.cli", "plan-from-checkpoint", "-d", str(TARGET_ID), "--checkpoint", str(checkpoint),
          "-np", "2"], env, logs)
    splits = work / "preprocessed" / TARGET / "splits_final.json"
    write_json(splits, target_splits(pool, args.draws, args.seed))
    step("predict the test subjects with the base",
         ["nnUNetv2_predict", "-i", str(work / "raw" / TEST / "imagesTr"), "-o", str(work / "base_test_predictions"),
          "-d", str(BASE_ID), "-c", "3d_fullres", "-p", base_plans(args), "-tr", base_trainer(args), "-f", "0",
          "-device", args.device, "--disable_tta", "-npp", "1", "-nps", "1"], env, logs)
    return checkpoint


def benchmark(args, env, work: Path, checkpoint: Path, trainers: list[str], folds: list[int], out: str,
              reference: str | None = None, collect_only: bool = False) -> None:
    """`nnunet-peft benchmark` over these runs; finished runs and predictions are skipped, so a rerun resumes.
    ``collect_only`` reports the runs that finished and leaves the others out (with a note)."""
    test = work / "raw" / TEST
    command = [sys.executable, "-m", "nnunet_peft.cli", "benchmark", "-d", str(TARGET_ID), "-c", "3d_fullres",
               "-p", TARGET_PLANS, "--pretrained", str(checkpoint), "--trainers", *trainers,
               "--folds", *map(str, folds), "--device", args.device, "--out", str(work / out),
               *(["--collect-only"] if collect_only else [])]
    if out != "select":  # the test subjects are predicted only by the grid, after the selection
        command += ["--test-images", str(test / "imagesTr"), "--test-labels", str(test / "labelsTr"),
                    "--test-folds", *map(str, folds), *(["--disable-tta"] if args.device == "cpu" else [])]
    if reference:
        command += ["--reference", reference]
    print(f"[{time.strftime('%H:%M:%S')}] benchmark {out}: {len(trainers)} trainers x folds {folds}", flush=True)
    if subprocess.call(command, env=env) != 0:
        raise SystemExit(f"benchmark {out} failed")


def schedule(args: argparse.Namespace) -> str:
    return f"{args.epochs}ep_{args.iterations}it"


def select_phase(args, env, work: Path, checkpoint: Path) -> str:
    """The candidates on fold SELECT_FOLD; returns the method with the best hippocampus validation Dice."""
    import pandas as pd

    trainers = [f"nnUNetTrainer{m}_{schedule(args)}" for m in CANDIDATES]
    benchmark(args, env, work, checkpoint, trainers, [SELECT_FOLD], "select")
    cases = pd.read_csv(work / "select" / "report" / "cases.csv", dtype={"fold": str})
    cases = cases[(cases["split"] == "val") & (cases["label"] == NEW_STRUCTURE)]
    ranked = cases.groupby("method")["dice"].mean().sort_values(ascending=False)
    print("validation Dice of the hippocampus, fold "
          f"{SELECT_FOLD}: " + ", ".join(f"{m.split('_')[0]} {d:.3f}" for m, d in ranked.items()), flush=True)
    best = next(m.split("_")[0] for m in ranked.index if m.split("_")[0] != "CPLoRA")  # CP-LoRA runs anyway
    (work / "best_adapter.txt").write_text(best + "\n", encoding="utf-8")
    return best


GRID_METHODS = ("Finetune", "Finetune_scratch", "best", "CPLoRA", HYBRID)


def grid_trainers(args: argparse.Namespace, best: str, draw: int = 0) -> list[str]:
    """The grid's trainers for one draw; ``--scratch-draws`` leaves the from-scratch floor out of later draws."""
    methods = [best if m == "best" else m for m in GRID_METHODS
               if m != "Finetune_scratch" or draw < args.scratch_draws]
    return [f"nnUNetTrainer{m}_{schedule(args)}" for m in methods]


def grid_phase(args, env, work: Path, checkpoint: Path) -> None:
    """Size by size, each size's draws in turn, every method of a cell before the next cell: an interrupted
    grid has whole cells and the smallest sizes' spread first. The selection's runs of the grid's methods
    (same trainer, fold and results folder) count as finished runs of the grid."""
    best_file = work / "best_adapter.txt"
    best = best_file.read_text(encoding="utf-8").strip() if best_file.is_file() else select_phase(args, env, work, checkpoint)
    reference = f"nnUNetTrainerFinetune_{schedule(args)}"
    done: list[int] = []
    for size in SIZES:
        for draw in range(args.draws):
            done.append(fold_of(draw, size))
            benchmark(args, env, work, checkpoint, grid_trainers(args, best, draw), done[-1:], "grid", reference)
            # one report over every cell so far (runs left out of a draw are noted, not trained)
            benchmark(args, env, work, checkpoint, grid_trainers(args, best), done, "grid", reference, collect_only=True)
            summarise(args, work)


# ------------------------------------------------------------------------------------------- summary
SEGMENTED = 0.3  # a base structure counts for forgetting when the base's validation Dice reaches this


def segmented_structures(work: Path) -> list[str]:
    """The base structures the base itself segments (validation Dice >= SEGMENTED on its own folds): a
    structure the base never learned (a sliver at the crop's edge) has nothing to forget."""
    summaries = sorted((work / "results" / BASE).glob("*/fold_0/validation/summary.json"))
    if not summaries:
        return list(OLD_STRUCTURES)
    mean = json.loads(summaries[0].read_text(encoding="utf-8"))["mean"]
    return [name for value, name in enumerate(OLD_STRUCTURES, 1) if mean.get(str(value), {}).get("Dice", 0) >= SEGMENTED]


def base_old_task(work: Path) -> "pd.DataFrame":
    """The base's own Dice on its structures, per test case (its prediction has the same label values)."""
    import pandas as pd
    from nnunet_peft.evaluation.metrics import evaluate_folder

    labels = json.loads((work / "raw" / TEST / "dataset.json").read_text(encoding="utf-8"))["labels"]
    old = {name: value for name, value in labels.items() if name in OLD_STRUCTURES}
    rows = evaluate_folder(work / "base_test_predictions", work / "raw" / TEST / "labelsTr", old, ".nii.gz")
    return pd.DataFrame(rows)


def summarise(args: argparse.Namespace, work: Path) -> None:
    """summary.csv / summary.md / gain_forgetting.png: learning and forgetting per method and size."""
    import pandas as pd

    report = work / "grid" / "report" / "cases.csv"
    if not report.is_file():
        return
    cases = pd.read_csv(report, dtype={"fold": str})
    cases = cases[cases["split"] == "test"].copy()
    cases["fold"] = cases["fold"].astype(int)
    cases["size"] = [SIZES[f % len(SIZES)] for f in cases["fold"]]
    cases["draw"] = [f // len(SIZES) for f in cases["fold"]]
    cases["method"] = [m.split("_")[0] + ("_scratch" if "_scratch" in m else "_ftdec" if "_ftdec" in m else "")
                       for m in cases["method"]]
    kept = segmented_structures(work)
    base = base_old_task(work)
    base_old = base[base["label"].isin(kept)].groupby("case")["dice"].mean()
    new = cases[cases["label"] == NEW_STRUCTURE]
    old = cases[cases["label"].isin(kept)]
    # per run (method, size, draw): mean over the test crops
    per_case_old = old.groupby(["method", "size", "draw", "case"])["dice"].mean().rename("old").reset_index()
    per_case_old["forgetting"] = per_case_old["old"] - per_case_old["case"].map(base_old)
    per_case = new.groupby(["method", "size", "draw", "case"])["dice"].mean().rename("new").reset_index()
    per_case = per_case.merge(per_case_old, on=["method", "size", "draw", "case"])
    per_case.to_csv(work / "cases_new_old.csv", index=False)
    runs = per_case.groupby(["method", "size", "draw"])[["new", "old", "forgetting"]].mean().reset_index()
    runs.to_csv(work / "runs.csv", index=False)
    table = runs.groupby(["method", "size"]).agg(
        runs=("draw", "count"), new=("new", "mean"), new_sd=("new", "std"), old=("old", "mean"),
        forgetting=("forgetting", "mean"), forgetting_sd=("forgetting", "std")).reset_index()
    table.to_csv(work / "summary.csv", index=False)
    tests = paired_tests(per_case, runs)
    per_structure = base.groupby("label")["dice"].mean()
    lines = ["Base on its own structures (test crops, mean Dice): " + ", ".join(
                 f"{name} {per_structure.get(name, float('nan')):.3f}" for name in OLD_STRUCTURES),
             f"Forgetting is measured on the structures the base segments (validation Dice >= {SEGMENTED}): "
             f"{', '.join(kept)}; the base scores {base_old.mean():.3f} ± {base_old.std():.3f} on them.", "",
             "| method | subjects | runs | hippocampus Dice (mean ± sd over runs) | base structures Dice | "
             "change vs base | vs Finetune: hippocampus over runs (t-test p) / over crops (Wilcoxon p) |",
             "|---|---:|---:|---|---:|---:|---|"]
    for _, r in table.sort_values(["size", "method"]).iterrows():
        t = tests.get((r["method"], r["size"]), "")
        lines.append(f"| {r['method']} | {r['size']} | {r['runs']} | {r['new']:.3f} ± {r['new_sd']:.3f} | "
                     f"{r['old']:.3f} | {r['forgetting']:+.3f} | {t} |")
    (work / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(table, work / "gain_forgetting.png", base_old.mean())
    print("\n".join(lines), flush=True)


def paired_tests(per_case, runs) -> dict:
    """Each method against Finetune at the same size: paired over runs (draws) and over crops of all runs."""
    from scipy import stats

    out = {}
    for (method, size), group in runs.groupby(["method", "size"]):
        if method == "Finetune":
            continue
        ref = runs[(runs["method"] == "Finetune") & (runs["size"] == size)].set_index("draw")["new"]
        mine = group.set_index("draw")["new"]
        draws = sorted(set(ref.index) & set(mine.index))
        diff = float(np.mean([mine[d] - ref[d] for d in draws])) if draws else float("nan")
        p_runs = stats.ttest_rel([mine[d] for d in draws], [ref[d] for d in draws]).pvalue if len(draws) > 1 else float("nan")
        a = per_case[(per_case["method"] == method) & (per_case["size"] == size)].set_index(["draw", "case"])["new"]
        b = per_case[(per_case["method"] == "Finetune") & (per_case["size"] == size)].set_index(["draw", "case"])["new"]
        keys = sorted(set(a.index) & set(b.index))
        p_cases = stats.wilcoxon([a[k] for k in keys], [b[k] for k in keys]).pvalue if len(keys) > 5 else float("nan")
        out[(method, size)] = f"{diff:+.3f} (p {p_runs:.2g} / {p_cases:.2g})"
    return out


def plot(table, path: Path, base_old: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = {1: "o", 2: "s", 5: "^"}
    for i, (method, rows) in enumerate(table.groupby("method")):
        color = f"C{i}"
        ax.plot(rows["forgetting"], rows["new"], color=color, alpha=0.4)
        for _, r in rows.iterrows():
            ax.errorbar(r["forgetting"], r["new"], xerr=r["forgetting_sd"], yerr=r["new_sd"], color=color,
                        marker=markers.get(r["size"], "o"), capsize=2, label=method if r["size"] == rows["size"].min() else None)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(xlabel=f"change of the base structures' test Dice (base {base_old:.3f})",
           ylabel="hippocampus test Dice (new structure)",
           title="Learning against forgetting (o 1, □ 2, △ 5 subjects)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------------------------------- command
def parser() -> argparse.ArgumentParser:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("--work", type=Path, required=True, help="work folder (created; a rerun resumes)")
    p.add_argument("--phase", choices=("base", "select", "grid"), required=True)
    p.add_argument("--lpba40", type=Path, default=LPBA40, help="LPBA40 folder with images/ and labels/")
    p.add_argument("--base-subjects", nargs="+", metavar="SNN", help="base subjects (default: --base-count drawn)")
    p.add_argument("--pool-subjects", nargs="+", metavar="SNN",
                   help="target training pool (default: the subjects neither base nor test)")
    p.add_argument("--test-subjects", nargs="+", metavar="SNN", help="test subjects (default: --test-count drawn)")
    p.add_argument("--base-count", type=int, default=18)
    p.add_argument("--test-count", type=int, default=6)
    p.add_argument("--draws", type=int, default=3, help="training subsets drawn per target size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scratch-draws", type=int, default=3,
                   help="draws that train from scratch too (its 300 steps learn nothing from one or two "
                        "subjects: a floor worth measuring once, not its spread)")
    p.add_argument("--crop-margin", type=float, default=8.0, help="mm around each hippocampus")
    p.add_argument("--base-features", type=int, default=16,
                   help="width of the U-Net's first stage (nnU-Net plans 32; 16 makes a CPU iteration ~3.5x cheaper)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--base-epochs", type=int, default=40)
    p.add_argument("--epochs", type=int, default=15, help="target epochs")
    p.add_argument("--iterations", type=int, default=20, help="iterations per epoch (base and target)")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.lpba40.is_dir():
        print(f"skipped: {args.lpba40} is absent (the shared data live in ../shared/data beside the checkout)")
        return 0
    work = args.work.resolve()
    env = environment(work)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    checkpoint = base_phase(args, env, work, logs)
    if args.phase == "select":
        select_phase(args, env, work, checkpoint)
    elif args.phase == "grid":
        grid_phase(args, env, work, checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
