"""The report's figures: Dice per method, Dice against reference volume, Dice against trainable parameters,
and the training curves.

One PNG per split and figure, one panel per label; the curves are one PNG with one panel per method. matplotlib runs on its file-only Agg backend so
that the benchmark works on cluster nodes without a display.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def write_plots(folder: Path, cases: pd.DataFrame, summary: pd.DataFrame,
                cost: pd.DataFrame) -> dict[str, list[tuple[str, str]]]:
    """Write every figure into ``folder``; returns {split: [(caption, file name), ...]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, list[tuple[str, str]]] = {}
    for split, split_cases in cases.groupby("split", sort=False):
        made = figures.setdefault(split, [])
        methods = list(dict.fromkeys(split_cases["method"]))
        labels = list(dict.fromkeys(split_cases["label"]))
        colours = _colours(plt, methods)

        name = f"dice_box_{split}.png"
        _dice_box(plt, split_cases, methods, labels, colours).savefig(folder / name, dpi=110)
        made.append((f"Dice per method ({split})", name))

        name = f"dice_vs_volume_{split}.png"
        fig, dropped = _dice_vs_volume(plt, split_cases, methods, labels, colours)
        fig.savefig(folder / name, dpi=110)
        caption = f"Dice against reference volume ({split})"
        if dropped:
            caption += f"; {dropped} case(s) with an empty reference not shown on the log axis"
        made.append((caption, name))

        params = cost.set_index("method")["trainable_parameters"] if len(cost) else pd.Series(dtype=float)
        if params.reindex(methods).notna().any():
            name = f"dice_vs_params_{split}.png"
            split_summary = summary[summary["split"] == split]
            _dice_vs_params(plt, split_summary, params, methods, labels, colours).savefig(folder / name, dpi=110)
            made.append((f"Mean Dice (+- sd) against trainable parameters ({split})", name))
        plt.close("all")
    return figures


def write_curves(folder: Path, curves: pd.DataFrame, convergence: pd.DataFrame,
                 methods: list[str]) -> str | None:
    """curves.png: per method, each fold's smoothed pseudo-Dice (solid), raw pseudo-Dice (faint) and
    nnU-Net's EMA (dashed) against epoch, dotted at its epoch_95; returns the file name, or None when no run has a curve.

    One panel per method rather than one crowded panel: with a dozen methods and five folds each, an
    overlay is a tangle. The y axis is shared so that levels compare across panels; the x axis too,
    unless the methods' schedules differ in length, when it would squash the short ones.
    """
    shown = [m for m in methods if (curves["method"] == m).any()]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = _colours(plt, methods)  # all methods, so that a method has its colour of the other figures
    same_schedule = curves.groupby("method")["epoch"].max().nunique() == 1
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows + 0.4), squeeze=False,
                             sharex=same_schedule, sharey=True)
    for ax, method in zip(axes.flat, shown):
        colour = colours[method]
        for _, rows in curves[curves["method"] == method].groupby("fold", sort=False):
            ax.plot(rows["epoch"], rows["pseudo_dice"], color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(rows["epoch"], rows["ema_pseudo_dice"], color=colour, alpha=0.5, linewidth=0.8, linestyle="--")
            ax.plot(rows["epoch"], rows["smoothed_pseudo_dice"], color=colour, linewidth=1.5)
        for epoch in convergence.loc[convergence["method"] == method, "epoch_95"].dropna():
            ax.axvline(epoch, color=colour, linestyle=":", linewidth=1.0)
        ax.set_title(method, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for column in range(ncols):  # the lowest panel of each column carries the epoch axis
        lowest = axes[(len(shown) - 1 - column) // ncols, column]
        lowest.xaxis.set_tick_params(labelbottom=True)
        lowest.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("pseudo-Dice")
    fig.suptitle("pseudo-Dice per fold: smoothed (solid), raw (faint), nnU-Net's EMA (dashed); "
                 "dotted: 95% of the final smoothed value reached",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=110)
    plt.close(fig)
    return "curves.png"


def _colours(plt, methods: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _panels(plt, n_labels: int, width_per_panel: float, height: float):
    fig, axes = plt.subplots(1, n_labels, figsize=(width_per_panel * n_labels, height), squeeze=False)
    return fig, axes[0]


def _dice_box(plt, cases, methods, labels, colours):
    fig, axes = _panels(plt, len(labels), max(4.0, 0.7 * len(methods) + 1.5), 4.8)
    rng = np.random.default_rng(0)  # fixed jitter: the same data draws the same picture
    for ax, label in zip(axes, labels):
        data = [cases.loc[(cases["label"] == label) & (cases["method"] == m), "dice"].to_numpy()
                for m in methods]
        box = ax.boxplot(data, patch_artist=True, showfliers=False, widths=0.6)
        for patch, method in zip(box["boxes"], methods):
            patch.set_facecolor(colours[method])
            patch.set_alpha(0.45)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=9, color="black",
                       alpha=0.6, zorder=3)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=35, ha="right")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Dice")
        ax.set_title(f"label {label}")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _dice_vs_volume(plt, cases, methods, labels, colours):
    fig, axes = _panels(plt, len(labels), 5.5, 4.5)
    dropped = 0
    for ax, label in zip(axes, labels):
        rows = cases[cases["label"] == label]
        empty = rows["ref_volume_ml"] <= 0
        dropped += int(empty.sum())
        for method in methods:
            mine = rows[(rows["method"] == method) & ~empty]
            ax.scatter(mine["ref_volume_ml"], mine["dice"], s=14, alpha=0.7, color=colours[method],
                       label=method)
        if (~empty).any():
            ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("reference volume (mL)")
        ax.set_ylabel("Dice")
        ax.set_title(f"label {label}")
        ax.grid(alpha=0.3, which="both")
    axes[-1].legend(fontsize=7, loc="lower right", framealpha=0.8)
    fig.tight_layout()
    return fig, dropped


def _dice_vs_params(plt, summary, params, methods, labels, colours):
    fig, axes = _panels(plt, len(labels), 5.5, 4.5)
    for ax, label in zip(axes, labels):
        rows = summary[summary["label"] == label].set_index("method")
        for method in methods:
            count = params.get(method, math.nan)
            if method not in rows.index or count is None or not count > 0:
                continue
            mean, sd = rows.at[method, "dice_mean"], rows.at[method, "dice_sd"]
            ax.errorbar(count, mean, yerr=0 if math.isnan(sd) else sd, fmt="o", color=colours[method],
                        capsize=3, label=method)
            ax.annotate(method, (count, mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.margins(x=0.2)  # room for the name beside the rightmost point
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("mean Dice")
        ax.set_title(f"label {label}")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
