"""`harp`: EADC-ADNI harmonised hippocampal protocol (HarP) — images (NIfTI or MINC) with the left
and right hippocampus in separate label files ``<image name>_L`` / ``<image name>_R``, anywhere
under INPUT. The label files' values may be odd floats (1 stored as 0.99999994): values within
1e-3 of an integer are rounded, and any positive value marks the structure."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Case, Discovery, LabelSource, Problem
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.formats.options import add_sides_option, hippocampus_labels, side_label
from nnunet_peft.dataset_conversion.imageio import ImageSource
from nnunet_peft.dataset_conversion.labels import LabelMapping
from nnunet_peft.dataset_conversion.pairing import index_by_role, list_images

_ROLE = re.compile(r"(?P<id>.+?)(?:_(?P<role>[LR]))?")


@dataclass(frozen=True)
class Harp(Layout):
    sides: str = "separate"

    name = "harp"
    summary = "EADC-ADNI HarP: NIfTI/MINC images with separate NAME_L / NAME_R hippocampus label files"
    default_dataset_name = "HarP"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_sides_option(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Harp:
        return cls(args.sides)

    def discover(self, root: Path) -> Discovery:
        by_kind, problems = index_by_role(list_images(root, recursive=True), _ROLE,
                                          {"L": "left label", "R": "right label", "": "image"})
        found = Discovery(problems=problems)
        images, left, right = by_kind["image"], by_kind["left label"], by_kind["right label"]
        for case_id in sorted(left.keys() | right.keys()):
            parts = []
            for side, files in (("L", left), ("R", right)):
                if case_id not in files:
                    other = (right if side == "L" else left)[case_id][0]
                    found.problems.append(Problem(f"has no {'left' if side == 'L' else 'right'} label file "
                                                  f"({case_id}_{side}.*); add it, or remove the other side's file",
                                                  case=case_id, path=other))
                    continue
                mapping = LabelMapping.parse(f">0->{side_label(side, self.sides)}")
                parts.append(LabelSource(files[case_id][0], mapping))
            if case_id not in images:
                label_file = (left.get(case_id) or right[case_id])[0]
                found.problems.append(Problem(f"label files have no image named {case_id} (NIfTI or MINC); add "
                                              f"the image or remove the labels", case=case_id, path=label_file))
            elif len(parts) == 2:
                found.cases.append(Case(case_id, (ImageSource(images[case_id][0]),), tuple(parts)))
        for case_id in sorted(images.keys() - left.keys() - right.keys()):
            found.problems.append(Problem(f"image has no label files ({case_id}_L / {case_id}_R); add them or "
                                          f"remove the image", case=case_id, path=images[case_id][0]))
        return found

    def channel_names(self) -> dict[int, str]:
        return {0: "T1"}

    def labels(self) -> dict[str, LabelValue] | None:
        return hippocampus_labels(self.sides)

    def dataset_json_extras(self) -> dict[str, object]:
        return {"reference": "http://www.hippocampal-protocol.net"}
