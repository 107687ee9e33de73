"""`nnunet-peft info PATH`: the command line over ``nnunet_peft.folder_info``."""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_peft.folder_info import describe, format_info


def _run(args: argparse.Namespace) -> int:
    print(format_info(describe(Path(args.path))))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="say what an adapter folder, a results folder or a checkpoint is",
        description="Print what PATH is: for adapters the method, rank, alpha, placement, backbone, trainable "
        "parameters, file size, base fingerprint, labels and validation Dice; for a results folder the same per "
        "fold; for a checkpoint (.pth) its trainer, architecture, plans, configuration, labels and epoch. "
        "Reads only.")
    p.add_argument("path", metavar="PATH", help="an adapter folder, an export-adapter folder, a "
                   "<Trainer>__<Plans>__<Configuration> results folder (or its fold_K), or a checkpoint .pth")
    p.set_defaults(func=_run)
