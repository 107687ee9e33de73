"""Turning per-case rows and per-run costs into tables, a CSV, a markdown report and plots.

Rows are dicts with at least ``method``, ``case``, ``label``, ``dice``, ``hd95_mm``,
``ref_volume_ml`` and ``pred_volume_ml`` (``evaluate_folder`` gives all but ``method``); optional
``trainer``, ``fold`` and ``split`` default to the method, ``all`` and ``val``. Costs are dicts with
``method`` and the fields of ``collect.COST_FIELDS``; any may be missing. Those that
``collect_validation`` gives also carry ``trainer``, ``fold`` and ``collect.CONVERGENCE_FIELDS``, and
its curve rows (``CURVE_COLUMNS``) hold every epoch of nnU-Net's training log.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from nnunet_peft.atomic import staged_folder
from nnunet_peft.evaluation import stats
from nnunet_peft.evaluation.collect import CONVERGED_SHARE, COST_FIELDS, CURVE_FIELDS, SMOOTHING_EPOCHS

CASE_COLUMNS = ["split", "method", "trainer", "fold", "case", "label", "dice", "hd95_mm",
                "ref_volume_ml", "pred_volume_ml"]
CURVE_COLUMNS = ["method", "trainer", "fold", "epoch", *CURVE_FIELDS, "smoothed_pseudo_dice"]
CONVERGENCE_COLUMNS = ["method", "trainer", "fold", "epochs", "final_pseudo_dice", "epoch_95",
                       "schedule_share_95"]
SPLIT_TITLES = {"val": "Validation (nnU-Net cross-validation folds)", "test": "Held-out test set"}
CONVENTIONS = (
    "Dice of two empty masks is 1, with one side empty 0. HD95 is the 95th percentile of the pooled "
    "surface distances in both directions (MedPy's definition, mm, voxel spacing of the reference); it "
    "is undefined when either mask is empty and such cases are counted, not averaged. Volumes are "
    "voxel count x voxel volume. Mean +- sd are over cases and folds. Volume agreement: Pearson r of "
    "predicted against reference volume; Bland-Altman bias = mean(predicted - reference), limits = "
    "bias +- 1.96 sd. p: two-sided Wilcoxon signed-rank test of Dice, paired on (case, fold).")


def case_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The per-case rows as a frame with the standard columns (defaults filled in)."""
    if not rows:
        raise ValueError("no per-case results to report; did any run finish?")
    frame = pd.DataFrame(list(rows))
    missing = [c for c in ("method", "case", "label", "dice", "hd95_mm", "ref_volume_ml",
                           "pred_volume_ml") if c not in frame]
    if missing:
        raise ValueError(f"per-case rows lack {', '.join(missing)}")
    if "trainer" not in frame:
        frame["trainer"] = frame["method"]
    frame["fold"] = frame["fold"].astype(str) if "fold" in frame else "all"
    if "split" not in frame:
        frame["split"] = "val"
    frame["label"] = frame["label"].astype(str)
    extra = [c for c in frame.columns if c not in CASE_COLUMNS]
    return frame[CASE_COLUMNS + extra]


def method_summary(cases: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """One row per (split, label, method): Dice, HD95, volume agreement, paired test vs ``reference``.

    ``reference`` is a trainer name (or method name) present in ``cases``; without it there is no test.
    """
    ref_method = reference_method(cases, reference)
    out = []
    for (split, label), group in cases.groupby(["split", "label"], sort=False):
        ref_scores = None if ref_method is None else _keyed_dice(group[group["method"] == ref_method])
        for method, rows in group.groupby("method", sort=False):
            dice_mean, dice_sd, n = stats.mean_sd(rows["dice"].tolist())
            hd_mean, hd_sd, hd_n = stats.mean_sd(rows["hd95_mm"].tolist())
            agreement = stats.bland_altman(rows["pred_volume_ml"], rows["ref_volume_ml"])
            row = {"split": split, "label": label, "method": method, "trainer": rows["trainer"].iloc[0],
                   "n": n, "dice_mean": dice_mean, "dice_sd": dice_sd,
                   "hd95_mean_mm": hd_mean, "hd95_sd_mm": hd_sd, "hd95_undefined": len(rows) - hd_n,
                   "ref_volume_mean_ml": float(rows["ref_volume_ml"].mean()),
                   "pred_volume_mean_ml": float(rows["pred_volume_ml"].mean()),
                   "volume_pearson_r": stats.pearson(rows["pred_volume_ml"], rows["ref_volume_ml"]),
                   "volume_bias_ml": agreement["bias"], "volume_loa_lower_ml": agreement["lower"],
                   "volume_loa_upper_ml": agreement["upper"],
                   "wilcoxon_n": math.nan, "wilcoxon_p": math.nan, "dice_median_difference": math.nan}
            if ref_scores is not None and method != ref_method:
                test = stats.paired_wilcoxon(_keyed_dice(rows), ref_scores)
                row.update(wilcoxon_n=test["n"], wilcoxon_p=test["p"],
                           dice_median_difference=test["median_difference"])
            out.append(row)
    return pd.DataFrame(out)


def reference_method(cases: pd.DataFrame, reference: str | None) -> str | None:
    """The method (display) name of ``reference``, given as a trainer or method name."""
    if reference is None:
        return None
    match = cases.loc[(cases["trainer"] == reference) | (cases["method"] == reference), "method"]
    if not len(match):
        raise ValueError(f"reference {reference!r} has no results; finish its runs or choose another "
                         "with --reference")
    return str(match.iloc[0])


def cost_summary(costs: Sequence[dict], methods: Sequence[str]) -> pd.DataFrame:
    """Mean cost figures per method over its folds, in ``methods`` order."""
    frame = pd.DataFrame(list(costs)) if costs else pd.DataFrame(columns=["method"])
    out = []
    for method in methods:
        rows = frame[frame["method"] == method] if len(frame) else frame
        row = {"method": method, "folds": len(rows)}
        for field in COST_FIELDS:
            values = pd.to_numeric(rows[field], errors="coerce") if field in rows else pd.Series(dtype=float)
            row[field] = float(values.mean()) if values.notna().any() else math.nan
        sources = sorted(set(rows["cost_source"])) if "cost_source" in rows else []
        row["cost_source"] = "+".join(sources) if sources else "none"
        out.append(row)
    return pd.DataFrame(out)


def curve_table(curves: Sequence[dict]) -> pd.DataFrame:
    """Every epoch of every run with the columns of ``CURVE_COLUMNS`` (no rows without curves)."""
    frame = pd.DataFrame(list(curves), columns=CURVE_COLUMNS)
    frame["fold"] = frame["fold"].astype(str)
    return frame


def convergence_table(costs: Sequence[dict], methods: Sequence[str]) -> pd.DataFrame:
    """One row per run with convergence figures, in ``methods`` order: epochs, final smoothed pseudo-Dice,
    epoch_95 and ``schedule_share_95`` = epoch_95 / epochs (NaN where epoch_95 is)."""
    frame = pd.DataFrame([c for c in costs if "epochs" in c], columns=CONVERGENCE_COLUMNS[:-1])
    frame = frame[frame["method"].isin(methods)].copy()
    frame["fold"] = frame["fold"].astype(str)
    for column in ("epochs", "final_pseudo_dice", "epoch_95"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["schedule_share_95"] = frame["epoch_95"] / frame["epochs"]
    rank = {m: i for i, m in enumerate(methods)}
    return frame.sort_values("method", key=lambda m: m.map(rank), kind="stable").reset_index(drop=True)


def dice_by_volume(cases: pd.DataFrame, edges: Sequence[float] | None = None) -> pd.DataFrame:
    """Dice per (split, label, method, reference-volume bin); bins from ``stats.volume_bin_edges``.

    The tercile edges are computed per split and label from each case's reference volume once, so
    that every method is binned the same way.
    """
    out = []
    for (split, label), group in cases.groupby(["split", "label"], sort=False):
        per_case = group.drop_duplicates("case")["ref_volume_ml"].tolist()
        cut = stats.volume_bin_edges(per_case, edges)
        order = stats.volume_bin_order(cut)
        bins = group["ref_volume_ml"].map(lambda v: stats.volume_bin_label(v, cut))
        for method, rows in group.groupby("method", sort=False):
            for bin_name in order:
                scores = rows.loc[bins.loc[rows.index] == bin_name, "dice"].tolist()
                if not scores:
                    continue
                mean, sd, n = stats.mean_sd(scores)
                out.append({"split": split, "label": label, "method": method, "volume_bin": bin_name,
                            "n": n, "dice_mean": mean, "dice_sd": sd})
    return pd.DataFrame(out)


def write_report(out_dir: str | os.PathLike, rows: Sequence[dict], costs: Sequence[dict] = (),
                 reference: str | None = None, volume_bins: Sequence[float] | None = None,
                 notes: Sequence[str] = (), title: str = "nnU-Net PEFT benchmark",
                 curves: Sequence[dict] = ()) -> Path:
    """Write cases.csv, methods.csv, volume_bins.csv, costs.csv, report.md and plots to ``out_dir``.

    When the costs carry convergence figures or ``curves`` are given (``collect_validation``'s), also
    convergence.csv, curves.csv, curves.png and a convergence section.

    Everything is built in a temporary folder beside ``out_dir`` and swapped in at the end, so a
    failure leaves the previous report intact. Returns the path of report.md.
    """
    out_dir = Path(out_dir)
    cases = case_table(rows)
    summary = method_summary(cases, reference)
    binned = dice_by_volume(cases, volume_bins)
    methods = list(dict.fromkeys(cases["method"]))
    cost = cost_summary(costs, methods)
    converged = convergence_table(costs, methods)
    curve = curve_table(curves)
    curve = curve[curve["method"].isin(methods)]

    with staged_folder(out_dir, overwrite=True) as staging:
        cases.to_csv(staging / "cases.csv", index=False)
        summary.to_csv(staging / "methods.csv", index=False)
        binned.to_csv(staging / "volume_bins.csv", index=False)
        cost.to_csv(staging / "costs.csv", index=False)
        from nnunet_peft.evaluation import plots

        figures = plots.write_plots(staging, cases, summary, cost)
        curve_figure = None
        if len(converged) or len(curve):
            converged.to_csv(staging / "convergence.csv", index=False)
            curve.to_csv(staging / "curves.csv", index=False)
            curve_figure = plots.write_curves(staging, curve, converged, methods)
        markdown = render_markdown(title, summary, binned, cost, figures, reference, notes,
                                   converged if len(converged) or len(curve) else None, curve_figure)
        (staging / "report.md").write_text(markdown, encoding="utf-8")
    return out_dir / "report.md"


def render_markdown(title: str, summary: pd.DataFrame, binned: pd.DataFrame, cost: pd.DataFrame,
                    figures: dict[str, list[str]], reference: str | None, notes: Sequence[str],
                    convergence: pd.DataFrame | None = None, curve_figure: str | None = None) -> str:
    ref_method = reference_method(summary, reference)
    lines = [f"# {title}", "", CONVENTIONS, ""]
    lines += [f"- {note}" for note in notes]
    if notes:
        lines.append("")
    for split, split_rows in summary.groupby("split", sort=False):
        lines += [f"## {SPLIT_TITLES.get(split, split)}", ""]
        for label, label_rows in split_rows.groupby("label", sort=False):
            lines += [f"### Label {label}", ""]
            p_header = f"p vs {ref_method}" if ref_method else "p (no reference)"
            lines.append(f"| Method | n | Dice | HD95 (mm) | HD95 undefined | Volume r | "
                         f"Volume bias [95% LoA] (mL) | {p_header} |")
            lines.append("|---|---:|---|---|---:|---:|---|---:|")
            for r in label_rows.itertuples():
                p = "ref." if r.method == ref_method else _num(r.wilcoxon_p, "{:.3g}")
                lines.append(
                    f"| {r.method} | {r.n} | {_pm(r.dice_mean, r.dice_sd, '{:.3f}')} | "
                    f"{_pm(r.hd95_mean_mm, r.hd95_sd_mm, '{:.2f}')} | {r.hd95_undefined} | "
                    f"{_num(r.volume_pearson_r, '{:.3f}')} | {_num(r.volume_bias_ml, '{:+.2f}')} "
                    f"[{_num(r.volume_loa_lower_ml, '{:.2f}')}, {_num(r.volume_loa_upper_ml, '{:.2f}')}] | {p} |")
            lines.append("")
            bins = binned[(binned["split"] == split) & (binned["label"] == label)]
            if len(bins):
                order = list(dict.fromkeys(bins["volume_bin"]))
                lines += [f"Dice by reference volume, label {label} (mean +- sd (n)):", ""]
                lines.append("| Method | " + " | ".join(order) + " |")
                lines.append("|---|" + "---|" * len(order))
                for method, mrows in bins.groupby("method", sort=False):
                    cells = {b.volume_bin: f"{_pm(b.dice_mean, b.dice_sd, '{:.3f}')} ({b.n})"
                             for b in mrows.itertuples()}
                    lines.append(f"| {method} | " + " | ".join(cells.get(b, "-") for b in order) + " |")
                lines.append("")
        for caption, filename in figures.get(split, []):
            lines += [f"![{caption}]({filename})", ""]
    lines += ["## Cost", "",
              "| Method | Trainable parameters | % of network | Adapter size | s / epoch | Peak GPU memory | Source |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for r in cost.itertuples():
        share = (100.0 * r.trainable_parameters / r.total_parameters
                 if r.total_parameters and not math.isnan(r.total_parameters) else math.nan)
        lines.append(f"| {r.method} | {_num(r.trainable_parameters, '{:,.0f}')} | {_num(share, '{:.2f}')} | "
                     f"{_bytes(r.adapter_bytes)} | {_num(r.mean_epoch_time_s, '{:.1f}')} | "
                     f"{_bytes(r.peak_gpu_memory_bytes)} | {r.cost_source} |")
    lines += ["", "Source `peft_summary.json`: recorded by the plugin's trainer. Source `checkpoint`: "
              "nnU-Net's own trainers record no costs, so every network parameter is counted as "
              "trainable, there is no adapter file and the epoch time comes from nnU-Net's log; "
              "n/a: not recorded (GPU memory is only measured on a GPU).", ""]
    if convergence is not None:
        lines += convergence_markdown(convergence, curve_figure)
    return "\n".join(lines)


def convergence_markdown(convergence: pd.DataFrame, curve_figure: str | None) -> list[str]:
    """The report's convergence section: per method, how far into its schedule the curve flattened."""
    share = f"{100 * CONVERGED_SHARE:.0f}%"
    lines = ["## Convergence", "",
             "From nnU-Net's own training log in each checkpoint_final.pth. Pseudo-Dice: nnU-Net's "
             "per-epoch foreground Dice on the patches of its validation iterations (`mean_fg_dice`; not "
             f"the whole-case validation above); smoothed: its mean over the last {SMOOTHING_EPOCHS} epochs "
             "(nnU-Net's own EMA, `ema_fg_dice`, lags about ten epochs and remembers epoch 1, so it is "
             f"plotted but not used). Epoch {share}: the first epoch, counted from 1, at which a run's "
             f"smoothed pseudo-Dice reaches {share} of its final value; share of schedule = that epoch / epochs "
             "trained. A share near 100% means the curve was still rising when the schedule ended, so "
             "a longer schedule may help; a small share means the later epochs changed little. Runs of "
             "0 epochs (NoFinetune) have no curve. Every epoch of every run: curves.csv.", "",
             f"| Method | Folds | Epochs | Final pseudo-Dice (smoothed) | Epoch {share} per fold (fold: epoch) "
             f"| Epoch {share} mean | Share of schedule |",
             "|---|---:|---:|---|---|---:|---:|"]
    for method, rows in convergence.groupby("method", sort=False):
        epochs = ", ".join(str(int(e)) for e in dict.fromkeys(rows["epochs"]))
        final_mean, final_sd, _ = stats.mean_sd(rows["final_pseudo_dice"].tolist())
        per_fold = ", ".join(f"{r.fold}: {_num(r.epoch_95, '{:.0f}')}" for r in rows.itertuples())
        epoch_mean = stats.mean_sd(rows["epoch_95"].tolist())[0]
        share_mean = stats.mean_sd(rows["schedule_share_95"].tolist())[0]
        lines.append(f"| {method} | {len(rows)} | {epochs} | {_pm(final_mean, final_sd, '{:.3f}')} | {per_fold} | "
                     f"{_num(epoch_mean, '{:.1f}')} | {_num(100 * share_mean, '{:.0f}%')} |")
    lines.append("")
    if curve_figure is not None:
        lines += [f"![Smoothed pseudo-Dice (solid), pseudo-Dice (faint) and nnU-Net's EMA (dashed) against epoch, one line per fold; "
                  f"dotted: epoch {share}]({curve_figure})", ""]
    return lines


def _keyed_dice(rows: pd.DataFrame) -> dict:
    return {(r.case, r.fold, r.label): float(r.dice) for r in rows.itertuples()}


def _num(value, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _pm(mean: float, sd: float, fmt: str) -> str:
    if math.isnan(mean):
        return "n/a"
    return fmt.format(mean) if math.isnan(sd) else f"{fmt.format(mean)} +- {fmt.format(sd)}"


def _bytes(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
