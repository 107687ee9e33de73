"""Which checkpoint ``-pretrained_weights`` names (reading it and checking that it fits are in
``nnunet_peft.checkpoint_file``).

nnU-Net loads the pretrained weights itself (``load_pretrained_weights``) but never the
segmentation heads, and it does not tell the trainer which file it loaded. The trainer reads the
path from the command line that nnU-Net parses (``sys.argv`` is also restored in DDP workers).
What happens to the heads and the first convolution is in ``nnunet_peft.class_channel_mapping``.
"""
from __future__ import annotations

import sys

# reading a checkpoint and checking that it fits are library functions below the trainers (named
# adapters and serving use them too); they stay importable from here
from nnunet_peft.checkpoint_file import check_pretrained_compatible, load_checkpoint_file, load_weights  # noqa: F401
from nnunet_peft.placement import HEAD_KEY  # noqa: F401


def pretrained_weights_argument(argv: list[str] | None = None) -> str | None:
    """The value of ``-pretrained_weights`` on the ``nnUNetv2_train`` command line, if any."""
    argv = sys.argv if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "-pretrained_weights" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("-pretrained_weights="):
            return arg.split("=", 1)[1]
    return None
