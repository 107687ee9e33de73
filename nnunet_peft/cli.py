"""`nnunet-peft` command line: one subcommand per module, each exposing ``add_parser(subparsers)``.

Each module registers its subcommand and sets ``func`` (called with the parsed namespace, returns an
exit code). Keeping one module per command keeps this file free of the commands' own imports, which
are heavy (torch, nnU-Net) and only paid for by the command that runs. Errors are reported here, for
every command alike: a command raises, ``main`` prints ``nnunet-peft <command>: error: ...``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from nnunet_peft.errors import StepFailed

COMMAND_MODULES = (
    "nnunet_peft.commands.trainer_dir",
    "nnunet_peft.commands.adapters",
    "nnunet_peft.commands.info",
    "nnunet_peft.commands.convert",
    "nnunet_peft.commands.plan_from_checkpoint",
    "nnunet_peft.commands.plan_views",
    "nnunet_peft.commands.demo",
    "nnunet_peft.commands.benchmark",
    "nnunet_peft.commands.volumetry",
    "nnunet_peft.commands.predict",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-peft",
        description="Parameter-efficient fine-tuning for nnU-Net v2. Train with nnU-Net's own "
        "nnUNetv2_train -tr nnUNetTrainer<Method>...; these commands do everything around it.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StepFailed as e:
        return report_error(args.command, e, status=1, advice=e.advice)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        # user errors: the message says what is wrong and what to do; a traceback would bury it
        return report_error(args.command, e, status=2)


def report_error(command: str, error: BaseException, status: int, advice: str = "") -> int:
    """Print ``nnunet-peft <command>: error: <error>`` (and ``advice`` on its own line) on stderr;
    returns ``status``, the exit status."""
    print(f"nnunet-peft {command}: error: {error}", file=sys.stderr)
    if advice:
        print(advice, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
