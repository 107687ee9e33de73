"""The report's figures: Dice per method, Dice against reference volume, Dice against trainable parameters.

One PNG per split and figure, one panel per label. matplotlib runs on its file-only Agg backend so
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
