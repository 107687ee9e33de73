"""Three 2-D plans of one dataset, one per view, planned and preprocessed by nnU-Net (`nnunet-peft plan-views`).

A source dataset is planned with nnU-Net's own planner (``ViewPlanner``: its ``transpose_forward``
fixed per view). A target dataset is planned from one checkpoint per view with
``plan-from-checkpoint``, which keeps each checkpoint's transpose, architecture and spacing; the view
is read from the checkpoint's ``transpose_forward``.

Everything is written in a staging folder inside ``nnUNet_preprocessed`` and moved into place when
every view succeeded, the plans files last.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from nnunet_peft.planning.from_checkpoint import DEFAULT_PLANS_NAME
from nnunet_peft.planning.staging import move_into_place, nnunet_folder, staged_preprocessing
from nnunet_peft.planning.view_planner import (CONFIGURATION, VIEWS, check_architecture, check_view, default_plans_name,
                                               view_of_transpose)

PRETRAINED_PREFIX = DEFAULT_PLANS_NAME  # a view's plans from a checkpoint: plan-from-checkpoint's name + _<view>


def plan_views(dataset: str | int, views: Sequence[str] = tuple(VIEWS), architecture: str = "unet",
               num_processes: int = 2, target_spacing: Sequence[float] | None = None,
               raw_folder: str | os.PathLike | None = None, preprocessed_folder: str | os.PathLike | None = None,
               log: Callable[[str], None] = print) -> dict[str, Path]:
    """Plan and preprocess ``dataset`` once per view with nnU-Net's planner; ``{view: plans file}``."""
    from nnunet_peft.planning.from_checkpoint import NnUNetStepFailed, _run_nnunet, resolve_dataset

    views = _unique_views(views)
    check_architecture(architecture)
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    if target_spacing is not None and (len(target_spacing) != 3 or min(target_spacing) <= 0):
        raise ValueError(f"target spacing must be three positive mm values in the image's array order "
                         f"(z, y, x), got {list(target_spacing)}")
    raw = nnunet_folder(raw_folder, "nnUNet_raw")
    preprocessed = nnunet_folder(preprocessed_folder, "nnUNet_preprocessed")
    dataset_id, dataset_name = resolve_dataset(raw, dataset)
    names = {view: default_plans_name(view, architecture) for view in views}

    with staged_preprocessing(raw, preprocessed, dataset_name, "plan-views") as (staged, env):
        _run_nnunet("extract_fingerprint_entry", "nnUNetv2_extract_fingerprint",
                    ["-d", str(dataset_id), "-np", str(num_processes)], env, log)
        log(f"planning the {', '.join(views)} view(s) ({architecture}) and preprocessing their "
            f"{CONFIGURATION} configurations")
        # one fresh interpreter for all views: nnU-Net reads its folders from the environment once, at import
        spacing = None if target_spacing is None else [float(s) for s in target_spacing]
        call = ("from nnunet_peft.planning.view_planner import plan_and_preprocess_view\n"
                + "".join(f"plan_and_preprocess_view({dataset_id}, {view!r}, {names[view]!r}, {architecture!r}, "
                          f"{num_processes}, {spacing!r})\n" for view in views))
        if subprocess.run([sys.executable, "-c", call], env=env).returncode != 0:
            raise NnUNetStepFailed("planning or preprocessing a view failed (the output above says why); "
                                   "nothing was written")
        move_into_place(staged, preprocessed / dataset_name, {f"{n}.json" for n in names.values()})
    paths = {view: preprocessed / dataset_name / f"{names[view]}.json" for view in views}
    _log_summary(paths, log)
    _warn_if_not_axial(preprocessed / dataset_name / "dataset_fingerprint.json", log)
    log(f"next: nnUNetv2_train {dataset_id} {CONFIGURATION} FOLD -p PLANS for each of "
        f"{' '.join(names.values())}; predict with --save_probabilities and average with nnUNetv2_ensemble")
    return paths


def plan_views_from_checkpoints(dataset: str | int, checkpoints: Sequence[str | os.PathLike],
                                plans_prefix: str = PRETRAINED_PREFIX, log: Callable[[str], None] = print,
                                **kwargs) -> dict[str, Path]:
    """Plan a target once per view checkpoint with ``plan_from_checkpoint`` (``PREFIX_<view>`` plans).

    Each checkpoint's view is read from its plans' ``transpose_forward``; two checkpoints of one
    view, or one of no view, are refused before anything is written. ``kwargs`` go to
    ``plan_from_checkpoint`` (intensity properties, folders, overwrite, ...).
    """
    from nnunet_peft.planning.from_checkpoint import plan_from_checkpoint, read_checkpoint

    by_view: dict[str, Path] = {}
    for checkpoint in checkpoints:
        info = read_checkpoint(checkpoint)
        view = view_of_transpose(info.plans.get("transpose_forward", ()))
        if view is None:
            raise ValueError(f"checkpoint {info.path} has transpose_forward {info.plans.get('transpose_forward')}, "
                             f"which is no view's ({', '.join(f'{v} {list(t)}' for v, t in VIEWS.items())})")
        if info.configuration != CONFIGURATION:
            raise ValueError(f"checkpoint {info.path} was trained as {info.configuration!r}; a view's network is "
                             f"a {CONFIGURATION!r} one (plan the source with nnunet-peft plan-views)")
        if view in by_view:
            raise ValueError(f"checkpoints {by_view[view]} and {info.path} are both of the {view} view; give one "
                             f"checkpoint per view")
        by_view[view] = info.path
    paths = {}
    for view, checkpoint in by_view.items():
        log(f"--- {view} view: {checkpoint}")
        paths[view] = plan_from_checkpoint(dataset, checkpoint, configuration=CONFIGURATION,
                                           plans_name=f"{plans_prefix}_{view}", log=log, **kwargs)
    fingerprint = next(iter(paths.values())).parent / "dataset_fingerprint.json"
    if fingerprint.is_file():  # the views keep the source's axes, which must be the target's slices too
        _warn_if_not_axial(fingerprint, log)
    return paths


def _unique_views(views: Sequence[str]) -> list[str]:
    views = [check_view(v) for v in views]
    if not views or len(set(views)) != len(views):
        raise ValueError(f"give each view at most once, and at least one; got {list(views)}")
    return views


def _log_summary(paths: dict[str, Path], log: Callable[[str], None]) -> None:
    import json

    for view, path in paths.items():
        plans = json.loads(path.read_text(encoding="utf-8"))
        config = plans["configurations"][CONFIGURATION]
        log(f"{view}: {path.name}: transpose_forward {plans['transpose_forward']}, 2-D spacing {config['spacing']} mm "
            f"(slices along axis {plans['transpose_forward'][0]} are not resampled), patch {config['patch_size']}, "
            f"batch {config['batch_size']}, {config['architecture']['network_class_name'].rsplit('.', 1)[-1]}")


def _warn_if_not_axial(fingerprint_file: Path, log: Callable[[str], None]) -> None:
    """The view names assume slices stored along array axis 0; say so when the thickest axis is another."""
    import json

    import numpy as np

    spacing = np.median(json.loads(fingerprint_file.read_text(encoding="utf-8"))["spacings"], axis=0)
    thickest = int(np.argmax(spacing))
    if spacing[thickest] > 1.5 * np.min(spacing) and thickest != 0:
        named = next(v for v, t in VIEWS.items() if t[0] == thickest)
        log(f"WARNING: the median spacing {[round(float(s), 3) for s in spacing]} is coarsest along array axis "
            f"{thickest}, not 0: the acquisition's slices are what the '{named}' plans slice along, so the view "
            f"names do not match the anatomy of this dataset (the plans themselves are right)")
