"""The staging folder plan-from-checkpoint and plan-views write through (nnunet_peft/planning/staging.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nnunet_peft.planning import from_checkpoint as pfc
from nnunet_peft.planning.staging import move_into_place, nnunet_folder, staged_preprocessing
from nnunet_peft.views.plan_views import plan_views


def test_the_staging_folder_is_where_nnunet_writes_and_is_removed_after_an_error(tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    (pre / "Dataset902_Tgt").mkdir(parents=True)
    (pre / "Dataset902_Tgt" / "older.json").write_text("{}")
    with pytest.raises(RuntimeError, match="step failed"):
        with staged_preprocessing(raw, pre, "Dataset902_Tgt", "plan-views") as (staged, env):
            root = staged.parent
            assert staged.is_dir() and staged.name == "Dataset902_Tgt" and root.parent == pre
            assert root.name.startswith(".plan-views-")
            assert env["nnUNet_raw"] == str(raw) and env["nnUNet_preprocessed"] == str(root)
            assert env["PATH"] == os.environ["PATH"]  # the rest of the environment is kept
            (staged / "half_written.npz").write_bytes(b"x")
            raise RuntimeError("step failed")
    assert sorted(p.name for p in pre.rglob("*")) == ["Dataset902_Tgt", "older.json"]


def test_staged_outputs_move_into_place_merging_the_shared_labels(tmp_path):
    staged, destination = tmp_path / "staged", tmp_path / "pre" / "Dataset902_Tgt"
    (staged / "gt_segmentations").mkdir(parents=True)
    (staged / "gt_segmentations" / "case_1.nii.gz").write_text("new")
    (staged / "plans.json").write_text("{}")
    (staged / "nnUNetPlans_3d_fullres").mkdir()
    (destination / "gt_segmentations").mkdir(parents=True)
    (destination / "gt_segmentations" / "case_0.nii.gz").write_text("old")
    move_into_place(staged, destination, "plans.json")
    assert sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*")) == [
        "gt_segmentations", "gt_segmentations/case_0.nii.gz", "gt_segmentations/case_1.nii.gz",
        "nnUNetPlans_3d_fullres", "plans.json"]


def test_an_unset_nnunet_folder_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ValueError, match="nnUNet_raw is not set"):
        nnunet_folder(None, "nnUNet_raw")
    assert nnunet_folder(tmp_path / "x" / ".." / "raw", "nnUNet_raw") == (tmp_path / "raw").resolve()


def test_a_failed_view_planning_leaves_nnunet_preprocessed_as_it_was(tmp_path, monkeypatch):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    (raw / "Dataset903_Views").mkdir(parents=True)
    seen = {}

    def failing(entry_point, command_name, args, env, log):
        seen["preprocessed"] = env["nnUNet_preprocessed"]
        (Path(env["nnUNet_preprocessed"]) / "Dataset903_Views" / "dataset_fingerprint.json").write_text("{}")
        raise pfc.NnUNetStepFailed(f"{command_name} failed")

    monkeypatch.setattr(pfc, "_run_nnunet", failing)
    with pytest.raises(pfc.NnUNetStepFailed):
        plan_views(903, views=["axial"], raw_folder=raw, preprocessed_folder=pre, log=lambda _: None)
    assert seen["preprocessed"].startswith(str(pre.resolve() / ".plan-views-"))
    assert list(pre.iterdir()) == []
