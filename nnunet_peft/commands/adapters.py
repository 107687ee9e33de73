"""Sharing trained adapters: ``export-adapter``, ``apply-adapter`` and ``merge``, the command line over
``nnunet_peft.adapter_sharing``."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from nnunet_peft.adapter_io import BaseFingerprintWarning
from nnunet_peft.adapter_sharing import apply_adapter, export_adapter, merge_model_folder
from nnunet_peft.commands.deprecated import resolve_checkpoint


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1024:.1f} KiB"


def _export(args: argparse.Namespace) -> int:
    for path in export_adapter(Path(args.m), Path(args.o), args.overwrite):
        print(f"{path}  {_size(path)}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    checkpoint, configuration = resolve_checkpoint(args, "apply-adapter")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BaseFingerprintWarning)
        out = apply_adapter(Path(args.a), Path(checkpoint), Path(args.o), args.overwrite, args.allow_other_base,
                            configuration)
    for w in caught:
        if issubclass(w.category, BaseFingerprintWarning):
            print(f"nnunet-peft apply-adapter: WARNING: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {out}; predict with: export nnUNet_extTrainer=$(nnunet-peft trainer-dir); "
          f"nnUNetv2_predict_from_modelfolder -i INPUT -o OUTPUT -m {out}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    out = merge_model_folder(Path(args.m), Path(args.o), args.overwrite)
    print(f"wrote {out}; stock nnU-Net predicts with it (no plugin needed): "
          f"nnUNetv2_predict_from_modelfolder -i INPUT -o OUTPUT -m {out}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export-adapter", help="write a trained model's adapters alone (small, shareable)",
        description="Write the adapter state of every fold of MODEL_FOLDER (safetensors + config + trainer "
        "name + plans) to OUT. Together with the pretrained checkpoint it rebuilds the model (apply-adapter).")
    p.add_argument("-m", required=True, metavar="MODEL_FOLDER", help="a <Trainer>__<Plans>__<Configuration> results folder")
    p.add_argument("-o", required=True, metavar="OUT")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "apply-adapter", help="rebuild a model folder from an exported adapter and its pretrained checkpoint",
        description="Turn an export-adapter folder plus the pretrained checkpoint back into a model folder that "
        "predicts exactly as the original (needs nnUNet_extTrainer=$(nnunet-peft trainer-dir) to predict). "
        "The checkpoint must be the base the adapter was trained on: its fingerprint is compared with the one "
        "the adapter recorded (nnunet-peft info shows both).")
    p.add_argument("-a", required=True, metavar="ADAPTER", help="a folder written by export-adapter")
    p.add_argument("--checkpoint", metavar="CHECKPOINT",
                   help="the pretrained checkpoint (.pth) the adapter was trained from (required; the old spelling "
                   "'-c CHECKPOINT' still works, with a deprecation message, until 0.2.0)")
    p.add_argument("-c", "--configuration", default=None,
                   help="optional check: the configuration (e.g. 3d_fullres) the adapter must have been trained as; "
                   "the adapter records it")
    p.add_argument("-o", required=True, metavar="MODEL_FOLDER")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--allow-other-base", action="store_true",
                   help="apply the adapter even if the checkpoint is not the base it was trained on (warns; the "
                   "predictions are then not the exported model's)")
    p.set_defaults(func=_apply)

    p = subparsers.add_parser(
        "merge", help="fold the adapters into the kernels: a model folder stock nnU-Net predicts with",
        description="Write a model folder of stock nnUNetTrainer checkpoints (W0 + dW), every fold of MODEL_FOLDER, "
        "for nnUNetv2_predict_from_modelfolder without the plugin. HyPS is refused: its serial adapter acts on "
        "activations and has no kernel to fold into (share it with export-adapter / apply-adapter).")
    p.add_argument("-m", required=True, metavar="MODEL_FOLDER")
    p.add_argument("-o", required=True, metavar="MERGED_FOLDER")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_merge)
