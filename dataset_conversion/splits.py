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


def grouped_kfold_splits(groups: dict[str, str], folds: int, seed: int = SEED) -> list[dict[str, list[str]]]:
    """k-fold splits in which all cases of a group (``case -> group``) are on the same side of every fold.

    nnU-Net's own split is made over the sorted group ids and then expanded to their cases, so with one
    case per group (group = case id) this is exactly ``kfold_splits``.
    """
    _check(len(set(groups.values())), folds, what="groups (subjects)")
    return _expand(kfold_splits(sorted(set(groups.values())), folds, seed), groups)


def grouped_stratified_splits(volumes: dict[str, float], groups: dict[str, str], folds: int,
                              seed: int = SEED) -> list[dict[str, list[str]]]:
    """``stratified_splits`` over groups, each weighed by the total volume of its cases, then expanded."""
    totals: dict[str, float] = {}
    for case, volume in volumes.items():
        totals[groups[case]] = totals.get(groups[case], 0.0) + volume
    _check(len(totals), folds, what="groups (subjects)")
    return _expand(stratified_splits(totals, folds, seed), groups)


def _expand(splits: list[dict[str, list[str]]], groups: dict[str, str]) -> list[dict[str, list[str]]]:
    members: dict[str, list[str]] = {}
    for case, group in groups.items():
        members.setdefault(group, []).append(case)
    return [{part: sorted(c for g in s[part] for c in members[g]) for part in ("train", "val")} for s in splits]


def _check(n: int, folds: int, what: str = "labelled cases") -> None:
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    if n < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} {what}, found {n}; lower --folds")
