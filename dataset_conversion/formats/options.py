"""Options and label schemes that several layouts share."""
from __future__ import annotations

import argparse
import re

from nnunet_peft.dataset_conversion.labels import LabelMapping

SIDES = ("separate", "merged")


def add_label_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", metavar="MAPPING", type=LabelMapping.parse, default=LabelMapping(),
                        help="remap mask values: rules SOURCE->VALUE separated by ';' or ',', first match wins; "
                             "a source is a value, a comparison or '*', e.g. '1,2->1', '>0->1', '4->1;*->0'. "
                             "Unmatched non-zero values are an error. Default: keep values as they are")
    parser.add_argument("--label-names", metavar="NAMES", type=_names,
                        help="comma-separated names of labels 1, 2, ... for dataset.json (default label_1, ...)")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"label names {text!r} contain an empty name; write e.g. 'sah' or 'left,right'")
    if len(set(names)) != len(names) or "background" in names:
        raise argparse.ArgumentTypeError(f"label names {text!r} must be unique and not 'background'")
    return names


def declared_labels(mapping: LabelMapping, names: list[str] | None) -> dict[str, int] | None:
    """dataset.json labels from --labels/--label-names; None lets the pipeline infer them from the masks."""
    targets = [t for t in mapping.targets if t > 0]
    if targets and targets != list(range(1, len(targets) + 1)):
        raise ValueError(f"--labels '{mapping}' maps to {targets}, but nnU-Net needs consecutive labels 1, 2, ...; "
                         f"renumber the targets")
    if names is None:
        return {"background": 0} | {f"label_{t}": t for t in targets} if targets else None
    if targets and len(names) != len(targets):
        raise ValueError(f"--label-names gives {len(names)} names but --labels '{mapping}' produces "
                         f"{len(targets)} labels; give one name per label")
    return {"background": 0} | {name: i for i, name in enumerate(names, 1)}


def add_sides_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--sides", choices=SIDES, default="separate",
                        help=help or "hippocampus labels: 'separate' writes left=1 and right=2, 'merged' writes "
                                     "both as 1 (default: separate)")


def hippocampus_labels(sides: str) -> dict[str, int]:
    if sides not in SIDES:
        raise ValueError(f"sides must be one of {SIDES}, got {sides!r}")
    return {"background": 0, "hippocampus": 1} if sides == "merged" else {"background": 0, "left": 1, "right": 2}


def side_label(side: str, sides: str) -> int:
    """Output value of the left ('L') or right ('R') hippocampus."""
    return 1 if sides == "merged" or side.upper() == "L" else 2


def dataset_name_from_folder(folder_name: str) -> str:
    """A valid nnU-Net dataset name made from a folder name ('Task04_Hippocampus' -> 'Hippocampus')."""
    name = re.sub(r"^(Task|Dataset)\d+_", "", folder_name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.-") or "Converted"
