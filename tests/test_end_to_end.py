"""The users' main path through nnU-Net's own entry points, on tiny synthetic data, on CPU.

A stock nnU-Net trainer (a plain subclass that only shortens the schedule) pretrains on a source
dataset; a trainer from the name grammar fine-tunes from its checkpoint on a target dataset; then
resume, prediction, merge (predicted by stock nnU-Net without the plugin), adapter export / apply,
and the NoFinetune baseline. The steps share one module-scoped work folder and run in order.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_tiny import make_dataset, nnunet_env, run, stock_trainer_folder, training_env

pytestmark = pytest.mark.slow

PEFT = "nnUNetTrainerCPLoRA_r4_2ep_3it"
STOCK = "nnUNetTrainerTinyStock"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    stock_dir = stock_trainer_folder(root, STOCK, epochs=1, iterations=3)
    env = nnunet_env(root)
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(stock_dir)])
    make_dataset(root / "raw", 21, "Source", 6, seed=0)
    target = make_dataset(root / "raw", 22, "Target", 6, seed=1)
    (root / "test_images").mkdir()
    for case in ["case000", "case001"]:
        shutil.copy(target / "imagesTr" / f"{case}_0000.nii.gz", root / "test_images")
    run(["nnUNetv2_plan_and_preprocess", "-d", "21", "22", "-c", "3d_fullres", "-np", "1"], env)
    train_env = training_env(env)
    run(["nnUNetv2_train", "21", "3d_fullres", "0", "-tr", STOCK, "-device", "cpu"], train_env)
    pretrained = root / "results" / "Dataset021_Source" / f"{STOCK}__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth"
    assert pretrained.is_file()
    return {"root": root, "env": env, "train_env": train_env, "pretrained": pretrained,
            "model": root / "results" / "Dataset022_Target" / f"{PEFT}__nnUNetPlans__3d_fullres"}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


def predict_folder(work, model_folder: Path, out: str, env=None, extra=()) -> Path:
    run(["nnUNetv2_predict_from_modelfolder", "-i", str(work["root"] / "test_images"), "-o", str(work["root"] / out),
         "-m", str(model_folder), "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", *extra], env or work["env"])
    return work["root"] / out


def labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def test_finetune_trains_adapters_and_keeps_the_base(work):
    proc = run(["nnUNetv2_train", "22", "3d_fullres", "0", "-tr", PEFT, "-device", "cpu",
                "-pretrained_weights", str(work["pretrained"])], work["train_env"])
    assert f"Using trainer '{PEFT}'" in proc.stdout
    fold = work["model"] / "fold_0"
    trained, source = weights(fold / "checkpoint_final.pth"), weights(work["pretrained"])
    base_keys = [k for k in trained if ".base_layer." in k]
    assert base_keys
    for key in base_keys:  # the pretrained base is bit-identical after training
        assert torch.equal(trained[key], source[key.replace("base_layer.", "")]), key
    for key in [k for k in trained if k.endswith(("cp_out", "cp_in"))]:
        assert trained[key].abs().sum() > 0, key  # cp_out starts at zero, cp_in moves once it has
    log = next(fold.glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert "trainable parameters per stage" in log and "bottleneck" in log
    assert "Segmentation heads kept" in log  # binary to binary: the pretrained head is reused
    # CP-LoRA's default forward_mode="auto": every layer shape timed once before the first step
    choice = log[log.index("forward mode per layer shape"):].splitlines()
    rows = [line for line in choice[2:] if line.strip() and line.split()[-1] in ("chain", "reconstruct", "projected")]
    assert rows and rows[0].startswith("encoder.stages.0")
    summary = (fold / "peft_summary.json").read_text(encoding="utf-8")
    assert '"method": "CPLoRA"' in summary
    assert (fold / "validation" / "summary.json").is_file()


def test_continue_resumes_adapters_and_optimizer(work):
    fold = work["model"] / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["current_epoch"] = 1  # as if the run had stopped after its first epoch
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    proc = run(["nnUNetv2_train", "22", "3d_fullres", "0", "-tr", PEFT, "-device", "cpu", "--c"], work["train_env"])
    assert "Epoch 1" in proc.stdout and "Epoch 0" not in proc.stdout
    resumed = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 2
    before, after = checkpoint["network_weights"], resumed["network_weights"]
    assert any(not torch.equal(before[k], after[k]) for k in before if ".cp_" in k)
    assert all(torch.equal(before[k], after[k]) for k in before if ".base_layer." in k)


def test_predict_merge_export_apply_give_the_same_labels(work):
    root, env = work["root"], work["env"]
    run(["nnUNetv2_predict", "-i", str(root / "test_images"), "-o", str(root / "pred"), "-d", "22", "-c", "3d_fullres",
         "-tr", PEFT, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--save_probabilities"], env)
    reference = labels(root / "pred")
    assert sorted(reference) == ["case000.nii.gz", "case001.nii.gz"]

    run(["nnunet-peft", "merge", "-m", str(work["model"]), "-o", str(root / "merged")], env)
    stock_env = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"}  # no plugin at all
    merged = predict_folder(work, root / "merged", "pred_merged", stock_env, ["--save_probabilities"])
    assert {k: v.tolist() for k, v in labels(merged).items()} == {k: v.tolist() for k, v in reference.items()}

    run(["nnunet-peft", "export-adapter", "-m", str(work["model"]), "-o", str(root / "adapter")], env)
    adapter_file = root / "adapter" / "fold_0" / "adapter_model.safetensors"
    full = (work["model"] / "fold_0" / "checkpoint_final.pth").stat().st_size
    assert adapter_file.stat().st_size < 0.02 * full
    run(["nnunet-peft", "apply-adapter", "-a", str(root / "adapter"), "--checkpoint", str(work["pretrained"]),
         "-o", str(root / "applied")], env)
    applied = predict_folder(work, root / "applied", "pred_applied")
    assert {k: v.tolist() for k, v in labels(applied).items()} == {k: v.tolist() for k, v in reference.items()}

    # nnU-Net's ensembling reads the probability files of both results
    run(["nnUNetv2_ensemble", "-i", str(root / "pred"), str(merged), "-o", str(root / "ensemble"), "-np", "1"], env)
    assert sorted(labels(root / "ensemble")) == sorted(reference)


def test_no_finetune_runs_zero_epochs_then_validates(work):
    name = "nnUNetTrainerNoFinetune"
    run(["nnUNetv2_train", "22", "3d_fullres", "0", "-tr", name, "-device", "cpu",
         "-pretrained_weights", str(work["pretrained"])], work["train_env"])
    fold = work["root"] / "results" / "Dataset022_Target" / f"{name}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (fold / "validation" / "summary.json").is_file()
    trained, source = weights(fold / "checkpoint_final.pth"), weights(work["pretrained"])
    assert all(torch.equal(trained[k], source[k]) for k in source)  # heads included: same label count


def test_mismatching_checkpoint_fails_with_the_fix(work, tmp_path):
    bad = torch.load(work["pretrained"], map_location="cpu", weights_only=False)
    key = next(k for k in bad["network_weights"] if k.endswith("stages.0.0.convs.0.conv.weight"))
    bad["network_weights"][key] = torch.zeros(1, 1, 1, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    proc = run(["nnUNetv2_train", "22", "3d_fullres", "1", "-tr", PEFT, "-device", "cpu",
                "-pretrained_weights", str(tmp_path / "bad.pth")], work["train_env"], check=False)
    assert proc.returncode != 0
    assert f"{key}: checkpoint (1, 1, 1, 1, 1)" in proc.stderr
    assert "nnunet-peft plan-from-checkpoint -d Dataset022_Target" in proc.stderr
