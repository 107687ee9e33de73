"""Writing into ``nnUNet_preprocessed`` all at once: nnU-Net plans and preprocesses into a staging folder,
whose outputs are moved into place when every step succeeded, the plans files last.

nnU-Net reads ``nnUNet_raw`` / ``nnUNet_preprocessed`` from the environment once, at import, so its
commands run in their own process, with an environment that points them at the staging folder.
plan-from-checkpoint and plan-views both write this way.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Collection, Iterator


def nnunet_folder(value: str | os.PathLike | None, variable: str) -> Path:
    """``value``, or without one the folder the environment variable ``variable`` names (``nnUNet_raw``, ...)."""
    if value is None:
        value = os.environ.get(variable)
        if not value:
            raise ValueError(f"{variable} is not set; export it as for nnU-Net (or pass the folder explicitly)")
    return Path(value).expanduser().resolve()


@contextmanager
def staged_preprocessing(raw: Path, preprocessed: Path, dataset_name: str,
                         command: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """``with staged_preprocessing(raw, preprocessed, name, "plan-views") as (staged, env):`` ``staged`` is the
    dataset's folder in a staging ``nnUNet_preprocessed``, and ``env`` the environment in which nnU-Net's
    commands read ``raw`` and write there. The staging folder is removed afterwards, also after an error,
    so that a failed step leaves ``preprocessed`` as it was (``move_into_place`` takes what succeeded)."""
    preprocessed.mkdir(parents=True, exist_ok=True)
    # inside nnUNet_preprocessed: the same file system, so the final moves are renames; named for the
    # command, so that one left behind by a killed process says where it came from
    staging_root = Path(tempfile.mkdtemp(prefix=f".{command}-", dir=preprocessed))
    try:
        staged = staging_root / dataset_name
        staged.mkdir()
        yield staged, {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(staging_root)}
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


def move_into_place(staged: Path, destination: Path, plans_file_name: str | Collection[str]) -> None:
    """Move staged outputs into ``destination``; the plans files go last, so they only exist with their data."""
    plans_files = {plans_file_name} if isinstance(plans_file_name, str) else set(plans_file_name)
    destination.mkdir(parents=True, exist_ok=True)
    for item in sorted(staged.iterdir(), key=lambda p: p.name in plans_files):
        target = destination / item.name
        if item.is_dir():
            if item.name == "gt_segmentations" and target.is_dir():
                # shared with other plans of this dataset: copies of the raw labels, so merge
                for f in item.iterdir():
                    os.replace(f, target / f.name)
                continue
            if target.exists():
                shutil.rmtree(target)
        os.replace(item, target)
