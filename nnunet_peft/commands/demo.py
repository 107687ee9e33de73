"""`nnunet-peft demo`: the whole workflow on synthetic head CT, on a machine with no data."""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_peft.demo.pipeline import DEFAULT_WORKDIR, METHODS, DemoSettings, run_demo


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    return DemoSettings(workdir=Path(args.workdir), quick=args.quick, device=args.device,
                        num_processes=args.num_processes, base_features=args.base_features, seed=args.seed,
                        methods=tuple(args.methods))


def _run(args: argparse.Namespace) -> int:
    # a failed step raises DemoStepFailed, which nnunet_peft.cli.main reports with its advice (exit status 1)
    run_demo(settings_from_args(args))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole workflow on synthetic head CT (no data or GPU needed)",
        description="Generate synthetic head CT with traumatic haemorrhages (source) and subarachnoid "
        "haemorrhage (target), pretrain a stock nnU-Net on the source, plan the target from that "
        "checkpoint, fine-tune with CPLoRA, LoRAC, DoRAC and full fine-tuning, serve the adapters and the "
        "base's own task from the one base with `nnunet-peft predict --base`, and print each model's Dice on "
        "held-out target cases and on held-out source cases (the base's task; no fine-tuning is the base), "
        "trainable parameters, adapter size and training time. "
        "Everything stays in one work folder; rerunning skips finished steps.",
    )
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                   help=f"folder for data, models, logs and results (default: ./{DEFAULT_WORKDIR})")
    p.add_argument("--quick", action="store_true",
                   help="much shorter training: checks the set-up only (on a CPU its pretraining is too short "
                        "to learn the bleeds, so Dice is 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train and predict (default: cuda when available)")
    p.add_argument("-np", "--num-processes", type=int, default=None,
                   help="processes for nnU-Net's planning and preprocessing (default: min(4, CPUs))")
    p.add_argument("--base-features", type=int, default=None,
                   help="width of the U-Net's first stage (default: 16 on CPU, nnU-Net's plan (32) on GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default: 0)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"methods to compare (default: all of {' '.join(METHODS)})")
    p.set_defaults(func=_run)
