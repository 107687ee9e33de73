"""The benchmark's old-task check: shared classes, label values turned back into the checkpoint's, the table."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_peft.evaluation.old_task import BASE, score_folder, shared_classes, summary_table
from nnunet_peft.class_channel_mapping import parse_label_map

SOURCE = {"labels": {"background": 0, "liver": 1, "spleen": 2}}
TARGET = {"labels": {"background": 0, "spleen": 1, "lesion": 2, "liver": 3}}


def test_shared_classes_pair_values_by_name_and_map():
    assert shared_classes(SOURCE, TARGET) == [("spleen", 2, 1), ("liver", 1, 3)]
    renamed = {"labels": {"background": 0, "organ": 1}}
    assert shared_classes(SOURCE, renamed, parse_label_map("organ=spleen")) == [("organ", 2, 1)]
    with pytest.raises(ValueError, match="shares no foreground class"):
        shared_classes(SOURCE, {"labels": {"background": 0, "a": 1, "b": 2, "c": 3}})


def write(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_fine_tuned_predictions_are_scored_in_the_checkpoints_label_values(tmp_path):
    ref = np.zeros((4, 4, 4))
    ref[0] = 1  # liver
    ref[1] = 2  # spleen
    pred = np.zeros((4, 4, 4))
    pred[0] = 3  # liver in the target's values
    pred[1, :2] = 1  # half the spleen
    pred[2] = 2  # lesion: not a class of the old task
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    write(tmp_path / "pred" / "c1.nii.gz", pred)
    write(tmp_path / "ref" / "c1.nii.gz", ref)
    shared = shared_classes(SOURCE, TARGET)
    rows = score_folder(tmp_path / "pred", tmp_path / "ref", ["c1"], ".nii.gz", ".nii.gz", shared, "target")
    dice = {r["label"]: r["dice"] for r in rows}
    assert dice == {"spleen": pytest.approx(2 * 8 / (8 + 16)), "liver": 1.0}
    # the base predicts in the checkpoint's own values
    rows = score_folder(tmp_path / "ref", tmp_path / "ref", ["c1"], ".nii.gz", ".nii.gz", shared, "source")
    assert {r["label"]: r["dice"] for r in rows} == {"spleen": 1.0, "liver": 1.0}

    table = summary_table([{"method": BASE, "label": "liver", "dice": 0.9}, {"method": BASE, "label": "spleen", "dice": 0.8},
                           {"method": "CPLoRA", "label": "liver", "dice": 0.7},
                           {"method": "CPLoRA", "label": "spleen", "dice": 0.8}], ["liver", "spleen"])
    assert "| model | Dice liver | Dice spleen |" in table
    assert "| CPLoRA | 0.700 ± 0.000 (-0.200) | 0.800 ± 0.000 (+0.000) |" in table
