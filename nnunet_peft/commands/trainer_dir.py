"""`nnunet-peft trainer-dir`: the folder to put in nnU-Net's ``nnUNet_extTrainer``."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def trainer_dir() -> Path:
    """The installed location of ``trainers/`` (the repository folder for an editable install)."""
    spec = importlib.util.find_spec("nnunet_peft.trainers")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nnunet_peft.trainers is not installed; reinstall nnunet-peft")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _run(args: argparse.Namespace) -> int:
    print(trainer_dir())
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "trainer-dir",
        help="print the folder to export as nnUNet_extTrainer",
        description="Print the folder holding the nnUNetTrainer<Method> classes. Use it as "
        "`export nnUNet_extTrainer=$(nnunet-peft trainer-dir)` before nnUNetv2_train / nnUNetv2_predict.",
    )
    p.set_defaults(func=_run)
