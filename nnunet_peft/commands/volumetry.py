"""``nnunet-peft volumes`` and ``nnunet-peft classify``."""
from __future__ import annotations

import argparse
from pathlib import Path

_VOLUMES_EPILOG = (
    "Columns: case, <label>_ml per label (dataset.json's names; without --dataset-json every non-zero value, "
    "named by its value). --normalise image adds image_nonzero_ml, the non-zero region of the case's image "
    "channels CASE_XXXX<ending> in --reference-dir with holes filled (nnU-Net's crop-to-nonzero mask: the brain "
    "of skull-stripped MRI; for CT it is the whole field of view); --normalise mask adds icv_ml, the non-zero "
    "voxels of the same-named mask in --reference-dir (e.g. an intracranial mask). Either adds "
    "<label>_fraction = <label>_ml / reference. Volumes are the benchmark's: voxel count x voxel volume.")

_CLASSIFY_EPILOG = (
    "Ids: the volumes table's case column (--case-column, default case) is matched to the metadata's subject "
    "column (--id-column, default subject) as text. --subject-pattern REGEX turns a case id into a subject id: "
    "its group 'subject' (or first group) is the subject, an optional group 'part' keeps several cases of one "
    "subject as separate features, e.g. '(?P<subject>S\\d+)(?P<part>[LR])' for S05L/S05R, 'hippocampus_(\\d+)' for "
    "hippocampus_001 -> 001. Features: every numeric column of the volumes table (or --features) plus "
    "--covariates from the metadata; a covariate that is not all numbers is one-hot encoded. Subjects lacking "
    "metadata or volumes are listed (printed, metrics.json, excluded_subjects.csv), never used. Output in -o: "
    "metrics.json (accuracy, balanced_accuracy, auc, confusion_matrix, features, ...), predictions.csv "
    "(out-of-fold), confusion_matrix.csv/.png, roc.png, feature_weights.csv (the model refitted on all subjects).")


def _volumes(args: argparse.Namespace) -> int:
    from nnunet_peft.volumetry.volumes import read_dataset_labels, volume_table, write_volume_table

    labels, file_ending = None, args.file_ending
    if args.dataset_json is not None:
        labels, dataset_ending = read_dataset_labels(args.dataset_json)
        file_ending = file_ending or dataset_ending
    if (args.normalise is None) != (args.reference_dir is None):
        raise ValueError("--normalise and --reference-dir go together: --normalise image|mask --reference-dir DIR")
    if Path(args.o).exists() and not args.overwrite:  # before reading every case, not after
        raise FileExistsError(f"{args.o} exists; choose another output file or pass --overwrite")
    table = volume_table(args.seg_dir, labels, file_ending, args.normalise, args.reference_dir, args.num_processes)
    out = write_volume_table(table, args.o, args.overwrite)
    print(f"wrote {out}: {len(table)} cases, columns {', '.join(table.columns[1:])}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    from nnunet_peft.volumetry.diagnosis import classify, format_summary

    metrics = classify(args.volumes, args.metadata, args.target, args.o, id_column=args.id_column,
                       case_column=args.case_column, subject_pattern=args.subject_pattern,
                       covariates=args.covariates, features=args.features, classes=args.classes, folds=args.folds,
                       seed=args.seed, model=args.model, overwrite=args.overwrite)
    print(format_summary(metrics, args.o))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "volumes", help="per-case, per-label volumes in mL from a folder of segmentations",
        description="Write a CSV of the volume (mL) of every label in every segmentation of SEG_DIR (NIfTI, NRRD, "
        "MHA, GIPL, or TIFF with nnU-Net's .json spacing file; 3-D only), optionally with a reference volume "
        "for normalisation.", epilog=_VOLUMES_EPILOG)
    p.add_argument("seg_dir", metavar="SEG_DIR", help="a folder of segmentations, e.g. nnUNetv2_predict's output "
                   "or a labelsTr folder")
    p.add_argument("-o", required=True, metavar="VOLUMES.csv")
    p.add_argument("--dataset-json", metavar="DATASET_JSON",
                   help="label names (and regions) and the file ending from this dataset.json")
    p.add_argument("--file-ending", metavar="ENDING",
                   help="e.g. .nii.gz (default: dataset.json's, else the one segmentation format in SEG_DIR)")
    p.add_argument("--normalise", choices=("image", "mask"),
                   help="add a reference volume: 'image' the images' non-zero region, 'mask' a mask's volume")
    p.add_argument("--reference-dir", metavar="DIR",
                   help="with --normalise: the images (CASE_0000<ending>, ...) or masks (CASE<ending>)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="cases read in parallel (default 1)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_volumes)

    p = subparsers.add_parser(
        "classify", help="cross-validated diagnosis from a volumes table and subject metadata",
        description="Join VOLUMES.csv (nnunet-peft volumes) with a metadata CSV by subject id and cross-validate a "
        "scikit-learn classifier for --target (standardised features, one-hot categorical covariates, logistic "
        "regression by default; stratified k-fold, seeded). Prints and writes accuracy, balanced accuracy, AUC "
        "(binary: of the last class of --classes; more classes: one-vs-rest macro average), the confusion "
        "matrix, a ROC and a confusion-matrix plot, and the features used.", epilog=_CLASSIFY_EPILOG)
    p.add_argument("volumes", metavar="VOLUMES.csv")
    p.add_argument("--metadata", required=True, metavar="META.csv",
                   help="one row per subject: subject id, target, covariates")
    p.add_argument("--target", required=True, metavar="COLUMN", help="the metadata column to predict, e.g. diagnosis")
    p.add_argument("-o", required=True, metavar="DIR")
    p.add_argument("--id-column", default="subject", metavar="COLUMN",
                   help="the metadata's subject id column (default: subject)")
    p.add_argument("--case-column", default="case", metavar="COLUMN",
                   help="the volumes table's case id column (default: case)")
    p.add_argument("--subject-pattern", metavar="REGEX",
                   help="how a case id names its subject (default: the case id is the subject id); see below")
    p.add_argument("--covariates", nargs="+", default=[], metavar="COLUMN",
                   help="metadata columns added as features, e.g. age sex")
    p.add_argument("--features", nargs="+", metavar="COLUMN",
                   help="volume table columns to use (default: every numeric column but the case id)")
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="the target values to classify, in order; others are left out (listed), e.g. CN AD. "
                   "Binary: the last one is the positive class of the ROC (default: all values, sorted)")
    p.add_argument("--model", choices=("logistic", "random-forest"), default="logistic")
    p.add_argument("--folds", type=int, default=5, help="stratified cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment and the model (default 0)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_classify)
