"""`instance2022`: INSTANCE 2022 intracranial hemorrhage challenge — ``train_2/data/NNN.nii.gz``,
``train_2/label/NNN.nii.gz`` and an unlabelled ``evaluation/`` set (written to imagesTs)."""
from __future__ import annotations

from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Discovery
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.pairing import merge, pair_folders, unlabelled_folder


class Instance2022(Layout):
    name = "instance2022"
    summary = "INSTANCE 2022: train_2/data, train_2/label, evaluation/ (unlabelled -> imagesTs)"
    default_dataset_name = "INSTANCE2022"

    def discover(self, root: Path) -> Discovery:
        train = pair_folders(root / "train_2" / "data", root / "train_2" / "label")
        evaluation = root / "evaluation"
        # the evaluation images come either directly in evaluation/ or in evaluation/data/
        test = unlabelled_folder(evaluation, recursive=True) if evaluation.is_dir() else Discovery()
        return merge(train, test)

    def channel_names(self) -> dict[int, str]:
        return {0: "CT"}

    def labels(self) -> dict[str, LabelValue] | None:
        return {"background": 0, "hemorrhage": 1}

    def dataset_json_extras(self) -> dict[str, object]:
        return {"reference": "https://instance.grand-challenge.org/"}
