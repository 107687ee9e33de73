"""A tri-planar method in the benchmark: one trainer over the views' plans, and the ensemble of its views.

Each view is an ordinary ``Experiment`` (its plans identifier, its pretrained checkpoint) whose runs
also write probabilities; the ensemble of a trainer and fold averages its views' validation (and
test) probabilities with nnU-Net's ensembling (``nnunet_peft.views.ensemble``) and is scored like
any run. In the report a view is the method ``<method> [<view>]`` and the ensemble
``<method> [ensemble]``, so every table, test and plot of the benchmark covers them.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from nnunet_peft.evaluation.metrics import evaluate_folder, ignore_label_of
from nnunet_peft.evaluation.runs import Experiment, Run
from nnunet_peft.planning.view_planner import VIEWS

ENSEMBLE = "ensemble"


def view_label(plans: str) -> str:
    """``axial`` for ``nnUNetPlans_axial`` / ``nnUNetPlans_pretrained_axial``; the plans name for other names."""
    suffix = plans.rsplit("_", 1)[-1]
    return suffix if suffix in VIEWS else plans


def view_experiments(base: Experiment, plans: Sequence[str], pretrained: Sequence[Path | None]) -> list[Experiment]:
    """One experiment per view, writing probabilities; ``pretrained`` holds one checkpoint per view (or Nones)."""
    labels = [view_label(p) for p in plans]
    if len(plans) < 2 or len(set(plans)) != len(plans) or len(set(labels)) != len(labels):
        raise ValueError(f"--views needs at least two different plans identifiers with different views, "
                         f"e.g. nnUNetPlans_pretrained_axial nnUNetPlans_pretrained_coronal "
                         f"nnUNetPlans_pretrained_sagittal; got {' '.join(plans)}")
    if len(pretrained) != len(plans):
        raise ValueError(f"--pretrained takes one checkpoint per view, in the order of --views ({len(plans)}); "
                         f"got {len(pretrained)}")
    return [replace(base, plans=p, pretrained=c, save_probabilities=True) for p, c in zip(plans, pretrained)]


def method_name(display: str, view: str) -> str:
    return f"{display} [{view}]"


def retag(items: Sequence[dict], experiment: Experiment) -> list[dict]:
    """Rows, costs or curve rows of one view, their method named after the view."""
    label = view_label(experiment.plans)
    return [{**item, "method": method_name(item["method"], label)} for item in items]


def ensemble_costs(costs: Sequence[dict], runs: Sequence[Run]) -> list[dict]:
    """Per (trainer, fold) of the ensemble: parameters, adapter bytes and epoch time summed over the views
    (the ensemble trains and stores every view), peak GPU memory the largest view's."""
    out = []
    for run in runs:
        display = run.trainer.display
        views = [c for c in costs if c.get("trainer") == run.trainer.name and c.get("fold") == str(run.fold)]
        if not views:
            continue
        row = {"method": method_name(display, ENSEMBLE), "trainer": run.trainer.name, "fold": str(run.fold),
               "cost_source": "sum over views"}
        for field in ("trainable_parameters", "total_parameters", "adapter_bytes", "mean_epoch_time_s"):
            row[field] = float(sum(v.get(field, math.nan) for v in views))
        memory = [v.get("peak_gpu_memory_bytes", math.nan) for v in views]
        row["peak_gpu_memory_bytes"] = max(memory) if all(m == m for m in memory) else math.nan
        out.append(row)
    return out


def ensemble_rows(experiments: Sequence[Experiment], runs: Sequence[Run], split: str,
                  folders: Callable[[Experiment, Run], Path | None], output_root: Path, reference: Path,
                  labels: dict, file_ending: str, dataset_json: dict, num_processes: int = 1,
                  log: Callable[[str], None] = print) -> tuple[list[dict], list[str]]:
    """Ensemble every run whose views all have probabilities and score it; rows and notes on the others.

    ``folders(experiment, run)`` is a view's prediction folder for ``split`` (None if it has none).
    Ensembles go to ``output_root/TRAINER/fold_K`` and are reused when present.
    """
    from nnunet_peft.views.ensemble import ensemble_views

    rows, notes = [], []
    ignore = ignore_label_of(labels)
    for run in runs:
        inputs = [folders(e, run) for e in experiments]
        if any(f is None or not any(f.glob("*.npz")) for f in inputs):
            notes.append(f"{run.trainer.name} fold {run.fold}: no {split} ensemble (a view has no probabilities)")
            continue
        destination = output_root / run.trainer.name / f"fold_{run.fold}"
        if not destination.is_dir():
            log(f"ensemble {split} {run.trainer.name} fold {run.fold} over {len(inputs)} views")
            ensemble_views(inputs, destination, dataset_json,
                           experiments[0].model_folder(run.trainer.name) / "plans.json", num_processes)
        for row in evaluate_folder(destination, reference, labels, file_ending, ignore, num_processes):
            rows.append({"method": method_name(run.trainer.display, ENSEMBLE), "trainer": run.trainer.name,
                         "fold": str(run.fold), "split": split, **row})
    return rows, notes


def default_reference(trainers, reference: str | None) -> str:
    """The method the paired tests compare against: the ensemble of ``reference`` (a trainer name), else
    of the Finetune trainer, else of the first trainer (so each view is tested against the ensemble)."""
    from nnunet_peft.evaluation.trainer_names import choose_reference

    chosen, _ = choose_reference(trainers, reference) if reference is None or \
        reference in [t.name for t in trainers] else (None, "")
    if reference is not None and chosen is None:
        return reference  # a method name such as "CPLoRA [axial]"
    name = chosen or trainers[0].name
    return method_name(next(t.display for t in trainers if t.name == name), ENSEMBLE)
