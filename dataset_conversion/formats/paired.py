"""`paired`: institutional data, e.g. the SAH cohort — a folder of images and a folder of masks.

Images may be files (NIfTI, NRRD, MHA, Analyze, MINC) or one DICOM series per case folder; masks
are files. Images and masks are matched by the case id the two name patterns extract.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Discovery
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.formats.options import add_label_options, dataset_name_from_folder, declared_labels
from nnunet_peft.dataset_conversion.labels import LabelMapping
from nnunet_peft.dataset_conversion.pairing import (DEFAULT_IMAGE_PATTERN, DEFAULT_MASK_PATTERN,
                                                    compile_case_pattern, pair_folders)


@dataclass(frozen=True)
class Paired(Layout):
    images: str = "images"
    masks: str = "masks"
    image_pattern: re.Pattern[str] = re.compile(DEFAULT_IMAGE_PATTERN)
    mask_pattern: re.Pattern[str] = re.compile(DEFAULT_MASK_PATTERN)
    mapping: LabelMapping = LabelMapping()
    label_names: tuple[str, ...] | None = None
    channel_name: str = "image"
    unlabelled_as_test: bool = False

    name = "paired"
    summary = "a folder of images and a folder of masks matched by case id (NIfTI/NRRD/MHA/DICOM series)"
    default_dataset_name = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--images", default="images", metavar="DIR",
                            help="image folder, relative to INPUT or absolute (default: images); files or one "
                                 "DICOM series folder per case")
        parser.add_argument("--masks", default="masks", metavar="DIR",
                            help="mask folder, relative to INPUT or absolute (default: masks)")
        parser.add_argument("--image-pattern", default=DEFAULT_IMAGE_PATTERN, metavar="REGEX",
                            help="regular expression for an image's name without extension; group 'id' (or the "
                                 f"first group) is the case id (default: {DEFAULT_IMAGE_PATTERN!r})")
        parser.add_argument("--mask-pattern", default=DEFAULT_MASK_PATTERN, metavar="REGEX",
                            help=f"the same for masks (default: {DEFAULT_MASK_PATTERN!r}, which accepts "
                                 "CASE, CASE_mask, CASE_seg, CASE_label, CASE_gt)")
        add_label_options(parser)
        parser.add_argument("--channel-name", default="image",
                            help="nnU-Net channel name; use 'CT' for CT so that nnU-Net applies its CT "
                                 "normalisation (default: image, z-score normalisation)")
        parser.add_argument("--unlabelled-as-test", action="store_true",
                            help="write images without a mask to imagesTs instead of reporting them")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Paired:
        names = tuple(args.label_names) if args.label_names else None
        layout = cls(args.images, args.masks, compile_case_pattern(args.image_pattern, "--image-pattern"),
                     compile_case_pattern(args.mask_pattern, "--mask-pattern"), args.labels, names,
                     args.channel_name, args.unlabelled_as_test)
        layout.labels()  # validate --labels against --label-names now, before any file is read
        return layout

    def default_name(self, root: Path) -> str:
        return dataset_name_from_folder(root.resolve().name)

    def discover(self, root: Path) -> Discovery:
        return pair_folders(root / self.images, root / self.masks, image_pattern=self.image_pattern,
                            mask_pattern=self.mask_pattern, image_option="--image-pattern",
                            mask_option="--mask-pattern", mapping=self.mapping,
                            unlabelled_allowed=self.unlabelled_as_test, dicom_folders=True)

    def channel_names(self) -> dict[int, str]:
        return {0: self.channel_name}

    def labels(self) -> dict[str, LabelValue] | None:
        return declared_labels(self.mapping, list(self.label_names) if self.label_names else None)
