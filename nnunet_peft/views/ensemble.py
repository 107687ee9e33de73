"""Averaging the views' probabilities with nnU-Net's own ensembling.

nnU-Net exports probabilities (``--save_probabilities`` for prediction, ``--npz`` for validation)
after reverting cropping, resampling and the plans' ``transpose_forward``
(``nnunetv2.inference.export_prediction``), so the ``.npz`` files of an axial, a coronal and a
sagittal model of one case are arrays of the same original shape and axis order, and
``nnunetv2.ensembling.ensemble.ensemble_folders`` (``nnUNetv2_ensemble``) averages them as it
averages folds or configurations. This module only checks the folders first, so a missing view
fails with the case and folder instead of nnU-Net's bare assertion, and writes through a temporary
folder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence


def _json_beside(folder: Path, name: str) -> Path | None:
    """``name`` in a prediction folder (nnUNetv2_predict copies it there) or in the model folder of a
    ``fold_K/validation`` folder."""
    for candidate in (folder / name, folder.parent.parent / name):
        if candidate.is_file():
            return candidate
    return None


def _load(value: dict | str | Path | None, folder: Path, name: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    path = Path(value) if value is not None else _json_beside(folder, name)
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no {name} for {folder}: pass it explicitly (it is in the model folder, "
                                f"TRAINER__PLANS__CONFIGURATION/{name})")
    return json.loads(path.read_text(encoding="utf-8"))


def check_view_folders(folders: Sequence[str | Path]) -> list[str]:
    """The cases every folder has probabilities for; raises if any folder lacks one of them."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise ValueError(f"an ensemble needs at least two prediction folders, got {len(folders)}")
    cases = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"prediction folder {folder} does not exist")
        found = {p.stem for p in folder.glob("*.npz")}
        if not found:
            raise FileNotFoundError(f"{folder} holds no probabilities (.npz): predict with --save_probabilities "
                                    f"(validation: nnUNetv2_train ... --npz, or --val --npz on a finished run)")
        cases.append(found)
    every = set().union(*cases)
    for folder, found in zip(folders, cases):
        missing = sorted(every - found)
        if missing:
            raise FileNotFoundError(f"{folder} lacks the probabilities of {len(missing)} case(s) the other views "
                                    f"have, e.g. {missing[0]}.npz; every view must predict the same cases")
    return sorted(every)


def ensemble_views(folders: Sequence[str | Path], output: str | Path, dataset_json: dict | str | Path | None = None,
                   plans: dict | str | Path | None = None, num_processes: int = 1,
                   save_probabilities: bool = False) -> Path:
    """Average the probabilities of ``folders`` (one per view) into segmentations in ``output``.

    ``dataset_json`` / ``plans`` default to the first folder's (or its model folder's); nnU-Net uses
    them only for the label handling and the image writer, which every view shares.
    """
    from nnunetv2.ensembling.ensemble import ensemble_folders

    folders = [Path(f) for f in folders]
    check_view_folders(folders)
    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    ensemble_folders([str(f) for f in folders], str(partial), save_probabilities, num_processes,
                     _load(dataset_json, folders[0], "dataset.json"), _load(plans, folders[0], "plans.json"))
    if output.exists():
        shutil.rmtree(output)
    partial.rename(output)
    return output
