r"""Trainable parameters of every method on a transformer backbone, as docs/transformer_backbones.md lists them.

    python scripts/backbone_parameters.py                     # UNETR as in the LoRA-PT paper, rank 8
    python scripts/backbone_parameters.py --backbone swinunetr --patch 96 96 96 --in-channels 4

The counts are those of ``inject_adapters`` / ``configure_finetuning`` on the network the trainer
builds (all placements; the segmentation head trains under every method), so they follow the code.
Adapters are only allocated (``init_weights=False``): the counts do not depend on their values.
"""
from __future__ import annotations

import argparse
import copy
import warnings

from nnunet_peft.architectures import BACKBONES, build_backbone
from nnunet_peft.config import METHODS, PeftConfig
from nnunet_peft.injection import configure_finetuning, inject_adapters
from nnunet_peft.summary import count_parameters


def parameter_rows(backbone: str = "unetr", patch_size=(96, 96, 96), in_channels: int = 1, classes: int = 3,
                   rank: int = 8) -> list[tuple[str, int, int]]:
    """``(method token, trainable, total)`` for every adapter method, then Finetune and SegHead."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    stock = build_backbone(backbone, patch_size, in_channels, classes)
    rows = []
    for method, spec in METHODS.items():  # the docs' order, named by the trainer-name tokens
        network = inject_adapters(copy.deepcopy(stock), PeftConfig(method, rank=rank), init_weights=False)
        rows.append((spec.token, *count_parameters(network)))
    for name, mode in [("Finetune", "finetune"), ("SegHead", "seg_head")]:
        rows.append((name, *count_parameters(configure_finetuning(copy.deepcopy(stock), mode))))
    return rows


def markdown(rows: list[tuple[str, int, int]]) -> str:
    """Table rows ``| method | trainable | share of the network |`` (the share of the stock total)."""
    stock_total = next(total for name, _, total in rows if name == "Finetune")
    return "\n".join(f"| {name} | {trainable:,} | {100 * trainable / stock_total:.2f}% |"
                     for name, trainable, _ in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="unetr", choices=sorted(BACKBONES))
    parser.add_argument("--patch", type=int, nargs="+", default=[96, 96, 96])
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=3, help="output channels, background included")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    print(markdown(parameter_rows(args.backbone, tuple(args.patch), args.in_channels, args.classes, args.rank)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
