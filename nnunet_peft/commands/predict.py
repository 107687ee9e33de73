"""`nnunet-peft predict`: every case with every adapter (and the base), the base loaded once."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    import torch

    from nnunet_peft.serving.predict import configure_threads, predict_many

    checkpoint = args.checkpoint
    folds = None if args.f is None else [str(f) for f in args.f]
    threads = torch.get_num_threads()
    configure_threads(args.device)
    try:
        summary = predict_many(
            Path(args.i), Path(args.o), Path(checkpoint), [Path(a) for a in args.a or []], base=args.base,
            combine=args.combine, folds=folds, device=args.device, use_mirroring=not args.disable_tta,
            step_size=args.step_size, save_probabilities=args.save_probabilities,
            allow_other_base=args.allow_other_base, overwrite=args.overwrite,
            shared_encoder=not args.no_shared_encoder,
            log=lambda text: print(f"nnunet-peft predict: {text}", file=sys.stderr))
    finally:
        torch.set_num_threads(threads)
    print(f"wrote {args.o}: {', '.join(summary['tasks'])}{' + combined' if args.combine else ''} "
          f"({len(summary['cases'])} cases; base and adapters loaded in {summary['load_s']:.1f} s, predicted in "
          f"{summary['predict_s']:.1f} s)")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="predict with several adapters (and the base) of one checkpoint, loading it once",
        description="Predict every case of IMAGES with every adapter (folders written by export-adapter), loading "
        "the base checkpoint once: OUT/<adapter folder name>/ per adapter, OUT/base/ with --base, each what "
        "apply-adapter + nnUNetv2_predict would write. nnU-Net's own predictor (sliding window, mirroring, "
        "resampling, export; the folds of an adapter ensembled as nnUNetv2_predict does). Every adapter must "
        "have been trained on this checkpoint (its fingerprint) with plans that preprocess as the base's.")
    p.add_argument("-i", required=True, metavar="IMAGES", help="input folder (CASE_XXXX.nii.gz, as nnUNetv2_predict)")
    p.add_argument("-o", required=True, metavar="OUT", help="output folder (one sub-folder per task)")
    p.add_argument("--checkpoint", required=True, metavar="BASE.pth", help="the pretrained checkpoint the adapters were trained from")
    p.add_argument("-a", nargs="+", metavar="ADAPTER", default=[], help="export-adapter folders")
    p.add_argument("--base", action="store_true", help="also predict the base's own task into OUT/base/")
    p.add_argument("--combine", action="store_true",
                   help="also write OUT/combined/: one label map per case holding every task's classes (labels.json "
                   "beside it); where tasks overlap, the class with the highest probability wins. Refused when two "
                   "tasks have a class of the same name")
    p.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                   help="folds of each adapter to ensemble (default: every fold_* it holds but fold_all, as "
                   "nnUNetPredictor finds them; nnUNetv2_predict's own default, 0 1 2 3 4, is the same set after "
                   "a five-fold cross-validation)")
    p.add_argument("-device", default="cuda", choices=("cpu", "cuda", "mps"), help="as nnUNetv2_predict (default cuda)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring (as nnUNetv2_predict)")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding-window step (as nnUNetv2_predict; default 0.5)")
    p.add_argument("--save_probabilities", action="store_true", help="also write .npz/.pkl (as nnUNetv2_predict)")
    p.add_argument("--allow-other-base", action="store_true",
                   help="load adapters trained on another base anyway (warns; as apply-adapter)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no_shared_encoder", action="store_true",
                   help="run the whole network for every task even where no adapter changes the first encoder "
                   "stages (by default those run once per patch for all tasks; the output is the same)")
    p.set_defaults(func=_run)
