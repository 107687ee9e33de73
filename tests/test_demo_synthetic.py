"""The demo's synthetic head CT: anatomy in HU, where the labels lie, determinism, nnU-Net layout."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from nnunet_peft.demo.synthetic import Tissue, case_rng, synthesize_case, write_dataset

# small but still anatomically resolved; the demo's grid is larger
SHAPE = (16, 36, 36)
SPACING = (9.0, 6.0, 6.0)


def _case(task: str, index: int = 0, seed: int = 0, noise_hu: float | None = 0.0):
    return synthesize_case(case_rng(seed, task, index), task, SHAPE, SPACING, noise_hu=noise_hu)


@pytest.fixture(scope="module")
def cases():
    return {task: [_case(task, i) for i in range(4)] for task in ("tbi", "sah")}


def test_same_seed_same_case_and_cases_differ():
    a, b = _case("sah", 3, noise_hu=None), _case("sah", 3, noise_hu=None)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    other = _case("sah", 4, noise_hu=None)
    assert not np.array_equal(a.image, other.image)
    assert not np.array_equal(a.image, _case("sah", 3, seed=1, noise_hu=None).image)


def test_tissues_have_head_ct_attenuation(cases):
    for case in cases["tbi"] + cases["sah"]:
        hu, tissue = case.image, case.tissue
        for t in Tissue:
            assert (tissue == t).any(), f"no {t.name} voxels"
        assert np.all(hu[tissue == Tissue.AIR] == -1000)
        bone = hu[(tissue == Tissue.BONE) & (case.label == 0)]
        assert bone.min() >= 700 and bone.max() <= 1500
        medians = {t: np.median(hu[(tissue == t) & (case.label == 0)]) for t in Tissue}
        assert 30 <= medians[Tissue.SOFT_TISSUE] <= 50
        assert -2 <= medians[Tissue.CSF] <= 12
        assert 35 <= medians[Tissue.GREY_MATTER] <= 45
        assert 22 <= medians[Tissue.WHITE_MATTER] <= 32
        assert medians[Tissue.GREY_MATTER] > medians[Tissue.WHITE_MATTER] + 5


def test_label_is_exactly_the_blood(cases):
    for task, (lo, hi) in (("tbi", (60, 90)), ("sah", (55, 85))):
        for case in cases[task]:
            blood = case.label == 1
            assert blood.any(), f"{task} case without haemorrhage"
            assert np.all((case.image[blood] >= lo) & (case.image[blood] <= hi))
            # nothing inside the head but blood is as dense as blood
            intracranial = np.isin(case.tissue, (Tissue.CSF, Tissue.GREY_MATTER, Tissue.WHITE_MATTER))
            assert case.image[intracranial & ~blood].max() < 50
            assert not np.isin(case.tissue[blood], (Tissue.AIR, Tissue.BONE, Tissue.SOFT_TISSUE)).any()


def test_sah_follows_csf_spaces_and_tbi_does_not(cases):
    for case in cases["sah"]:
        assert np.all(case.tissue[case.label == 1] == Tissue.CSF)
    # intraparenchymal and extra-axial bleeds cover brain, not just CSF
    in_brain = [np.isin(c.tissue[c.label == 1], (Tissue.GREY_MATTER, Tissue.WHITE_MATTER)).mean()
                for c in cases["tbi"]]
    assert np.mean(in_brain) > 0.5


def test_noise_is_added_on_request():
    clean, noisy = _case("tbi", 1), _case("tbi", 1, noise_hu=6.0)
    # away from tissue borders, where the scanner blur mixes in the neighbours
    brain = ndimage.binary_erosion(clean.tissue == Tissue.WHITE_MATTER, iterations=2)
    assert brain.sum() > 100
    assert 3.0 < np.std((noisy.image - clean.image)[brain]) < 9.0


@pytest.mark.parametrize("bad", [dict(task="ct"), dict(shape=(4, 32, 32)), dict(spacing=(0, 1, 1))])
def test_bad_arguments_are_refused(bad):
    kwargs = dict(task="tbi", shape=SHAPE, spacing=SPACING) | bad
    with pytest.raises(ValueError):
        synthesize_case(np.random.default_rng(0), **kwargs)


def test_write_dataset_layout(tmp_path):
    import SimpleITK as sitk

    folder = write_dataset(tmp_path, 902, "sah", num_train=3, num_test=2, seed=5, shape=SHAPE, spacing=SPACING)
    assert folder == tmp_path / "Dataset902_SyntheticSAH"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset902_SyntheticSAH"]  # no temp left
    ds = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert ds["channel_names"] == {"0": "CT"} and ds["numTraining"] == 3
    assert ds["labels"] == {"background": 0, "subarachnoid haemorrhage": 1}
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"sah_00{i}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["sah_003.nii.gz", "sah_004.nii.gz"]
    img = sitk.ReadImage(str(folder / "imagesTs" / "sah_004_0000.nii.gz"))
    assert img.GetSpacing() == pytest.approx(SPACING[::-1])
    expected = _case("sah", 4, seed=5, noise_hu=None)
    assert np.array_equal(sitk.GetArrayFromImage(img), np.round(expected.image).astype(np.int16))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTs" / "sah_004.nii.gz")))
    assert np.array_equal(lab, expected.label)
    with pytest.raises(FileExistsError, match="exists already"):
        write_dataset(tmp_path, 902, "sah", 3, 0, shape=SHAPE, spacing=SPACING)
    with pytest.raises(FileExistsError, match="taken by"):
        write_dataset(tmp_path, 902, "tbi", 3, 0, shape=SHAPE, spacing=SPACING)


def test_test_cases_added_later_are_those_written_with_the_dataset(tmp_path):
    """A source written without held-out cases gets exactly the ones a new one has (indices after training)."""
    import SimpleITK as sitk

    from nnunet_peft.demo.synthetic import write_test_cases

    with_test = write_dataset(tmp_path / "a", 901, "tbi", num_train=2, num_test=2, seed=1, shape=SHAPE, spacing=SPACING)
    later = write_dataset(tmp_path / "b", 901, "tbi", num_train=2, num_test=0, seed=1, shape=SHAPE, spacing=SPACING)
    assert not (later / "imagesTs").exists()
    write_test_cases(later, "tbi", 2, 2, seed=1, shape=SHAPE, spacing=SPACING)
    assert sorted(p.name for p in later.iterdir() if p.name.startswith(".")) == []  # no temp left
    for sub in ("imagesTs", "labelsTs"):
        names = sorted(p.name for p in (with_test / sub).iterdir())
        assert names == sorted(p.name for p in (later / sub).iterdir()) and len(names) == 2
        for name in names:
            a, b = (sitk.ReadImage(str(folder / sub / name)) for folder in (with_test, later))
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)), name
            assert a.GetSpacing() == b.GetSpacing()
    # the held-out cases are not training cases
    assert not {p.name for p in (later / "imagesTs").iterdir()} & {p.name for p in (later / "imagesTr").iterdir()}
    with pytest.raises(FileExistsError, match="labelsTs exists"):
        write_test_cases(later, "tbi", 2, 2, seed=1, shape=SHAPE, spacing=SPACING)
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        write_test_cases(tmp_path / "nowhere", "tbi", 2, 2)
