"""Tri-planar 2-D through nnU-Net's command line on tiny thick-slice volumes, on CPU.

plan-views plans a source per view with the Multiview network, nnU-Net's own (stock) trainer
pretrains each view, plan-views --checkpoints plans a target from those checkpoints, and the
benchmark runs a plugin trainer on both views and ensembles their probabilities. Two views (axial,
coronal) keep it within the suite's budget; tests/test_views.py covers all three in-process.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnunet_tiny import nnunet_env, run, stock_trainer_folder, training_env

pytestmark = pytest.mark.slow

STOCK = "nnUNetTrainerTinyStockViews"
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


def test_views_pretrain_plan_target_benchmark_and_ensemble(tmp_path):
    env = nnunet_env(tmp_path)
    stock_dir = stock_trainer_folder(tmp_path, STOCK, epochs=1, iterations=2)
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(stock_dir)])
    thick_dataset(tmp_path / "raw", 51, "ViewSource", seed=0)
    thick_dataset(tmp_path / "raw", 52, "ViewTarget", seed=1)

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

    # the coronal checkpoint first: the views are read from the checkpoints, not from the order
    run(["nnunet-peft", "plan-views", "-d", "52", "--checkpoints", checkpoints[1], checkpoints[0], "-np", "1"], env)
    target = tmp_path / "preprocessed" / "Dataset052_ViewTarget"
    for view in VIEWS:
        kept = json.loads((target / f"nnUNetPlans_pretrained_{view}.json").read_text(encoding="utf-8"))
        assert kept["transpose_forward"] == plans[view]["transpose_forward"]
        assert kept["configurations"]["2d"]["architecture"] == plans[view]["configurations"]["2d"]["architecture"]

    out = tmp_path / "bench"
    run(["nnunet-peft", "benchmark", "-d", "52", "-c", "2d", "--views", *[f"nnUNetPlans_pretrained_{v}" for v in VIEWS],
         "--pretrained", *checkpoints, "--trainers", "nnUNetTrainerNoFinetune", "--folds", "0", "--device", "cpu",
         "-np", "1", "--out", str(out)], training_env(env))
    cases = pd.read_csv(out / "report" / "cases.csv")
    assert set(cases["method"]) == {"NoFinetune [axial]", "NoFinetune [coronal]", "NoFinetune [ensemble]"}
    assert cases.groupby("method")["case"].nunique().nunique() == 1  # every view and the ensemble: same cases
    methods = pd.read_csv(out / "report" / "methods.csv")
    assert methods["method"].nunique() == 3

    # the ensemble is the argmax of the mean of the views' probabilities, in the original axis order
    results = tmp_path / "results" / "Dataset052_ViewTarget"
    folders = [results / f"nnUNetTrainerNoFinetune__nnUNetPlans_pretrained_{v}__2d" / "fold_0" / "validation"
               for v in VIEWS]
    case = sorted(p.stem for p in folders[0].glob("*.npz"))[0]
    mean = np.mean([np.load(f / f"{case}.npz")["probabilities"] for f in folders], axis=0)
    ensemble = out / "view_ensembles" / "val" / "nnUNetTrainerNoFinetune" / "fold_0" / f"{case}.nii.gz"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(ensemble)))
    assert seg.shape == (8, 16, 16)
    np.testing.assert_array_equal(seg, mean.argmax(0))
