"""`lpba40`: LONI Probabilistic Brain Atlas (LPBA40) — ``SNN.<space>.mri`` (or ``...skullstripped``)
images and ``SNN.<space>...label`` labels anywhere under INPUT (e.g. in ``images/`` and ``labels/``),
either NIfTI as distributed for the delineation space (``S01.delineation.skullstripped.nii.gz``,
``S01.delineation.structure.label.nii.gz``) or Analyze ``.img/.hdr`` pairs (stored 4-D with one volume).

--structures picks LONI structures by name or code (default: hippocampus, 165 left / 166 right); each
becomes one label, in the order given, and every other structure becomes background. A name without
a side means both sides: --sides separate gives it two labels (left, then right), --sides merged one.
With a single two-sided structure the labels are named left/right (as `harp` names them).

--split-sides makes one case per side and subject (S05L, S05R), each holding only that side's
structures; it needs --crop-margin, and the folds (--folds) then keep a subject's sides together.

--crop-around crops around other structures than the labelled ones: a base dataset of the structures
around the hippocampus, cropped around the hippocampus it does not label, sees exactly the crops of a
target dataset that labels the hippocampus too."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Case, Discovery, LabelSource
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.formats.options import SIDES, add_sides_option
from nnunet_peft.dataset_conversion.labels import LabelMapping
from nnunet_peft.dataset_conversion.pairing import index_by_role, list_images, pair_cases

# S01.native.mri, S01.delineation.skullstripped -> image; S01.native.label, S01.delineation.structure.label -> label
_ROLE = re.compile(r"(?P<id>[^.]+)\..*?(?P<role>mri|skullstripped|label)")
_EXTENSIONS = (".hdr", ".nii", ".nii.gz")  # Analyze as first shipped, NIfTI as now distributed

# LONI codes of the two-sided structures: the left one is odd, the right one the next even code
_LEFT_CODES: dict[str, int] = {
    "superior_frontal_gyrus": 21, "middle_frontal_gyrus": 23, "inferior_frontal_gyrus": 25,
    "precentral_gyrus": 27, "middle_orbitofrontal_gyrus": 29, "lateral_orbitofrontal_gyrus": 31,
    "gyrus_rectus": 33, "postcentral_gyrus": 41, "superior_parietal_gyrus": 43, "supramarginal_gyrus": 45,
    "angular_gyrus": 47, "precuneus": 49, "superior_occipital_gyrus": 61, "middle_occipital_gyrus": 63,
    "inferior_occipital_gyrus": 65, "cuneus": 67, "superior_temporal_gyrus": 81, "middle_temporal_gyrus": 83,
    "inferior_temporal_gyrus": 85, "parahippocampal_gyrus": 87, "lingual_gyrus": 89, "fusiform_gyrus": 91,
    "insular_cortex": 101, "cingulate_gyrus": 121, "caudate": 161, "putamen": 163, "hippocampus": 165,
}
_MIDLINE_CODES: dict[str, int] = {"cerebellum": 181, "brainstem": 182}

# code -> name of LPBA40's 56 structures
STRUCTURES: dict[int, str] = dict(sorted(
    [(code, f"left_{name}") for name, code in _LEFT_CODES.items()]
    + [(code + 1, f"right_{name}") for name, code in _LEFT_CODES.items()]
    + [(code, name) for name, code in _MIDLINE_CODES.items()]))


@dataclass(frozen=True)
class Structure:
    """One requested structure: its name and its LONI code per side ('L', 'R'; '' for a midline one)."""

    name: str
    codes: tuple[tuple[str, int], ...]

    @property
    def bilateral(self) -> bool:
        return len(self.codes) == 2


def _lookup() -> dict[str, Structure]:
    table: dict[str, Structure] = {}
    for name, code in _LEFT_CODES.items():
        both = Structure(name, (("L", code), ("R", code + 1)))
        left, right = Structure(f"left_{name}", (("L", code),)), Structure(f"right_{name}", (("R", code + 1),))
        # "superior_frontal" is as clear as "superior_frontal_gyrus"; both spellings are accepted
        for short in {name, name.removesuffix("_gyrus")}:
            table |= {short: both, f"left_{short}": left, f"right_{short}": right}
        table |= {str(code): left, str(code + 1): right}
    for name, code in _MIDLINE_CODES.items():
        table |= {name: Structure(name, (("", code),)), str(code): Structure(name, (("", code),))}
    return table


_BY_NAME = _lookup()
VALID_NAMES = ", ".join([*_LEFT_CODES, *_MIDLINE_CODES])


def parse_structures(text: str) -> tuple[Structure, ...]:
    """``--structures``: comma-separated LONI names or codes, e.g. 'hippocampus', 'left_caudate,163,164'."""
    selected: list[Structure] = []
    claimed: dict[int, str] = {}
    for raw in text.split(","):
        token = re.sub(r"[\s-]+", "_", raw.strip().lower())
        if token not in _BY_NAME:
            raise argparse.ArgumentTypeError(
                f"unknown LPBA40 structure {raw.strip()!r}; valid names are {VALID_NAMES} (a name without a "
                f"side means both sides; left_NAME / right_NAME one side), or LONI codes {min(STRUCTURES)}-"
                f"{max(STRUCTURES)} as in `nnunet-peft convert lpba40 -h`")
        structure = _BY_NAME[token]
        for _, code in structure.codes:
            if code in claimed:
                raise argparse.ArgumentTypeError(f"--structures '{text}' selects {STRUCTURES[code]} ({code}) twice "
                                                 f"(in {claimed[code]!r} and {raw.strip()!r}); name it once")
            claimed[code] = raw.strip()
        selected.append(structure)
    return tuple(selected)


def _structures_help() -> str:
    pairs = ", ".join(f"{code}/{code + 1} {name}" for name, code in _LEFT_CODES.items())
    return ("comma-separated LPBA40 structures, by name or LONI code; each becomes one label, in the order "
            "given, everything else background. A name without a side means both sides (two labels with "
            "--sides separate, one with merged); left_NAME, right_NAME or a code selects one side. Structures "
            f"(left/right code): {pairs}, 181 cerebellum, 182 brainstem. Default: hippocampus")


@dataclass(frozen=True)
class Lpba40(Layout):
    sides: str = "separate"
    structures: tuple[Structure, ...] = field(default_factory=lambda: parse_structures("hippocampus"))
    split_sides: bool = False
    crop_around: tuple[Structure, ...] = ()  # empty: crop around the selected structures

    name = "lpba40"
    summary = "LPBA40: NIfTI or Analyze images and labels; any of its 56 structures (default hippocampus)"
    default_dataset_name = "LPBA40"

    def __post_init__(self) -> None:
        if self.sides not in SIDES:
            raise ValueError(f"sides must be one of {SIDES}, got {self.sides!r}")
        if not self.structures:
            raise ValueError("select at least one structure with --structures")
        if self.split_sides and (midline := [s.name for s in self.structures if s.codes[0][0] == ""]):
            raise ValueError(f"--split-sides makes one case per side, but {', '.join(midline)} lie(s) on neither "
                             f"side; select left/right structures only, or drop --split-sides")
        if self.split_sides and (midline := [s.name for s in self.crop_around if s.codes[0][0] == ""]):
            raise ValueError(f"--split-sides crops each side around its own structures, but --crop-around's "
                             f"{', '.join(midline)} lie(s) on neither side; name left/right structures")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_sides_option(parser, "two-sided structures: 'separate' gives each side its own label (left, then "
                                 "right; hippocampus alone: left=1, right=2), 'merged' one label for both sides "
                                 "(default: separate)")
        parser.add_argument("--structures", metavar="SPEC", type=parse_structures, default="hippocampus",
                            help=_structures_help())
        parser.add_argument("--split-sides", action="store_true",
                            help="one case per side and subject (SNNL, SNNR), each holding only that side's "
                                 "structures; needs --crop-margin (two whole-head copies would be pointless), "
                                 "and --folds keeps a subject's sides in the same fold")
        parser.add_argument("--crop-around", metavar="SPEC", type=parse_structures,
                            help="with --crop-margin: crop around these structures (same syntax as --structures) "
                                 "instead of the selected ones; they need not be labelled, e.g. a base dataset of "
                                 "the structures around the hippocampus cropped around the hippocampus, to match "
                                 "a target dataset that labels it (default: the selected structures)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Lpba40:
        return cls(args.sides, args.structures, args.split_sides, args.crop_around or ())

    def _plan(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """Output labels 1, 2, ... in order: (name, the (side, LONI code)s that become it)."""
        plan: list[tuple[str, list[tuple[str, int]]]] = []
        for s in self.structures:
            if s.bilateral and self.sides == "separate":
                # one structure keeps the names HarP and earlier versions of this converter wrote
                prefix = "" if len(self.structures) == 1 else f"_{s.name}"
                plan += [(f"left{prefix}", [s.codes[0]]), (f"right{prefix}", [s.codes[1]])]
            else:
                plan.append((s.name, list(s.codes)))
        return plan

    def mapping(self, side: str | None = None) -> LabelMapping:
        """LONI codes -> labels; with ``side`` ('L' or 'R') only that side's structures, the rest background."""
        pairs = [([code for s, code in codes if side is None or s == side], value)
                 for value, (_, codes) in enumerate(self._plan(), 1)]
        return LabelMapping.from_pairs([(codes, value) for codes, value in pairs if codes], others_to_background=True)

    def discover(self, root: Path) -> Discovery:
        entries = [e for e in list_images(root, recursive=True) if e[1].name.lower().endswith(_EXTENSIONS)]
        by_kind, problems = index_by_role(entries, _ROLE, {"mri": "image", "skullstripped": "image",
                                                           "label": "label"})
        found = pair_cases(by_kind["image"], by_kind["label"], mapping=self.mapping())
        found.problems[:0] = problems
        if self.split_sides:
            found.cases = [split for case in found.cases for split in self._split(case)]
        elif self.crop_around:
            found.cases = [replace(case, crop_around=self._crop_sources(case, None)) for case in found.cases]
        return found

    def _crop_sources(self, case: Case, side: str | None) -> tuple[LabelSource, ...]:
        """``--crop-around``'s structures (of one side) as masks; empty: crop around the labels."""
        if not self.crop_around:
            return ()
        codes = [code for s in self.crop_around for where, code in s.codes if side is None or where == side]
        mapping = LabelMapping.from_pairs([(codes, 1)], others_to_background=True)
        return tuple(LabelSource(part.path, mapping) for part in case.labels)

    def _split(self, case: Case) -> list[Case]:
        sides = [side for side in ("L", "R") if any(s == side for st in self.structures for s, _ in st.codes)]
        return [Case(f"{case.case_id}{side}", case.images,
                     tuple(LabelSource(part.path, self.mapping(side)) for part in case.labels), group=case.case_id,
                     crop_around=self._crop_sources(case, side))
                for side in sides]

    def crop_required(self) -> str | None:
        if self.split_sides:
            return "--split-sides makes a left and a right case from each head, which uncropped would be two " \
                   "whole-head copies"
        if self.crop_around:
            return "--crop-around says what to crop around, but nothing is cropped"
        return None

    def channel_names(self) -> dict[int, str]:
        return {0: "T1"}

    def labels(self) -> dict[str, LabelValue] | None:
        return {"background": 0} | {name: value for value, (name, _) in enumerate(self._plan(), 1)}

    def dataset_json_extras(self) -> dict[str, object]:
        return {"reference": "https://www.loni.usc.edu/research/atlases",
                "loni_codes": {name: [code for _, code in codes] for name, codes in self._plan()}}
