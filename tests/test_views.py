"""Tri-planar 2-D nnU-Net: the view planner, planning targets from view checkpoints, and the views' ensemble.

The planner runs in-process on a hand-written dataset fingerprint of thick-slice CT (5 mm slices,
0.8 mm pixels), so the test sees nnU-Net's own choices for z in-plane without extracting anything.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_peft.planning import view_planner as vp

SPACING = (5.0, 0.8, 0.8)  # (z, y, x) mm: thick axial slices
SHAPE = (20, 64, 64)


@pytest.fixture(scope="module")
def thick_ct(tmp_path_factory, request):
    """A raw dataset folder (one tiny image, read only for its reader) and a fingerprint of 6 thick-slice cases."""
    root = tmp_path_factory.mktemp("views")
    name = "Dataset061_Thick"
    raw, pre = root / "raw" / name, root / "preprocessed" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    pre.mkdir(parents=True)
    for c in range(6):
        for path in (raw / "imagesTr" / f"c{c}_0000.nii.gz", raw / "labelsTr" / f"c{c}.nii.gz"):
            image = sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16))
            image.SetSpacing(SPACING[::-1])
            sitk.WriteImage(image, str(path))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "blood": 1}, "numTraining": 6,
        "file_ending": ".nii.gz"}), encoding="utf-8")
    fingerprint = {"spacings": [list(SPACING)] * 6, "shapes_after_crop": [list(SHAPE)] * 6,
                   "median_relative_size_after_cropping": 1.0,
                   "foreground_intensity_properties_per_channel": {"0": {
                       "max": 90.0, "mean": 40.0, "median": 40.0, "min": -20.0, "percentile_00_5": -10.0,
                       "percentile_99_5": 85.0, "std": 15.0}}}
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint), encoding="utf-8")
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner as dep

    # nnU-Net reads its folders at import; the planner module holds its own references
    patch = pytest.MonkeyPatch()
    patch.setattr(dep, "nnUNet_raw", str(root / "raw"))
    patch.setattr(dep, "nnUNet_preprocessed", str(root / "preprocessed"))
    request.addfinalizer(patch.undo)
    plans = {}
    for architecture in vp.ARCHITECTURES:
        for view, cls in vp.PLANNERS.items():
            planner = cls(name, architecture=architecture)
            planner.plan_experiment()
            # as nnU-Net and the tests read them: from the file (JSON lists, not the planner's tuples)
            plans[view, architecture] = json.loads((pre / f"{planner.plans_identifier}.json").read_text(encoding="utf-8"))
    return {"root": root, "name": name, "plans": plans, "folder": pre}


@pytest.mark.parametrize("view", list(vp.VIEWS))
def test_each_view_has_its_transpose_and_only_a_2d_configuration(thick_ct, view):
    plans = thick_ct["plans"][view, "unet"]
    forward, backward = vp.transpose_pair(view)
    assert plans["transpose_forward"] == forward and plans["transpose_backward"] == backward
    assert [forward[i] for i in backward] == [0, 1, 2]
    assert list(plans["configurations"]) == ["2d"]
    assert plans["experiment_planner_used"] == f"{view.capitalize()}ViewPlanner"
    assert plans["plans_name"] == f"nnUNetPlans_{view}"
    assert plans["configurations"]["2d"]["data_identifier"] == f"nnUNetPlans_{view}_2d"


def test_thick_slices_stay_thick_in_plane_for_coronal_and_sagittal(thick_ct):
    """What docs/multiview.md ("Thick slices") states: nnU-Net keeps z at 5 mm (no isotropic resampling), pools the
    fine axis first with 1-wide kernels along z, and its patch covers every slice."""
    axial = thick_ct["plans"]["axial", "unet"]["configurations"]["2d"]
    assert axial["spacing"] == [0.8, 0.8]
    for view in ("coronal", "sagittal"):
        config = thick_ct["plans"][view, "unet"]["configurations"]["2d"]
        arch = config["architecture"]["arch_kwargs"]
        assert config["spacing"] == [5.0, 0.8]
        assert config["patch_size"][0] == SHAPE[0]  # all 20 slices in one patch
        assert arch["kernel_sizes"][0] == [1, 3] and arch["strides"][1] == [1, 2]
        # z is resampled separately (it is the low-resolution axis), nearest neighbour for images
        assert config["resampling_fn_data_kwargs"]["order_z"] == 0
        assert config["resampling_fn_data_kwargs"]["force_separate_z"] is None


def test_multiview_architecture_is_named_in_the_plans_with_nnunets_strides(thick_ct):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunet_peft.architectures.multiview import MultiviewUNet

    for view in vp.VIEWS:
        unet = thick_ct["plans"][view, "unet"]["configurations"]["2d"]
        config = thick_ct["plans"][view, "multiview"]["configurations"]["2d"]
        arch = config["architecture"]
        assert thick_ct["plans"][view, "multiview"]["plans_name"] == f"nnUNetPlans_multiview_{view}"
        assert arch["network_class_name"] == "nnunet_peft.architectures.multiview.MultiviewUNet"
        assert arch["arch_kwargs"]["strides"] == unet["architecture"]["arch_kwargs"]["strides"]
        assert config["patch_size"] == unet["patch_size"]
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, 2, deep_supervision=False)
        assert isinstance(net, MultiviewUNet)
        with torch.no_grad():
            out = net(torch.zeros(1, 1, *config["patch_size"]))
        assert out.shape == (1, 2, *config["patch_size"])


def test_planner_refuses_what_would_undo_the_view(thick_ct):
    with pytest.raises(ValueError, match="fixes the transpose"):
        vp.CoronalViewPlanner(thick_ct["name"], suppress_transpose=True)
    with pytest.raises(ValueError, match="architecture must be one of unet, multiview"):
        vp.AxialViewPlanner(thick_ct["name"], architecture="resnet")
    assert vp.view_of_transpose([2, 0, 1]) == "sagittal" and vp.view_of_transpose([0, 2, 1]) is None


# ------------------------------------------------------------------------ targets from view checkpoints
def _view_checkpoint(path: Path, plans: dict, configuration: str = "2d") -> Path:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = plans["configurations"][configuration]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 1, 2, allow_init=False, deep_supervision=True)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": configuration,
                              "dataset_json": {"channel_names": {"0": "CT"}, "labels": {"background": 0, "blood": 1},
                                               "file_ending": ".nii.gz"}}}, path)
    return path


@pytest.mark.parametrize("architecture", vp.ARCHITECTURES)
def test_target_plans_keep_the_view_checkpoints_transpose_and_network(thick_ct, architecture, tmp_path):
    from nnunet_peft.planning.from_checkpoint import build_target_plans, check_weights_fit, read_checkpoint

    source = thick_ct["plans"]["sagittal", architecture]
    ckpt = read_checkpoint(_view_checkpoint(tmp_path / "sag.pth", source))
    # a target nnU-Net would transpose differently: its thick axis is the last one
    fingerprint = {"spacings": [[0.8, 0.8, 5.0]] * 3, "shapes_after_crop": [[64, 64, 20]] * 3,
                   "foreground_intensity_properties_per_channel":
                       source["foreground_intensity_properties_per_channel"]}
    plans = build_target_plans(ckpt.plans, "2d", "Dataset062_T", "nnUNetPlans_pretrained_sagittal", fingerprint,
                               "SimpleITKIO")
    assert plans["transpose_forward"] == [2, 0, 1] and plans["transpose_backward"] == [1, 2, 0]
    assert plans["configurations"]["2d"]["architecture"] == source["configurations"]["2d"]["architecture"]
    assert plans["configurations"]["2d"]["patch_size"] == source["configurations"]["2d"]["patch_size"]
    check_weights_fit(plans, "2d", ckpt.dataset_json, ckpt.network_weights, ckpt.path)  # builds the network


def test_plan_views_from_checkpoints_reads_the_view_of_each(thick_ct, tmp_path, monkeypatch):
    import nnunet_peft.planning.from_checkpoint as pfc
    from nnunet_peft.views.plan_views import plan_views_from_checkpoints

    ckpts = {v: _view_checkpoint(tmp_path / f"{v}.pth", thick_ct["plans"][v, "multiview"]) for v in vp.VIEWS}
    calls = []
    monkeypatch.setattr(pfc, "plan_from_checkpoint",
                        lambda target, ckpt, **kw: calls.append((target, Path(ckpt).name, kw)) or Path(kw["plans_name"]))
    paths = plan_views_from_checkpoints(62, [ckpts["sagittal"], ckpts["axial"], ckpts["coronal"]], log=lambda _: None,
                                        num_processes=1)
    assert {v: p.name for v, p in paths.items()} == {v: f"nnUNetPlans_pretrained_{v}" for v in vp.VIEWS}
    assert [(c[1], c[2]["plans_name"], c[2]["configuration"]) for c in calls] == [
        ("sagittal.pth", "nnUNetPlans_pretrained_sagittal", "2d"), ("axial.pth", "nnUNetPlans_pretrained_axial", "2d"),
        ("coronal.pth", "nnUNetPlans_pretrained_coronal", "2d")]

    calls.clear()
    with pytest.raises(ValueError, match="both of the axial view"):
        plan_views_from_checkpoints(62, [ckpts["axial"], ckpts["axial"]], log=lambda _: None)
    odd = dict(thick_ct["plans"]["axial", "unet"], transpose_forward=[0, 2, 1])
    with pytest.raises(ValueError, match=r"transpose_forward \[0, 2, 1\], which is no view's"):
        plan_views_from_checkpoints(62, [_view_checkpoint(tmp_path / "odd.pth", odd)], log=lambda _: None)
    assert calls == []  # refused before planning anything


# --------------------------------------------------------------------------------------- ensembling
def test_exported_probabilities_are_in_the_original_axis_order(thick_ct):
    """nnU-Net's export reverts transpose_forward, which is what lets views be averaged voxel by voxel."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(thick_ct["plans"]["sagittal", "unet"])
    config = manager.get_configuration("2d")
    original = (4, 6, 5)  # (z, y, x)
    transposed = tuple(original[i] for i in manager.transpose_forward)
    spacing_original = [5.0, 0.8, 0.8]
    properties = {"spacing": spacing_original, "shape_before_cropping": transposed,
                  "shape_after_cropping_and_before_resampling": transposed,
                  "bbox_used_for_cropping": [[0, s] for s in transposed]}
    logits = torch.randn(2, *transposed, generator=torch.Generator().manual_seed(0))
    label_manager = manager.get_label_manager({"labels": {"background": 0, "blood": 1}})
    seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.clone(), manager, config, label_manager, properties, return_probabilities=True)
    expected = torch.softmax(logits, 0).numpy().transpose(0, *[i + 1 for i in manager.transpose_backward])
    assert probs.shape == (2, *original) and seg.shape == original
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def _prediction_folder(folder: Path, cases: dict[str, np.ndarray], plans: dict) -> Path:
    folder.mkdir(parents=True)
    properties = {"sitk_stuff": {"spacing": (0.8, 0.8, 5.0), "origin": (0.0, 0.0, 0.0),
                                 "direction": (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)}, "spacing": [5.0, 0.8, 0.8]}
    for case, probabilities in cases.items():
        np.savez_compressed(folder / f"{case}.npz", probabilities=probabilities.astype(np.float32))
        with open(folder / f"{case}.pkl", "wb") as f:
            pickle.dump(properties, f)
    (folder / "plans.json").write_text(json.dumps(plans), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "blood": 1},
                                                     "file_ending": ".nii.gz"}), encoding="utf-8")
    return folder


def test_ensemble_of_views_averages_their_probabilities(thick_ct, tmp_path):
    from nnunet_peft.views.ensemble import ensemble_views

    rng = np.random.default_rng(3)
    views = {}
    for v in vp.VIEWS:
        fg = rng.uniform(0, 1, (3, 4, 5))
        views[v] = {"c1": np.stack([1 - fg, fg])}
    # one voxel where two views say background weakly and one says blood strongly: the mean says blood
    views["axial"]["c1"][:, 0, 0, 0] = [0.6, 0.4]
    views["coronal"]["c1"][:, 0, 0, 0] = [0.6, 0.4]
    views["sagittal"]["c1"][:, 0, 0, 0] = [0.0, 1.0]
    folders = [_prediction_folder(tmp_path / v, views[v], thick_ct["plans"][v, "unet"]) for v in vp.VIEWS]
    out = ensemble_views(folders, tmp_path / "ensemble", save_probabilities=True)
    mean = np.mean([views[v]["c1"] for v in vp.VIEWS], axis=0)
    np.testing.assert_allclose(np.load(out / "c1.npz")["probabilities"], mean, rtol=1e-6)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c1.nii.gz")))
    np.testing.assert_array_equal(seg, mean.argmax(0))
    assert seg[0, 0, 0] == 1 and not (tmp_path / "ensemble.partial").exists()


def test_ensemble_names_the_view_that_lacks_a_case(thick_ct, tmp_path):
    from nnunet_peft.views.ensemble import ensemble_views

    probs = np.full((2, 2, 2, 2), 0.5)
    a = _prediction_folder(tmp_path / "a", {"c1": probs, "c2": probs}, thick_ct["plans"]["axial", "unet"])
    b = _prediction_folder(tmp_path / "b", {"c1": probs}, thick_ct["plans"]["coronal", "unet"])
    with pytest.raises(FileNotFoundError, match=r"b lacks the probabilities of 1 case\(s\).*c2\.npz"):
        ensemble_views([a, b], tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="--save_probabilities"):
        ensemble_views([a, empty], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spacing, warned", [((5.0, 0.8, 0.8), None), ((0.8, 0.8, 5.0), "sagittal"),
                                             ((1.0, 1.0, 1.2), None)])
def test_plan_views_says_when_the_slices_are_not_along_axis_0(tmp_path, spacing, warned):
    from nnunet_peft.views.plan_views import _warn_if_not_axial

    (tmp_path / "fp.json").write_text(json.dumps({"spacings": [list(spacing)] * 3}), encoding="utf-8")
    lines = []
    _warn_if_not_axial(tmp_path / "fp.json", lines.append)
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and f"the '{warned}' plans slice along" in lines[0]
