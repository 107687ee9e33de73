"""Statistics of the comparison: volume agreement, paired tests and volume bins."""
from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats


def bland_altman(pred: Sequence[float], ref: Sequence[float]) -> dict[str, float]:
    """Bias (mean of pred - ref) and 95% limits of agreement (bias +- 1.96 sd, sample sd).

    NaN where undefined: no pairs for the bias, fewer than two for the limits.
    """
    pred, ref = _paired_arrays(pred, ref)
    diff = pred - ref
    bias = float(diff.mean()) if diff.size else math.nan
    sd = float(diff.std(ddof=1)) if diff.size > 1 else math.nan
    return {"n": int(diff.size), "bias": bias, "sd": sd,
            "lower": bias - 1.96 * sd, "upper": bias + 1.96 * sd}


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN with fewer than two pairs or a constant side."""
    x, y = _paired_arrays(x, y)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.pearsonr(x, y).statistic)


def paired_wilcoxon(values: Mapping[Hashable, float], reference: Mapping[Hashable, float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of ``values`` against ``reference`` on their shared keys.

    Keys identify the paired observation (e.g. (split, case, fold, label)); keys present on one side
    only, or NaN on either side, are left out and ``n`` says how many pairs remain. With no pairs
    the p-value is NaN; when every difference is zero the two agree exactly and p is 1.
    """
    keys = [k for k in values if k in reference
            and not (math.isnan(values[k]) or math.isnan(reference[k]))]
    n = len(keys)
    if n == 0:
        return {"n": 0, "statistic": math.nan, "p": math.nan, "median_difference": math.nan}
    a = np.array([values[k] for k in keys], dtype=float)
    b = np.array([reference[k] for k in keys], dtype=float)
    median_difference = float(np.median(a - b))
    if np.all(a == b):
        # scipy warns and divides by zero here; the answer is not in doubt
        return {"n": n, "statistic": 0.0, "p": 1.0, "median_difference": 0.0}
    result = stats.wilcoxon(a, b, alternative="two-sided")
    return {"n": n, "statistic": float(result.statistic), "p": float(result.pvalue),
            "median_difference": median_difference}


def volume_bin_edges(ref_volumes: Sequence[float], edges: Sequence[float] | None = None) -> list[float]:
    """Interior cut points (mL) of the volume bins.

    By default the terciles of the non-empty reference volumes, as the SAH study reports Dice by
    haemorrhage volume; explicit ``edges`` must be positive and strictly increasing. Empty
    references always go to a bin of their own (see ``volume_bin_label``).
    """
    if edges is not None:
        edges = [float(e) for e in edges]
        if not edges or any(e <= 0 or not math.isfinite(e) for e in edges) \
                or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"volume bin edges {edges} must be positive, finite and strictly "
                             "increasing mL values, e.g. 5 15 30")
        return edges
    volumes = np.asarray([v for v in ref_volumes if v > 0], dtype=float)
    if volumes.size == 0:
        return []
    # Terciles of few, tied volumes can coincide; a bin that can never be filled says nothing.
    return sorted(set(float(q) for q in np.quantile(volumes, [1 / 3, 2 / 3])))


def volume_bin_label(volume: float, edges: Sequence[float]) -> str:
    """Human-readable bin of one reference volume; bins are [lower, upper) mL."""
    if volume <= 0:
        return "empty reference"
    bounds = [0.0, *edges, math.inf]
    index = int(np.searchsorted(np.asarray(edges, dtype=float), volume, side="right"))
    return _bin_name(bounds[index], bounds[index + 1])


def volume_bin_order(edges: Sequence[float]) -> list[str]:
    """All bin labels for ``edges`` in increasing volume order (for stable tables and plots)."""
    bounds = [0.0, *edges, math.inf]
    return ["empty reference"] + [_bin_name(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def _bin_name(lower: float, upper: float) -> str:
    if upper == math.inf:
        return f">= {lower:.3g} mL" if lower > 0 else "> 0 mL"
    return f"{lower:.3g}-{upper:.3g} mL" if lower > 0 else f"< {upper:.3g} mL"


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample sd and count of the finite values (NaN mean/sd when there are none/one)."""
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    mean = float(finite.mean()) if finite.size else math.nan
    sd = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return mean, sd, int(finite.size)


def _paired_arrays(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]
