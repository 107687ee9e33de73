"""The old ``-c CHECKPOINT`` spelling of ``plan-from-checkpoint`` and ``apply-adapter``.

``-c`` is the configuration in every nnU-Net command and in ``benchmark``; it is now the
configuration here too, and the checkpoint is ``--checkpoint``. For one release a ``-c`` value that
is clearly a checkpoint (an existing file, or a name ending in ``.pth``) is still taken as the
checkpoint, with a deprecation message on stderr. A configuration is a plain name such as
``3d_fullres`` and never a file, so the two cannot be confused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REMOVED_IN = "0.2.0"


def looks_like_checkpoint(value: str) -> bool:
    return value.endswith(".pth") or Path(value).is_file()


def resolve_checkpoint(args: argparse.Namespace, command: str) -> tuple[str, str | None]:
    """(checkpoint, configuration) from ``--checkpoint`` and ``-c``, accepting the old ``-c CHECKPOINT``.

    Raises ValueError (a clean CLI error) when no checkpoint is given or when it is given twice.
    """
    checkpoint, configuration = args.checkpoint, args.configuration
    if configuration is not None and looks_like_checkpoint(configuration):
        if checkpoint is not None:
            raise ValueError(f"-c {configuration} looks like a checkpoint, and --checkpoint {checkpoint} is given "
                             "too; -c is the configuration (e.g. 3d_fullres)")
        print(f"nnunet-peft {command}: DEPRECATED: '-c CHECKPOINT' is now '--checkpoint CHECKPOINT' (-c is the "
              f"configuration, as in nnU-Net); '-c {configuration}' is read as --checkpoint {configuration} "
              f"until nnunet-peft {REMOVED_IN}", file=sys.stderr)
        checkpoint, configuration = configuration, None
    if checkpoint is None:
        raise ValueError("the pretrained checkpoint is missing: give --checkpoint CHECKPOINT.pth")
    return checkpoint, configuration
