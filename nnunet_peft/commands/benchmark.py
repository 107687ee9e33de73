"""`nnunet-peft benchmark`: train every trainer on every fold with nnU-Net, then compare them."""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_peft.evaluation.benchmark import run_benchmark
from nnunet_peft.planning.from_checkpoint import DEFAULT_PLANS_NAME

DESCRIPTION = """\
Compare fine-tuning methods on one target dataset. Every trainer is trained on every fold with
nnU-Net's own nnUNetv2_train (plugin trainers nnUNetTrainer<Method>_... start from --pretrained;
nnU-Net's own trainers, e.g. nnUNetTrainer, train from scratch), runs that already finished are
skipped, interrupted ones continue from their latest checkpoint. Then the validation predictions
nnU-Net wrote (and, with --test-images/--test-labels, one prediction of the test set per fold) are
scored against the reference labels (raw predictions: no postprocessing, as nnU-Net's own
validation summary): Dice and HD95 per label, volumes, Dice by reference-volume
bin, volume agreement, a paired Wilcoxon test against the Finetune trainer, trainable
parameters, adapter size, time per epoch and GPU memory, and from nnU-Net's training log whether
each schedule converged (the epoch at which the moving-average pseudo-Dice reached 95% of its final
value). Output in --out/report: cases.csv (every per-case figure), methods.csv, volume_bins.csv,
costs.csv, convergence.csv, curves.csv (every epoch of every run), report.md and PNG plots.

Needs nnUNet_results (and nnUNet_preprocessed or nnUNet_raw for the reference labels) in the
environment, as nnU-Net does. nnUNet_extTrainer is set for the subprocesses.

Test scores are per fold: each fold's model predicts the test set on its own (nnUNetv2_predict
-f K), so the report shows the spread over folds. They are not the score of the fold ensemble that
nnU-Net users predict with (nnUNetv2_predict -f 0 1 2 3 4, usually a little better), and no
postprocessing is applied. For the ensemble's score: predict with all folds and score the folder
with nnUNetv2_evaluate_folder.

Default folds 0 1 2 3 4 (nnU-Net's five-fold split), default plans nnUNetPlans_pretrained (what
plan-from-checkpoint writes), default output $nnUNet_results/DATASET/peft_benchmark_PLANS_CONFIG.

For a cluster: --jobs-only prints one command per unfinished run; submit them, then run the same
command line with --collect-only to predict the test set and write the report."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark", help="train several trainers on all folds with nnU-Net and compare them",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="target dataset name or id, as for nnUNetv2_train")
    p.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS_NAME,
                   help=f"plans identifier (default: {DEFAULT_PLANS_NAME}, what plan-from-checkpoint writes)")
    p.add_argument("--trainers", "-tr", nargs="+", required=True, metavar="NAME",
                   help="trainer names, e.g. nnUNetTrainerFinetune nnUNetTrainerCPLoRA_dec_r64_a64 nnUNetTrainer. "
                   "nnU-Net's own trainers (nnUNetTrainer, nnUNetTrainer_250epochs, ...) get no -pretrained_weights: "
                   "they train from scratch (the baseline without pretraining), as does nnUNetTrainerFinetune_scratch")
    p.add_argument("--pretrained", type=Path, nargs="+", metavar="CKPT",
                   help="pretrained checkpoint given to plugin trainers as -pretrained_weights; with --views one "
                   "per view, in the same order")
    p.add_argument("--views", nargs="+", metavar="PLANS",
                   help="tri-planar 2-D: each trainer runs on each of these plans identifiers (one per view, e.g. "
                   "nnUNetPlans_pretrained_axial nnUNetPlans_pretrained_coronal nnUNetPlans_pretrained_sagittal, "
                   "from plan-views) instead of -p, writing probabilities; the report shows each view as "
                   "'METHOD [view]' and the average of the views' probabilities (nnU-Net's ensembling) as "
                   "'METHOD [ensemble]'. Paired tests default to the reference trainer's ensemble, else the first "
                   "trainer's, so each view is tested against its ensemble"),
    p.add_argument("--folds", "-f", nargs="+", default=["0", "1", "2", "3", "4"],
                   help="folds to run (default: 0 1 2 3 4)")
    p.add_argument("--device", choices=("cuda", "cpu", "mps"),
                   help="passed to nnUNetv2_train/-predict as -device (nnU-Net's default: cuda)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--jobs-only", action="store_true",
                      help="print one nnUNetv2_train command per unfinished run and stop")
    mode.add_argument("--collect-only", action="store_true",
                      help="train nothing; evaluate the runs that finished and write the report")
    p.add_argument("--test-images", type=Path, metavar="DIR",
                   help="held-out images (nnU-Net input layout CASE_0000.nii.gz), predicted with each fold's model "
                   "separately (scores per fold, not the fold ensemble; not postprocessed)")
    p.add_argument("--test-labels", type=Path, metavar="DIR", help="their reference labels CASE.nii.gz")
    p.add_argument("--source-test-images", type=Path, metavar="DIR",
                   help="a test set of the --pretrained checkpoint's own (old) task, predicted with each model of "
                        "--test-folds and with the checkpoint itself, and scored on the classes the target shares "
                        "with it: what fine-tuning cost the old task (written to OUT/old_task)")
    p.add_argument("--source-test-labels", type=Path, metavar="DIR",
                   help="their reference labels, in the checkpoint's label values")
    p.add_argument("--test-folds", nargs="+", metavar="FOLD",
                   help="folds whose models predict the test set (default: every fold of --folds); e.g. 0, "
                        "when predicting the test set once per fold costs too much")
    p.add_argument("--disable-tta", action="store_true",
                   help="predict the test set without mirroring (nnUNetv2_predict --disable_tta): 8x fewer "
                        "forward passes in 3-D, worth it on a CPU. nnU-Net's own validation keeps mirroring")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (default: $nnUNet_results/DATASET/peft_benchmark_PLANS_CONFIG)")
    p.add_argument("--reference", metavar="NAME",
                   help="trainer the paired tests compare against (default: the Finetune trainer)")
    p.add_argument("--volume-bins", nargs="+", type=float, metavar="ML",
                   help="cut points in mL for Dice by reference volume, e.g. 5 15 30 "
                        "(default: terciles of the reference volumes)")
    p.add_argument("--num-processes", "-np", type=int, default=2, metavar="N",
                   help="processes for scoring cases, and nnUNetv2_predict's -npp/-nps (default: 2)")
    p.set_defaults(func=run_benchmark)
