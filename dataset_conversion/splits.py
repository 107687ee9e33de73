"""k-fold cross-validation splits in nnU-Net's splits_final.json format."""
from __future__ import annotations

import numpy as np
from nnunetv2.utilities.crossval_split import generate_crossval_split

SEED = 12345  # nnU-Net's own seed, so that unstratified splits equal the ones nnU-Net would make


def kfold_splits(case_ids: list[str], folds: int, seed: int = SEED) -> list[dict[str, list[str]]]:
    _check(len(case_ids), folds)
    return [{"train": sorted(map(str, s["train"])), "val": sorted(map(str, s["val"]))}
            for s in generate_crossval_split(sorted(case_ids), seed=seed, n_splits=folds)]


def stratified_splits(volumes: dict[str, float], folds: int, seed: int = SEED) -> list[dict[str, list[str]]]:
    """Folds with similar foreground-volume distributions.

    Cases are sorted by volume and dealt out in blocks of ``folds``: each block sends one case to
    every fold (in a random order per block), so each fold gets one case from every volume stratum.
    With few cases, as in small fine-tuning datasets, this keeps one fold from holding all the
    small lesions.
    """
    _check(len(volumes), folds)
    rng = np.random.default_rng(seed)
    ordered = sorted(volumes, key=lambda c: (volumes[c], c))
    val: list[list[str]] = [[] for _ in range(folds)]
    for start in range(0, len(ordered), folds):
        block = ordered[start:start + folds]
        order = rng.permutation(folds)
        # a short last block goes to the folds that are smallest so far, keeping sizes within one
        targets = sorted(range(folds), key=lambda f: (len(val[f]), order[f]))
        for case, fold in zip(block, targets):
            val[fold].append(case)
    return [{"train": sorted(c for c in ordered if c not in set(v)), "val": sorted(v)} for v in val]


def _check(n_cases: int, folds: int) -> None:
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    if n_cases < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} labelled cases, found {n_cases}; "
                         f"lower --folds")
