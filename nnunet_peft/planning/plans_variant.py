"""A cheaper variant of nnU-Net's plans: narrower network or smaller batch, same preprocessed data.

nnU-Net plans for a GPU. On a CPU, halving every stage's width quarters the cost of an iteration
and a batch of 2 instead of nnU-Net's planned one cuts it further, while the architecture stays
nnU-Net's own and the data identifier (hence the preprocessed data) is shared with the original
plans. The variant is a new plans file; nnU-Net's own is never edited.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_plans_variant(dataset_folder: str | os.PathLike, plans_name: str, configuration: str,
                        base_features: int | None = None, batch_size: int | None = None,
                        source_plans: str = "nnUNetPlans") -> Path:
    """Write ``dataset_folder/plans_name.json`` from ``source_plans`` with the given changes.

    ``base_features`` is the new width of the first stage; every stage is scaled by the same factor.
    """
    if base_features is not None and base_features < 1:
        raise ValueError(f"base_features must be a positive number of channels, got {base_features}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset_folder = Path(dataset_folder)
    source = dataset_folder / f"{source_plans}.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist; run nnUNetv2_plan_and_preprocess first")
    plans = json.loads(source.read_text(encoding="utf-8"))
    if configuration not in plans["configurations"]:
        raise ValueError(f"{source} has no configuration {configuration!r}; it has "
                         f"{', '.join(plans['configurations'])}")
    config = plans["configurations"][configuration]
    if base_features is not None:
        arch = config["architecture"]["arch_kwargs"]
        planned = list(arch["features_per_stage"])
        arch["features_per_stage"] = [max(1, round(f * base_features / planned[0])) for f in planned]
    if batch_size is not None:
        config["batch_size"] = batch_size
    plans["plans_name"] = plans_name
    path = dataset_folder / f"{plans_name}.json"
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(plans, indent=4), encoding="utf-8")
    tmp.replace(path)
    return path
