"""`lpba40`: LONI Probabilistic Brain Atlas (LPBA40) — Analyze ``.img/.hdr`` pairs (stored 4-D
with one volume), ``SNN.<space>.mri.hdr`` (or ``...skullstripped.hdr``) images and
``SNN.<space>...label.hdr`` labels anywhere under INPUT; hippocampus is 165 (left) and 166 (right),
every other structure becomes background."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Discovery
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.formats.options import add_sides_option, hippocampus_labels, side_label
from nnunet_peft.dataset_conversion.labels import LabelMapping
from nnunet_peft.dataset_conversion.pairing import index_by_role, list_images, pair_cases

LEFT_HIPPOCAMPUS, RIGHT_HIPPOCAMPUS = 165, 166
# S01.native.mri, S01.delineation.skullstripped -> image; S01.native.label, S01.delineation.structure.label -> label
_ROLE = re.compile(r"(?P<id>[^.]+)\..*?(?P<role>mri|skullstripped|label)")


@dataclass(frozen=True)
class Lpba40(Layout):
    sides: str = "separate"

    name = "lpba40"
    summary = "LPBA40: Analyze .img/.hdr images and labels; hippocampus labels 165 (left) / 166 (right)"
    default_dataset_name = "LPBA40"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_sides_option(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Lpba40:
        return cls(args.sides)

    def mapping(self) -> LabelMapping:
        return LabelMapping.from_pairs([([LEFT_HIPPOCAMPUS], side_label("L", self.sides)),
                                        ([RIGHT_HIPPOCAMPUS], side_label("R", self.sides))],
                                       others_to_background=True)

    def discover(self, root: Path) -> Discovery:
        entries = [e for e in list_images(root, recursive=True) if e[1].suffix.lower() == ".hdr"]
        by_kind, problems = index_by_role(entries, _ROLE, {"mri": "image", "skullstripped": "image",
                                                           "label": "label"})
        found = pair_cases(by_kind["image"], by_kind["label"], mapping=self.mapping())
        found.problems[:0] = problems
        return found

    def channel_names(self) -> dict[int, str]:
        return {0: "T1"}

    def labels(self) -> dict[str, LabelValue] | None:
        return hippocampus_labels(self.sides)

    def dataset_json_extras(self) -> dict[str, object]:
        return {"reference": "https://www.loni.usc.edu/research/atlases"}
