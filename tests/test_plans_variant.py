"""Cheaper plans variants: the width and batch change, the preprocessed data are shared."""
from __future__ import annotations

import json

import pytest

from nnunet_peft.planning.plans_variant import write_plans_variant

PLANS = {"plans_name": "nnUNetPlans", "configurations": {"3d_fullres": {
    "data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 6,
    "architecture": {"arch_kwargs": {"features_per_stage": [32, 64, 128, 256, 320]}}}}}


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(PLANS))
    return tmp_path


def test_width_is_scaled_and_the_data_kept(folder):
    path = write_plans_variant(folder, "nnUNetPlans_demo16", "3d_fullres", base_features=16)
    narrow = json.loads(path.read_text(encoding="utf-8"))
    assert path.name == "nnUNetPlans_demo16.json" and narrow["plans_name"] == "nnUNetPlans_demo16"
    config = narrow["configurations"]["3d_fullres"]
    assert config["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64, 128, 160]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres" and config["batch_size"] == 6
    assert json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8")) == PLANS  # nnU-Net's own plans untouched
    assert sorted(p.name for p in folder.iterdir()) == ["nnUNetPlans.json", "nnUNetPlans_demo16.json"]


def test_batch_size_alone(folder):
    config = json.loads(write_plans_variant(folder, "nnUNetPlans_b2", "3d_fullres", batch_size=2).read_text(encoding="utf-8"))
    assert config["configurations"]["3d_fullres"]["batch_size"] == 2
    assert config["configurations"]["3d_fullres"]["architecture"] == PLANS["configurations"]["3d_fullres"]["architecture"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(configuration="2d"), "no configuration '2d'"),
    (dict(base_features=0), "base_features"),
    (dict(batch_size=0), "batch_size"),
    (dict(source_plans="nnUNetResEncUNetMPlans"), "nnUNetv2_plan_and_preprocess"),
])
def test_bad_requests_name_what_to_do(folder, kwargs, message):
    args = dict(configuration="3d_fullres") | kwargs
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        write_plans_variant(folder, "x", **args)
    assert not (folder / "x.json").exists()
