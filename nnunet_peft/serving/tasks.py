"""The tasks one base serves: the base's own and one per export-adapter folder, each with its folds.

A task is what ``nnUNetv2_predict`` would predict from one model folder: its plans and dataset.json
(labels, export), its mirroring axes, and its folds, here named adapters on the one base network (the
base's own task has one "fold", the base alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from nnunet_peft.adapter_io import CONFIG_NAME, load_adapter, read_adapter_config
from nnunet_peft.checkpoint_file import load_checkpoint_file
from nnunet_peft.model_folder import load_base, read_json

BASE_TASK = "base"
COMBINED_FOLDER = "combined"


@dataclass
class Task:
    """What one output sub-folder is predicted with."""

    name: str  # the output sub-folder: the adapter folder's name, or "base"
    adapters: list[str | None]  # the named adapter of each fold (None: the base alone), ensembled
    plans: dict[str, Any]
    configuration: str
    dataset_json: dict[str, Any]
    mirroring_axes: tuple[int, ...] | None
    trainer_name: str
    folds: list[str]

    @property
    def plans_manager(self):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans)

    @property
    def label_manager(self):
        return self.plans_manager.get_label_manager(self.dataset_json)


def _axes(axes) -> tuple[int, ...] | None:
    return None if axes is None else tuple(int(a) for a in axes)


def adapter_folds(folder: Path, folds: Sequence[str] | None) -> list[Path]:
    """The ``fold_*`` sub-folders of an export-adapter folder to ensemble: those named by ``folds`` (as
    ``-f`` spells them: ``0 1 all``), or every one but ``fold_all``, as ``nnUNetPredictor`` finds them
    (``use_folds=None``)."""
    folder = Path(folder)
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: -a takes folders written by nnunet-peft export-adapter")
    if folds is None:
        found = sorted(d for d in folder.glob("fold_*") if d.name != "fold_all" and (d / CONFIG_NAME).is_file())
        if not found:
            raise FileNotFoundError(f"{folder} holds no fold_*/{CONFIG_NAME}; expected a folder written by export-adapter")
        return found
    chosen = [folder / f"fold_{f}" for f in folds]
    missing = [str(d) for d in chosen if not (d / CONFIG_NAME).is_file()]
    if missing:
        available = sorted(d.name for d in folder.glob("fold_*") if (d / CONFIG_NAME).is_file())
        raise FileNotFoundError(f"-f {' '.join(map(str, folds))}: {', '.join(missing)} not found; {folder} holds "
                                f"{', '.join(available) or 'no folds'}")
    return chosen


def load_tasks(checkpoint: Path, adapters: Sequence[Path], folds: Sequence[str] | None = None, base: bool = False,
               allow_other_base: bool = False) -> tuple[nn.Module, list[Task], Task]:
    """The base network with every fold of every adapter registered on it by name, the tasks to predict
    (the base's own first with ``base``), and the base's task (the reference for preprocessing).

    Each adapter is checked against the base: its fingerprint (``BaseMismatchError`` unless
    ``allow_other_base``) and its plans (``PlansMismatchError`` naming what would be preprocessed or built
    differently); its input must be the base's (file ending).
    """
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint_file(checkpoint)
    network = load_base(checkpoint, ckpt)
    args = ckpt["init_args"]
    base_task = Task(BASE_TASK, [None], args["plans"], args["configuration"], args["dataset_json"],
                     _axes(ckpt.get("inference_allowed_mirroring_axes")), ckpt["trainer_name"], ["base"])
    del ckpt
    names = [Path(a).resolve().name for a in adapters]
    reserved = {COMBINED_FOLDER} | ({BASE_TASK} if base else set())
    clashes = sorted({n for n in names if names.count(n) > 1 or n in reserved})
    if clashes:
        raise ValueError(f"the outputs are named after the adapter folders, and {', '.join(clashes)} would be written "
                         f"twice or over {'/'.join(sorted(reserved))}/; rename (or link) the adapter folders")
    tasks = [base_task] if base else []
    ending = base_task.dataset_json.get("file_ending")
    for folder, name in zip(map(Path, adapters), names):
        dataset_json = read_json(folder / "dataset.json")
        if dataset_json.get("file_ending") != ending:
            raise ValueError(f"{folder} predicts {dataset_json.get('file_ending')} images, the base {checkpoint} "
                             f"{ending}: one input folder cannot serve both")
        fold_dirs = adapter_folds(folder, folds)
        records = [read_adapter_config(d) for d in fold_dirs]
        configurations = sorted({str(r.get("configuration")) for r in records})
        if len(configurations) != 1:
            raise ValueError(f"the folds of {folder} were trained as configurations {configurations}; expected one")
        fold_names = []
        for fold_dir in fold_dirs:
            fold_names.append(f"{name}/{fold_dir.name}")
            load_adapter(network, fold_dir, allow_other_base=allow_other_base, base_name=str(checkpoint),
                         name=fold_names[-1])
        tasks.append(Task(name, fold_names, read_json(folder / "plans.json"), configurations[0], dataset_json,
                          _axes(records[0].get("inference_allowed_mirroring_axes")),
                          str(records[0].get("trainer_name")), [d.name for d in fold_dirs]))
    return network, tasks, base_task

