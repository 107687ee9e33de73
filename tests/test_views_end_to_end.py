"""Tri-planar 2-D through nnU-Net's command line on tiny thick-slice volumes, on CPU.

plan-views plans a dataset per view with the Multiview network, nnU-Net's own (stock) trainer
pretrains each view, and the benchmark runs a plugin trainer from those checkpoints on both views
and ensembles their probabilities. Two views (axial, coronal), the benchmark on the pretraining
dataset's own view plans and no validation after pretraining keep it within the suite's budget;
tests/test_views.py covers all three views, and planning a target from view checkpoints, in-process.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnunet_tiny import nnunet_env, run, training_env

pytestmark = pytest.mark.slow

STOCK = "nnUNetTrainerTinyStockViews"
# nnU-Net's own trainer with a tiny schedule and without the validation after training, which the
# pretraining checkpoints do not need
_STOCK_TRAINER = f'''
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {STOCK}(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass
'''
VIEWS = ("axial", "coronal")


def thick_dataset(raw, dataset_id: int, name: str, seed: int, n_cases: int = 6):
    """Noise volumes of 8 slices at 3 mm (in-plane 1 mm) with one bright box each."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    rng = np.random.default_rng(seed)
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for c in range(n_cases):
        img = rng.normal(0, 1, (8, 16, 16)).astype(np.float32)
        seg = np.zeros(img.shape, np.uint8)
        z, y, x = rng.integers(1, 4), rng.integers(2, 8), rng.integers(2, 8)
        seg[z:z + 3, y:y + 6, x:x + 6] = 1
        img[seg > 0] += 3.0
        for array, path in [(img, folder / "imagesTr" / f"case{c:03d}_0000.nii.gz"),
                            (seg, folder / "labelsTr" / f"case{c:03d}.nii.gz")]:
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((1.0, 1.0, 3.0))
            sitk.WriteImage(image, str(path))
    generate_dataset_json(str(folder), {0: "MRI"}, {"background": 0, "blob": 1}, n_cases, ".nii.gz",
                          dataset_name=folder.name)
    return folder


def test_views_pretrain_benchmark_and_ensemble(tmp_path):
    env = nnunet_env(tmp_path)
    stock_dir = tmp_path / "stock_trainers"
    stock_dir.mkdir()
    (stock_dir / "tiny_stock_views.py").write_text(_STOCK_TRAINER, encoding="utf-8")
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(stock_dir)])
    thick_dataset(tmp_path / "raw", 51, "ViewSource", seed=0)

    run(["nnunet-peft", "plan-views", "-d", "51", "--views", *VIEWS, "--architecture", "multiview", "-np", "1"], env)
    plans = {v: json.loads((tmp_path / "preprocessed" / "Dataset051_ViewSource" / f"nnUNetPlans_multiview_{v}.json")
                           .read_text(encoding="utf-8")) for v in VIEWS}
    assert plans["axial"]["transpose_forward"] == [0, 1, 2] and plans["coronal"]["transpose_forward"] == [1, 0, 2]
    assert plans["coronal"]["configurations"]["2d"]["spacing"] == [3.0, 1.0]  # z stays thick, in-plane

    checkpoints = []
    for view in VIEWS:
        run(["nnUNetv2_train", "51", "2d", "0", "-p", f"nnUNetPlans_multiview_{view}", "-tr", STOCK, "-device", "cpu"],
            training_env(env))
        checkpoints.append(str(tmp_path / "results" / "Dataset051_ViewSource"
                               / f"{STOCK}__nnUNetPlans_multiview_{view}__2d" / "fold_0" / "checkpoint_final.pth"))

    out = tmp_path / "bench"
    run(["nnunet-peft", "benchmark", "-d", "51", "-c", "2d", "--views", *[f"nnUNetPlans_multiview_{v}" for v in VIEWS],
         "--pretrained", *checkpoints, "--trainers", "nnUNetTrainerNoFinetune", "--folds", "0", "--device", "cpu",
         "-np", "1", "--out", str(out)], training_env(env))
    cases = pd.read_csv(out / "report" / "cases.csv")
    assert set(cases["method"]) == {"NoFinetune [axial]", "NoFinetune [coronal]", "NoFinetune [ensemble]"}
    assert cases.groupby("method")["case"].nunique().nunique() == 1  # every view and the ensemble: same cases
    methods = pd.read_csv(out / "report" / "methods.csv")
    assert methods["method"].nunique() == 3

    # the ensemble is the argmax of the mean of the views' probabilities, in the original axis order
    results = tmp_path / "results" / "Dataset051_ViewSource"
    folders = [results / f"nnUNetTrainerNoFinetune__nnUNetPlans_multiview_{v}__2d" / "fold_0" / "validation"
               for v in VIEWS]
    case = sorted(p.stem for p in folders[0].glob("*.npz"))[0]
    mean = np.mean([np.load(f / f"{case}.npz")["probabilities"] for f in folders], axis=0)
    ensemble = out / "view_ensembles" / "val" / "nnUNetTrainerNoFinetune" / "fold_0" / f"{case}.nii.gz"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(ensemble)))
    assert seg.shape == (8, 16, 16)
    np.testing.assert_array_equal(seg, mean.argmax(0))
