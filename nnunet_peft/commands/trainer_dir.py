"""`nnunet-peft trainer-dir`: the folder to put in nnU-Net's ``nnUNet_extTrainer``."""
from __future__ import annotations

import argparse

# trainer_environment too: scripts/ import it from this module, where it was first
from nnunet_peft.trainer_folder import trainer_dir, trainer_environment  # noqa: F401


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
