"""`nnunet-peft convert FORMAT INPUT -d ID ...`: turn a dataset in its shipped layout into nnU-Net raw."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nnunet_peft.dataset_conversion.formats import FORMATS

_EPILOG = ("The dataset is built in a hidden temporary folder inside nnUNet_raw and moved into place only when "
           "every case passed its checks; all problems of a run are listed together.")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a dataset from its shipped layout into nnUNet_raw/DatasetNNN_Name",
        description="Convert a dataset from the layout it ships in into nnU-Net's raw format (imagesTr with "
                    "_0000 channels, labelsTr, imagesTs, dataset.json), checking geometry, labels and pairing "
                    "of every case. Run `nnunet-peft convert FORMAT -h` for a layout's own options.",
        epilog=_EPILOG)
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    common = _common_options()
    for name, layout in FORMATS.items():
        sub = formats.add_parser(name, parents=[common], help=layout.summary,
                                 description=sys.modules[layout.__module__].__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG)
        layout.add_arguments(sub.add_argument_group(f"{name} options"))
        sub.set_defaults(func=run, layout=layout)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("input", type=Path, metavar="INPUT", help="the dataset's folder, as downloaded/unpacked")
    common.add_argument("-d", "--dataset-id", type=int, required=True, metavar="ID",
                        help="nnU-Net dataset ID (1-999); the output is DatasetNNN_Name")
    common.add_argument("-n", "--name", help="dataset name (default: one per format, or the input folder's name)")
    common.add_argument("--raw", type=Path, help="nnUNet_raw folder (default: $nnUNet_raw)")
    common.add_argument("--preprocessed", type=Path,
                        help="nnUNet_preprocessed folder, for --folds (default: $nnUNet_preprocessed)")
    common.add_argument("--overwrite", action="store_true",
                        help="replace an existing DatasetNNN_Name (and splits_final.json)")
    common.add_argument("--folds", type=int, nargs="?", const=5, metavar="K",
                        help="write nnUNet_preprocessed/DatasetNNN_Name/splits_final.json with K folds "
                             "(K defaults to 5 when omitted)")
    common.add_argument("--stratify-volume", action="store_true",
                        help="balance the folds by total foreground volume per case (per subject where a "
                             "subject gives several cases, e.g. lpba40 --split-sides)")
    common.add_argument("--fix-geometry", action="store_true",
                        help="copy the image's spacing/origin/direction onto a mask of the same size whose "
                             "header differs (e.g. written by a tool that dropped the orientation)")
    common.add_argument("--geometry-rtol", type=float, default=1e-4, metavar="R",
                        help="relative tolerance for spacing and origin (default: 1e-4)")
    common.add_argument("--geometry-atol", type=float, default=1e-3, metavar="MM",
                        help="absolute tolerance for spacing and origin, in mm (default: 1e-3)")
    common.add_argument("--direction-atol", type=float, default=1e-4, metavar="A",
                        help="absolute tolerance for direction cosines (default: 1e-4)")
    common.add_argument("--crop-margin", type=float, metavar="MM",
                        help="crop each labelled case (image and mask) to the mask's foreground plus MM mm on "
                             "every side (ceil(MM / spacing) voxels per axis, clipped to the image), for "
                             "building benchmarks on small structures; at inference time there is no label "
                             "to crop around, so a model trained on crops needs inputs cropped the same way")
    common.add_argument("--max-cases", type=int, metavar="N",
                        help="convert only the first N cases (labelled first, by case id), for a quick trial")
    common.add_argument("-q", "--quiet", action="store_true", help="no per-case progress lines")
    return common


def _folder(explicit: Path | None, variable: str) -> Path | None:
    if explicit is not None:
        return explicit
    value = os.environ.get(variable)
    return Path(value) if value else None


def run(args: argparse.Namespace) -> int:
    # imported here: SimpleITK and nnU-Net are only paid for by the command that needs them
    from nnunet_peft.dataset_conversion.geometry import GeometryTolerance
    from nnunet_peft.dataset_conversion.pipeline import ConvertOptions, convert

    raw = _folder(args.raw, "nnUNet_raw")
    if raw is None:
        raise ValueError("no nnUNet_raw folder: pass --raw DIR or set the nnUNet_raw environment variable")
    layout = args.layout.from_args(args)
    options = ConvertOptions(
        dataset_id=args.dataset_id, dataset_name=args.name or layout.default_name(args.input), raw_dir=raw,
        preprocessed_dir=_folder(args.preprocessed, "nnUNet_preprocessed"),
        overwrite=args.overwrite, fix_geometry=args.fix_geometry,
        tolerance=GeometryTolerance(args.geometry_rtol, args.geometry_atol, args.direction_atol),
        folds=args.folds, stratify=args.stratify_volume, max_cases=args.max_cases,
        crop_margin=args.crop_margin)
    result = convert(layout, args.input, options, progress=None if args.quiet else sys.stderr)
    print(result.report())
    return 0
