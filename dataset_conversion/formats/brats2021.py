"""`brats2021`: BraTS 2021 as a pretraining source — ``BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``
(usually one folder per case). Channels, label values and regions follow nnU-Net's own
Dataset137_BraTS21 converter; cases without ``_seg`` (the validation set) go to imagesTs."""
from __future__ import annotations

import re
from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Case, Discovery, LabelSource, Problem
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.imageio import ImageSource
from nnunet_peft.dataset_conversion.labels import LabelMapping
from nnunet_peft.dataset_conversion.pairing import index_by_role, list_images

MODALITIES = ("t1", "t1ce", "t2", "flair")  # channel order of Dataset137
_ROLE = re.compile(r"(?P<id>BraTS2021_\d+)_(?P<role>t1|t1ce|t2|flair|seg)")
# BraTS: 1 necrotic core, 2 edema, 4 enhancing -> nnU-Net's consecutive 1 edema, 2 necrosis, 3 enhancing
MAPPING = LabelMapping.parse("2->1;1->2;4->3")


class Brats2021(Layout):
    name = "brats2021"
    summary = "BraTS 2021: BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz (as nnU-Net's Dataset137)"
    default_dataset_name = "BraTS2021"

    def discover(self, root: Path) -> Discovery:
        by_kind, problems = index_by_role(list_images(root, recursive=True), _ROLE,
                                          {m: m for m in (*MODALITIES, "seg")})
        found = Discovery(problems=problems)
        case_ids = set().union(*by_kind.values())
        for case_id in sorted(case_ids):
            missing = [m for m in MODALITIES if case_id not in by_kind[m]]
            if missing:
                some = next(files[case_id][0] for files in by_kind.values() if case_id in files)
                found.problems.append(Problem(f"has no {', '.join(missing)} image ({case_id}_{missing[0]}.nii.gz); "
                                              f"every case needs t1, t1ce, t2 and flair — restore the file or "
                                              f"remove the case", case=case_id, path=some.parent))
                continue
            images = tuple(ImageSource(by_kind[m][case_id][0]) for m in MODALITIES)
            seg = by_kind["seg"].get(case_id)
            found.cases.append(Case(case_id, images, (LabelSource(seg[0], MAPPING),) if seg else ()))
        return found

    def channel_names(self) -> dict[int, str]:
        return {0: "T1", 1: "T1ce", 2: "T2", 3: "Flair"}

    def labels(self) -> dict[str, LabelValue] | None:
        return {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}

    def regions_class_order(self) -> tuple[int, ...] | None:
        return (1, 2, 3)

    def value_names(self) -> dict[int, str]:
        return {1: "edema", 2: "necrosis / non-enhancing core", 3: "enhancing tumor"}

    def dataset_json_extras(self) -> dict[str, object]:
        return {"reference": "https://www.synapse.org/#!Synapse:syn25829067/wiki/610863"}
