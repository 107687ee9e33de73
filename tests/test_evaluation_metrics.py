"""Dice, HD95, volumes and the statistics of the benchmark, against hand-computed numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import stats as scipy_stats

from nnunet_peft.evaluation import stats
from nnunet_peft.evaluation.metrics import (case_metrics, dice, evaluate_folder, hd95, normalise_labels,
                                            volume_ml)

SPACING = (2.0, 1.0, 0.5)  # numpy axis order (z, y, x), mm


def _cube(shape, corner, size):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(c, c + size) for c in corner)] = True
    return mask


def test_dice_of_cubes_with_known_overlap():
    ref = _cube((10, 10, 10), (2, 2, 2), 4)
    pred = _cube((10, 10, 10), (2, 2, 3), 4)  # shifted one voxel: overlap 4*4*3 = 48 of 64 + 64
    assert dice(pred, ref) == pytest.approx(2 * 48 / 128)
    assert dice(ref, ref) == 1.0


def test_dice_conventions_for_empty_masks():
    empty, full = np.zeros((3, 3), bool), np.ones((3, 3), bool)
    assert dice(empty, empty) == 1.0
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0


def test_volume_in_millilitres_uses_spacing():
    assert volume_ml(_cube((10, 10, 10), (0, 0, 0), 4), SPACING) == pytest.approx(64 * 1.0 / 1000)
    assert volume_ml(np.zeros((2, 2, 2), bool), SPACING) == 0.0


def test_hd95_of_two_voxels_is_their_anisotropic_distance():
    ref, pred = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    ref[1, 1, 1] = True
    pred[2, 3, 4] = True  # offset (1, 2, 3) voxels = (2, 2, 1.5) mm
    assert hd95(pred, ref, SPACING) == pytest.approx(math.sqrt(4 + 4 + 2.25))


def test_hd95_takes_the_95th_percentile_not_the_maximum():
    # ref: 20 voxels along x; pred: the same row plus one outlier voxel 10 voxels (20 mm) away in z.
    # Pooled surface distances: 20 zeros (ref->pred), 20 zeros and one 20 mm (pred->ref).
    ref = np.zeros((12, 3, 22), bool)
    ref[0, 1, 1:21] = True
    pred = ref.copy()
    pred[10, 1, 5] = True
    distances = np.array([0.0] * 40 + [20.0])
    assert hd95(pred, ref, SPACING) == pytest.approx(np.percentile(distances, 95))
    assert hd95(pred, ref, SPACING) < 20.0


def test_hd95_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(3)
    from scipy import ndimage

    ref = ndimage.binary_opening(rng.random((9, 12, 14)) > 0.55)
    pred = ndimage.binary_opening(rng.random((9, 12, 14)) > 0.6)
    assert ref.any() and pred.any()
    structure = ndimage.generate_binary_structure(3, 1)

    def surface_points(mask):
        border = mask & ~ndimage.binary_erosion(mask, structure, border_value=0)
        return np.argwhere(border) * np.array(SPACING)

    a, b = surface_points(pred), surface_points(ref)
    pairwise = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    expected = np.percentile(np.concatenate([pairwise.min(axis=1), pairwise.min(axis=0)]), 95)
    assert hd95(pred, ref, SPACING) == pytest.approx(expected)


def test_hd95_undefined_when_either_side_is_empty():
    mask = _cube((5, 5, 5), (1, 1, 1), 2)
    assert math.isnan(hd95(mask, np.zeros_like(mask), SPACING))
    assert math.isnan(hd95(np.zeros_like(mask), np.zeros_like(mask), SPACING))


def test_case_metrics_per_label_region_and_ignore():
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    ref[3:5, 3:5, 3:5] = 2
    ref[0, :, :] = 9  # ignore label: whatever is predicted there does not count
    pred = ref.copy()
    pred[ref == 2] = 1  # the label-2 cube is called label 1
    pred[0, :, :] = 1
    rows = case_metrics(pred, ref, SPACING, {"background": 0, "a": 1, "b": 2, "ab": [1, 2], "ignore": 9},
                        ignore_label=9)
    by_label = {r["label"]: r for r in rows}
    assert set(by_label) == {"a", "b", "ab"}
    assert by_label["a"]["dice"] == pytest.approx(2 * 8 / (16 + 8))
    assert by_label["b"]["dice"] == 0.0 and math.isnan(by_label["b"]["hd95_mm"])
    assert by_label["ab"]["dice"] == 1.0 and by_label["ab"]["hd95_mm"] == 0.0
    assert by_label["a"]["pred_volume_ml"] == pytest.approx(16 / 1000)
    assert by_label["a"]["ref_volume_ml"] == pytest.approx(8 / 1000)


def test_normalise_labels_refuses_nonsense():
    with pytest.raises(ValueError, match="no foreground"):
        normalise_labels({"background": 0})
    with pytest.raises(ValueError, match="label 'x'"):
        normalise_labels({"x": "one"})
    assert normalise_labels([1, (2, 3)]) == {"1": 1, "2+3": (2, 3)}


def _write(path, array, spacing_zyx):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    sitk.WriteImage(image, str(path))


def test_evaluate_folder_reads_spacing_from_the_files(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    ref = _cube((10, 10, 10), (2, 2, 2), 4).astype(np.uint8)
    pred = _cube((10, 10, 10), (2, 2, 3), 4).astype(np.uint8)
    for case in ("b_case", "a_case"):
        _write(tmp_path / "pred" / f"{case}.nii.gz", pred, SPACING)
        _write(tmp_path / "ref" / f"{case}.nii.gz", ref, SPACING)
    _write(tmp_path / "ref" / "unpredicted.nii.gz", ref, SPACING)  # other folds' cases: ignored
    rows = evaluate_folder(tmp_path / "pred", tmp_path / "ref", {"background": 0, "lesion": 1})
    assert [r["case"] for r in rows] == ["a_case", "b_case"]
    assert evaluate_folder(tmp_path / "pred", tmp_path / "ref", [1], num_processes=2) == [
        {**r, "label": "1"} for r in rows]
    assert rows[0]["dice"] == pytest.approx(0.75)
    assert rows[0]["ref_volume_ml"] == pytest.approx(0.064)
    # a one-voxel shift along x (0.5 mm): every surface distance is 0 or 0.5 mm
    assert rows[0]["hd95_mm"] == pytest.approx(0.5)


def test_evaluate_folder_names_the_case_without_reference(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    _write(tmp_path / "pred" / "lonely.nii.gz", np.ones((2, 2, 2)), SPACING)
    with pytest.raises(FileNotFoundError, match="lonely.nii.gz"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", [1])


def test_bland_altman_by_hand():
    result = stats.bland_altman([3.0, 5.0, 9.0], [1.0, 4.0, 6.0])  # differences 2, 1, 3
    assert result["bias"] == pytest.approx(2.0)
    assert result["lower"] == pytest.approx(2.0 - 1.96 * 1.0)
    assert result["upper"] == pytest.approx(2.0 + 1.96 * 1.0)


def test_pearson_and_degenerate_inputs():
    assert stats.pearson([1, 2, 3, 4], [2, 4, 6, 8.5]) == pytest.approx(
        scipy_stats.pearsonr([1, 2, 3, 4], [2, 4, 6, 8.5]).statistic)
    assert math.isnan(stats.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(stats.pearson([1], [1]))


def test_paired_wilcoxon_pairs_on_keys_like_scipy():
    a = {("c1", 0): 0.9, ("c2", 0): 0.8, ("c3", 1): 0.7, ("c4", 1): 0.95, ("c5", 2): 0.6, ("x", 9): 0.1}
    ref = {("c5", 2): 0.5, ("c1", 0): 0.85, ("c2", 0): 0.82, ("c3", 1): 0.6, ("c4", 1): 0.9}
    keys = [("c1", 0), ("c2", 0), ("c3", 1), ("c4", 1), ("c5", 2)]
    expected = scipy_stats.wilcoxon([a[k] for k in keys], [ref[k] for k in keys])
    result = stats.paired_wilcoxon(a, ref)
    assert result["n"] == 5
    assert result["p"] == pytest.approx(expected.pvalue)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert stats.paired_wilcoxon(ref, ref)["p"] == 1.0
    assert math.isnan(stats.paired_wilcoxon({"a": 1.0}, {"b": 1.0})["p"])


def test_volume_bins_terciles_and_explicit_edges():
    edges = stats.volume_bin_edges([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9])  # empty reference left out
    assert edges == pytest.approx(list(np.quantile(np.arange(1, 10), [1 / 3, 2 / 3])))
    names = [stats.volume_bin_label(v, [5, 15]) for v in (0, 1, 5, 14.9, 15, 100)]
    assert names == ["empty reference", "< 5 mL", "5-15 mL", "5-15 mL", ">= 15 mL", ">= 15 mL"]
    assert stats.volume_bin_order([5, 15]) == ["empty reference", "< 5 mL", "5-15 mL", ">= 15 mL"]
    for bad in ([15, 5], [0, 5], [5, 5]):
        with pytest.raises(ValueError, match="strictly"):
            stats.volume_bin_edges([], bad)


@pytest.mark.parametrize("values,expected", [([1.0, 3.0, math.nan], (2.0, math.sqrt(2), 2))])
def test_mean_sd_leaves_out_nan(values, expected):
    mean, sd, n = stats.mean_sd(values)
    assert (mean, n) == (expected[0], expected[2]) and sd == pytest.approx(expected[1])

