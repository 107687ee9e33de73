"""`msd`: a Medical Segmentation Decathlon task folder (Task04_Hippocampus and the others).

Multi-channel tasks (BrainTumour, Prostate) store each case as one 4-D file; its volumes become
nnU-Net's channels, as in nnU-Net's own convert_MSD_dataset. ``imagesTs/`` may be missing, and the
``._*`` files macOS adds to the archives are skipped.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Discovery, Problem
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.formats.options import dataset_name_from_folder
from nnunet_peft.dataset_conversion.pairing import merge, pair_folders, unlabelled_folder

_ANY_NAME = re.compile(r"(?P<id>.+)")


@dataclass
class Msd(Layout):
    name = "msd"
    summary = "Medical Segmentation Decathlon task: imagesTr, labelsTr, optional imagesTs, dataset.json"
    default_dataset_name = ""

    def __post_init__(self) -> None:
        self._meta: dict | None = None

    def _read_meta(self, root: Path) -> tuple[dict | None, Problem | None]:
        path = root / "dataset.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            modality, labels = meta["modality"], meta["labels"]
            channels = {int(k): str(v) for k, v in modality.items()}
            label_values = {str(v): int(k) for k, v in labels.items()}
        except FileNotFoundError:
            return None, Problem("Decathlon dataset.json not found; point INPUT at the task folder (the one "
                                 "holding imagesTr/, labelsTr/ and dataset.json)", path=path)
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            return None, Problem(f"is not a Decathlon dataset.json with 'modality' and 'labels' ({e}); restore "
                                 f"the task's original dataset.json", path=path)
        return {"channels": dict(sorted(channels.items())), "labels": dict(sorted(label_values.items(), key=lambda x: x[1])),
                "name": meta.get("name"), "reference": meta.get("reference"),
                "licence": meta.get("licence")}, None

    def default_name(self, root: Path) -> str:
        meta, _ = self._read_meta(root)
        return dataset_name_from_folder(root.resolve().name if not meta or not meta["name"] else meta["name"])

    def discover(self, root: Path) -> Discovery:
        meta, problem = self._read_meta(root)
        if meta is None:
            return Discovery(problems=[problem] if problem else [])
        self._meta = meta
        n = len(meta["channels"])
        train = pair_folders(root / "imagesTr", root / "labelsTr", image_pattern=_ANY_NAME, mask_pattern=_ANY_NAME,
                             channels=n)
        test = (unlabelled_folder(root / "imagesTs", _ANY_NAME, channels=n) if (root / "imagesTs").is_dir()
                else Discovery())
        return merge(train, test)

    def _loaded(self) -> dict:
        if self._meta is None:
            raise RuntimeError("discover() must run before the dataset description is asked for")
        return self._meta

    def channel_names(self) -> dict[int, str]:
        return self._loaded()["channels"]

    def labels(self) -> dict[str, LabelValue] | None:
        # None before a successful discover(): that run fails on its discovery problems anyway
        return self._meta["labels"] if self._meta else None

    def dataset_json_extras(self) -> dict[str, object]:
        meta = self._loaded()
        return {k: meta[k] for k in ("reference",) if meta.get(k)} | (
            {"license": meta["licence"]} if meta.get("licence") else {})
