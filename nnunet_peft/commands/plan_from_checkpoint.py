"""`nnunet-peft plan-from-checkpoint`: the command line over ``nnunet_peft.planning.from_checkpoint``."""
from __future__ import annotations

import argparse

from nnunet_peft.commands.deprecated import resolve_checkpoint
from nnunet_peft.planning import from_checkpoint
from nnunet_peft.planning.from_checkpoint import DEFAULT_PLANS_NAME, INTENSITY_SOURCES


def _run(args: argparse.Namespace) -> int:
    checkpoint, configuration = resolve_checkpoint(args, "plan-from-checkpoint")
    # a failed nnU-Net step raises NnUNetStepFailed, which nnunet_peft.cli.main reports (exit status 1)
    from_checkpoint.plan_from_checkpoint(args.dataset, checkpoint, configuration=configuration,
                                         plans_name=args.plans_name, intensity_properties=args.intensity_properties,
                                         num_processes=args.num_processes, overwrite=args.overwrite,
                                         verify_dataset_integrity=args.verify_dataset_integrity)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan-from-checkpoint",
        help="plan and preprocess a target dataset for fine-tuning a pretrained nnU-Net checkpoint",
        description="Write the target's plans with the checkpoint's architecture, patch size, spacing and "
        "normalisation (read from the checkpoint itself: no source dataset needed, no "
        "nnUNetv2_move_plans_between_datasets), then run nnUNetv2_preprocess, and print the nnUNetv2_train "
        "command to fine-tune. Uses nnUNet_raw and nnUNet_preprocessed like nnU-Net.",
    )
    p.add_argument("-d", "--dataset", required=True, help="target dataset id or name (in nnUNet_raw)")
    p.add_argument("--checkpoint", metavar="CHECKPOINT",
                   help="pretrained nnU-Net checkpoint (.pth), e.g. MODEL_FOLDER/fold_0/checkpoint_final.pth "
                   "(required; the old spelling '-c CHECKPOINT' still works, with a deprecation message, until "
                   "0.2.0)")
    p.add_argument("-c", "--configuration", default=None,
                   help="configuration to plan, as in nnU-Net (default: the one the checkpoint was trained as, "
                   "recorded in it as init_args['configuration']). Another configuration of the checkpoint's plans "
                   "is planned with a warning, and only if the checkpoint's weights fit its network")
    p.add_argument("-p", "--plans-name", default=DEFAULT_PLANS_NAME,
                   help=f"name of the plans to write; pass it to nnUNetv2_train -p (default: {DEFAULT_PLANS_NAME})")
    p.add_argument("--intensity-properties", choices=INTENSITY_SOURCES, default="source",
                   help="foreground intensity statistics for CTNormalization: 'source' (default) keeps the "
                   "checkpoint's, so intensities are normalised as in pretraining; 'target' uses the target's "
                   "own, as nnU-Net does from scratch. Ignored by per-image schemes such as ZScoreNormalization.")
    p.add_argument("-np", "--num-processes", type=int, default=None,
                   help="processes for fingerprint extraction and preprocessing (default: min(4, CPUs))")
    p.add_argument("--overwrite", action="store_true", help="replace a plans file of that name made from another checkpoint or with other settings")
    p.add_argument("--verify-dataset-integrity", action="store_true",
                   help="run nnU-Net's dataset integrity check first (recommended once per dataset)")
    p.set_defaults(func=_run)
