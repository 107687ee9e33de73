"""Transformer backbones through nnU-Net's own command line on tiny synthetic data, on CPU.

A UNETR pretrained from scratch (``nnUNetTrainerFinetune_unetr_scratch``) is adapted with LoRA-PT to
a target with one more class, resumed with ``--c`` and predicted with ``nnUNetv2_predict``; a
SwinUNETR is adapted with HyPS and predicted. The networks are the tiny sizes of test_backbones.py,
set through the plans (``backbone_kwargs``) as a user would set other sizes; the planned patch size
(16, 20, 20) is one neither backbone takes, so the trainers adjust it and prediction must find the
adjusted size in the model folder's plans.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from nnunet_tiny import make_dataset, nnunet_env, run, training_env
from test_backbones import TINY

pytestmark = pytest.mark.slow

PLANS = "nnUNetPlansTiny"
SCRATCH = "nnUNetTrainerFinetune_unetr_scratch_1ep_2it"
LORAPT = "nnUNetTrainerLoRAPT_unetr_r2_2ep_2it"
HYPS = "nnUNetTrainerHyPS_swinunetr_r2_1ep_2it"


def tiny_plans(preprocessed: Path, dataset: str) -> None:
    """nnUNetPlans with the tiny backbone sizes, under another plans name (same preprocessed data)."""
    plans = json.loads((preprocessed / dataset / "nnUNetPlans.json").read_text(encoding="utf-8"))
    plans["plans_name"] = PLANS
    plans["configurations"]["3d_fullres"]["backbone_kwargs"] = {t: kwargs for t, (_, kwargs) in TINY.items()}
    (preprocessed / dataset / f"{PLANS}.json").write_text(json.dumps(plans, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    env = nnunet_env(root)
    make_dataset(root / "raw", 41, "BbSource", 5, seed=0, label_names=["a"])
    target = make_dataset(root / "raw", 42, "BbTarget", 5, n_labels=2, seed=1, label_names=["a", "b"])
    (root / "test_images").mkdir()
    shutil.copy(target / "imagesTr" / "case000_0000.nii.gz", root / "test_images")
    run(["nnUNetv2_plan_and_preprocess", "-d", "41", "42", "-c", "3d_fullres", "-np", "1"], env)
    for dataset in ["Dataset041_BbSource", "Dataset042_BbTarget"]:
        tiny_plans(root / "preprocessed", dataset)
    return {"root": root, "env": env, "train_env": training_env(env)}


def model_folder(work, dataset: str, trainer: str) -> Path:
    return work["root"] / "results" / dataset / f"{trainer}__{PLANS}__3d_fullres"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


def predict(work, dataset: str, trainer: str, out: str) -> Path:
    run(["nnUNetv2_predict", "-i", str(work["root"] / "test_images"), "-o", str(work["root"] / out), "-d", dataset,
         "-c", "3d_fullres", "-p", PLANS, "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"],
        work["env"])
    return work["root"] / out


TRAIN = ["-p", PLANS, "-device", "cpu"]


def test_unetr_pretrains_from_scratch_with_the_adjusted_patch_size(work):
    run(["nnUNetv2_train", "41", "3d_fullres", "0", "-tr", SCRATCH, *TRAIN], work["train_env"])
    source = model_folder(work, "Dataset041_BbSource", SCRATCH)
    plans = json.loads((source / "plans.json").read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [16, 16, 16]  # (16, 20, 20) adjusted and recorded
    log = next((source / "fold_0").glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "is not one it takes" in log and "[16, 16, 16]" in log
    work["pretrained"] = source / "fold_0" / "checkpoint_final.pth"
    assert work["pretrained"].is_file()


def test_lora_pt_adapts_the_unetr_to_a_target_with_a_new_class(work):
    run(["nnUNetv2_train", "42", "3d_fullres", "0", "-tr", LORAPT, "-pretrained_weights", str(work["pretrained"]),
         *TRAIN], work["train_env"])
    fold = model_folder(work, "Dataset042_BbTarget", LORAPT) / "fold_0"
    trained, base = weights(fold / "checkpoint_final.pth"), weights(work["pretrained"])
    frozen = [k for k in trained if ".base_layer." in k]
    assert any(".attn.qkv.base_layer." in k for k in frozen)  # the ViT's Linear layers took adapters
    for key in frozen:  # the pretrained base is bit-identical after training
        assert torch.equal(trained[key], base[key.replace("base_layer.", "")]), key
    assert base["out.conv.conv.weight"].shape[0] == 2 and trained["out.conv.conv.weight"].shape[0] == 3
    report = json.loads((fold / "load_report.json").read_text(encoding="utf-8"))
    head = next(t for t in report["tensors"] if t["name"] == "out.conv.conv.weight")
    assert head["status"] == "mapped" and "b (new)" in head["reason"]


def test_lora_pt_resumes_with_continue(work):
    fold = model_folder(work, "Dataset042_BbTarget", LORAPT) / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["current_epoch"] = 1  # as if the run had stopped after its first epoch
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    proc = run(["nnUNetv2_train", "42", "3d_fullres", "0", "-tr", LORAPT, "--c", *TRAIN], work["train_env"])
    assert "Epoch 1" in proc.stdout and "Epoch 0" not in proc.stdout
    before, after = checkpoint["network_weights"], weights(fold / "checkpoint_final.pth")
    assert all(torch.equal(before[k], after[k]) for k in before if ".base_layer." in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("peft_groups."))


def test_lora_pt_unetr_predicts_from_its_model_folder(work):
    out = predict(work, "42", LORAPT, "pred_unetr")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case000.nii.gz"]


def test_swinunetr_with_hyps_trains_and_predicts(work):
    proc = run(["nnUNetv2_train", "42", "3d_fullres", "0", "-p", PLANS, "-tr", HYPS, "-device", "cpu"],
               work["train_env"])
    assert "adapts a randomly initialised network" in proc.stdout
    folder = model_folder(work, "Dataset042_BbTarget", HYPS)
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 64, 32]
    summary = json.loads((folder / "fold_0" / "peft_summary.json").read_text(encoding="utf-8"))
    assert summary["method"] == "HyPS" and 0 < summary["trainable_parameters"] < summary["total_parameters"]
    out = predict(work, "42", HYPS, "pred_swin")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case000.nii.gz"]
