"""`nnunet-peft plan-views`: the command line over ``nnunet_peft.views.plan_views``."""
from __future__ import annotations

import argparse

from nnunet_peft.planning.view_planner import ARCHITECTURES, VIEWS
from nnunet_peft.views.plan_views import PRETRAINED_PREFIX, plan_views, plan_views_from_checkpoints


def _run(args: argparse.Namespace) -> int:
    # a failed nnU-Net step raises NnUNetStepFailed, which nnunet_peft.cli.main reports (exit status 1)
    if args.checkpoints:
        if args.architecture != "unet" or args.target_spacing is not None:
            raise ValueError("--architecture and --target-spacing come from the checkpoints when planning a "
                             "target from them; leave them out")
        plan_views_from_checkpoints(args.dataset, args.checkpoints, plans_prefix=args.plans_prefix,
                                    num_processes=args.num_processes, overwrite=args.overwrite,
                                    intensity_properties=args.intensity_properties)
    else:
        plan_views(args.dataset, args.views, args.architecture, args.num_processes, args.target_spacing)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan-views",
        help="plan and preprocess a dataset three times, one 2d configuration per view (axial, coronal, sagittal)",
        description="Tri-planar 2-D nnU-Net. Without --checkpoints: nnU-Net's planner with a fixed transpose per "
        "view writes nnUNetPlans_<view> (nnUNetPlans_multiview_<view> with --architecture multiview), each "
        "with only a 2d configuration, and nnU-Net's preprocessor prepares it. With --checkpoints (one per "
        "view, from the source's view plans): plan-from-checkpoint plans the target once per checkpoint as "
        "nnUNetPlans_pretrained_<view>, keeping each checkpoint's transpose. Views are array axes of nnU-Net's "
        "reader: axial slices along axis 0 (z of an axial CT), coronal along 1, sagittal along 2.",
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name (in nnUNet_raw)")
    p.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS),
                   help="views to plan (default: all three)")
    p.add_argument("--architecture", choices=ARCHITECTURES, default="unet",
                   help="unet: nnU-Net's 2-D PlainConvUNet (default); multiview: the SAH laboratory's Multiview "
                   "network (nnunet_peft.architectures.multiview), named in the plans so nnUNetv2_train and "
                   "nnUNetv2_predict build it with any trainer")
    p.add_argument("--target-spacing", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="overrides nnU-Net's target spacing (array order, mm), e.g. to resample thick slices "
                   "finer for the coronal and sagittal views (default: nnU-Net's own choice; docs/multiview.md, "
                   "'Thick slices')")
    p.add_argument("--checkpoints", nargs="+", metavar="CKPT",
                   help="plan a target from source checkpoints, one per view (their view is read from their plans)")
    p.add_argument("--plans-prefix", default=PRETRAINED_PREFIX,
                   help=f"with --checkpoints: plans are named PREFIX_<view> (default {PRETRAINED_PREFIX})")
    p.add_argument("--intensity-properties", choices=("source", "target"), default="source",
                   help="with --checkpoints: as for plan-from-checkpoint")
    p.add_argument("--overwrite", action="store_true", help="with --checkpoints: as for plan-from-checkpoint")
    p.add_argument("-np", "--num-processes", type=int, default=2,
                   help="processes for fingerprint extraction and preprocessing (default: 2)")
    p.set_defaults(func=_run)
