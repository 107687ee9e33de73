"""`lorapt`: the processed layout of the LoRA-PT / tCURLoRA / HyPS code — ``subN/subN_img.nii.gz``
and ``subN/subN_mask.nii.gz``, with a list of subjects to leave out (as those papers did)."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Discovery, Problem
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.formats.options import add_label_options, declared_labels
from nnunet_peft.dataset_conversion.labels import LabelMapping
from nnunet_peft.dataset_conversion.pairing import index_by_role, list_images, pair_cases

_ROLE = re.compile(r"(?P<id>.+)_(?P<role>img|mask)")


def _subject_list(text: str) -> list[str]:
    return [s for s in re.split(r"[\s,;]+", text) if s and not s.startswith("#")]


@dataclass(frozen=True)
class LoraPt(Layout):
    exclude: tuple[str, ...] = ()
    mapping: LabelMapping = LabelMapping()
    label_names: tuple[str, ...] | None = None

    name = "lorapt"
    summary = "LoRA-PT / tCURLoRA / HyPS processed layout: subN/subN_img.nii.gz, subN/subN_mask.nii.gz"
    default_dataset_name = "LoRAPT"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--exclude", type=_subject_list, default=[], metavar="IDS",
                            help="subjects to leave out, comma-separated, e.g. 'sub3,sub17'")
        parser.add_argument("--exclude-file", type=Path, metavar="FILE",
                            help="file listing subjects to leave out (whitespace/comma separated, # comments)")
        add_label_options(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoraPt:
        exclude = list(args.exclude)
        if args.exclude_file is not None:
            try:
                text = args.exclude_file.read_text(encoding="utf-8")
            except OSError as e:
                raise FileNotFoundError(f"--exclude-file {args.exclude_file} cannot be read: {e.strerror}") from None
            exclude += _subject_list("\n".join(line.split("#")[0] for line in text.splitlines()))
        layout = cls(tuple(dict.fromkeys(exclude)), args.labels, tuple(args.label_names) if args.label_names else None)
        layout.labels()  # validate --labels against --label-names before reading any file
        return layout

    def discover(self, root: Path) -> Discovery:
        by_kind, problems = index_by_role(list_images(root, recursive=True), _ROLE, {"img": "image", "mask": "mask"})
        images, masks = by_kind["image"], by_kind["mask"]
        for subject in self.exclude:
            if subject not in images and subject not in masks:
                # a typo in the exclusion list would silently keep the subject it meant to drop
                problems.append(Problem(f"excluded subject {subject!r} does not exist under INPUT; check the "
                                        f"exclusion list", case=subject))
            images.pop(subject, None)
            masks.pop(subject, None)
        found = pair_cases(images, masks, mapping=self.mapping)
        found.problems[:0] = problems
        return found

    def channel_names(self) -> dict[int, str]:
        return {0: "T1"}

    def labels(self) -> dict[str, LabelValue] | None:
        return declared_labels(self.mapping, list(self.label_names) if self.label_names else None)
