"""Real data through the converters (`msd`: the Decathlon hippocampus sample; `paired`: real DICOM
series; `lpba40`: hippocampus crops of a few subjects) and then through nnU-Net's own integrity check
and preprocessing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_peft.dataset_conversion.formats import FORMATS
from nnunet_peft.dataset_conversion.formats.lpba40 import Lpba40, parse_structures
from nnunet_peft.dataset_conversion.pipeline import ConvertOptions, ConversionResult, convert

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MSD = DATA / "msd_hippocampus_sample"
DICOM = DATA / "dicom_mri_sample"
LPBA40 = DATA / "lpba40"
N_MSD_CASES = 8  # enough for 2 folds and nnU-Net's planning, few enough to preprocess in seconds

needs_samples = pytest.mark.skipif(not (MSD.is_dir() and DICOM.is_dir()),
                                   reason=f"real data not available ({MSD} or {DICOM} is absent beside the checkout)")
needs_lpba40 = pytest.mark.skipif(not (LPBA40 / "images").is_dir(),
                                  reason=f"LPBA40 not available ({LPBA40}/images is absent beside the checkout)")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("real")
    raw, pre = root / "nnUNet_raw", root / "nnUNet_preprocessed"
    raw.mkdir()
    msd = convert(FORMATS["msd"](), MSD, ConvertOptions(4, "Hippocampus", raw, pre, folds=2, max_cases=N_MSD_CASES),
                  progress=None)

    # the DICOM sample has no segmentations: draw one on each series' own grid, as an annotator would
    masks = root / "masks"
    masks.mkdir()
    for series in sorted(p for p in DICOM.iterdir() if p.is_dir()):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
        image = reader.Execute()
        blob = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
        z, y, x = (s // 2 for s in blob.shape)
        blob[z - 2:z + 2, y - 5:y + 5, x - 5:x + 5] = 1
        label = sitk.GetImageFromArray(blob)
        label.CopyInformation(image)
        sitk.WriteImage(label, str(masks / f"{series.name}_mask.nii.gz"))
    layout = FORMATS["paired"](images=".", masks=str(masks))  # an absolute --masks is taken as is
    dicom = convert(layout, DICOM, ConvertOptions(5, "DicomMRI", raw, pre), progress=None)
    return {"raw": raw, "pre": pre, "msd": msd, "dicom": dicom}


@needs_samples
def test_msd_hippocampus_sample(converted) -> None:
    result: ConversionResult = converted["msd"]
    ds = result.dataset_dir
    assert ds.name == "Dataset004_Hippocampus"
    expected = sorted(p.name[: -len(".nii.gz")] for p in (MSD / "labelsTr").glob("hippocampus_*.nii.gz"))[:N_MSD_CASES]
    assert result.training_cases == expected
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in expected]
    meta = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert meta["numTraining"] == N_MSD_CASES and meta["channel_names"] == {"0": "MRI"}
    case = expected[0]
    source = sitk.ReadImage(str(MSD / "labelsTr" / f"{case}.nii.gz"))
    written = sitk.ReadImage(str(ds / "labelsTr" / f"{case}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(source))
    assert np.allclose(written.GetSpacing(), source.GetSpacing())
    # real hippocampus parts measure between 0.5 and 5 mL
    for per_case in result.volumes_ml.values():
        assert all(0.5 < v < 5.0 for v in per_case.values())
    splits = json.loads((converted["pre"] / ds.name / "splits_final.json").read_text(encoding="utf-8"))
    assert sorted(splits[0]["val"] + splits[1]["val"]) == expected


@needs_samples
def test_paired_real_dicom_series(converted) -> None:
    result: ConversionResult = converted["dicom"]
    ds = result.dataset_dir
    assert result.training_cases == ["11-T1post-18670", "11_HCropVolume"]
    written = sitk.ReadImage(str(ds / "imagesTr" / "11-T1post-18670_0000.nii.gz"))
    assert written.GetSize() == (280, 320, 22)
    assert np.allclose(written.GetSpacing(), (0.6875, 0.6875, 6.5), atol=1e-3)
    assert written.GetPixelID() == sitk.sitkUInt16
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(DICOM / "11-T1post-18670")))
    series = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(series))
    assert np.allclose(written.GetDirection(), series.GetDirection(), atol=1e-6)  # oblique: 10.8 degrees
    # 4 x 10 x 10 voxels of 0.6875^2 x 6.5 mm = 1.2289 mL; the crop is 1 mm isotropic: 0.4 mL
    volumes = result.volumes_ml[1]
    assert volumes["11-T1post-18670"] == pytest.approx(400 * 0.6875 ** 2 * 6.5 / 1000)
    assert volumes["11_HCropVolume"] == pytest.approx(0.4)


@needs_samples
@pytest.mark.slow
def test_nnunet_verifies_and_preprocesses_the_converted_datasets(converted) -> None:
    if shutil.which("nnUNetv2_plan_and_preprocess") is None:
        pytest.skip("nnUNetv2_plan_and_preprocess is not on PATH")
    raw, pre = converted["raw"], converted["pre"]
    env = os.environ | {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
                        "nnUNet_results": str(raw.parent / "nnUNet_results"), "OMP_NUM_THREADS": "1"}
    splits_before = (pre / "Dataset004_Hippocampus" / "splits_final.json").read_text(encoding="utf-8")
    run = subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", "4", "5", "--verify_dataset_integrity",
                          "-c", "3d_fullres", "-np", "1", "--no_pbar"],
                         env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("verify_dataset_integrity Done") == 2
    assert "Error" not in run.stdout and "Warning" not in run.stdout, run.stdout[-3000:]
    for name, n in (("Dataset004_Hippocampus", N_MSD_CASES), ("Dataset005_DicomMRI", 2)):
        plans = json.loads((pre / name / "nnUNetPlans.json").read_text(encoding="utf-8"))
        assert "3d_fullres" in plans["configurations"]
        assert len(list((pre / name / "nnUNetPlans_3d_fullres").glob("*.pkl"))) == n
    # nnU-Net keeps the splits the converter wrote
    assert (pre / "Dataset004_Hippocampus" / "splits_final.json").read_text(encoding="utf-8") == splits_before


@needs_lpba40
def test_lpba40_hippocampus_crops_per_side(tmp_path: Path) -> None:
    subjects = ("S02", "S03", "S04")
    src = tmp_path / "lpba40"  # links to three subjects, read in place
    for subject in subjects:
        for folder, name in (("images", "skullstripped"), ("labels", "structure.label")):
            (src / folder).mkdir(parents=True, exist_ok=True)
            (src / folder / f"{subject}.delineation.{name}.nii.gz").symlink_to(
                LPBA40 / folder / f"{subject}.delineation.{name}.nii.gz")
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    raw.mkdir()
    layout = Lpba40("merged", parse_structures("hippocampus"), split_sides=True)
    result = convert(layout, src, ConvertOptions(6, "LPBA40", raw, pre, folds=3, crop_margin=8.0), progress=None)
    ids = [f"{s}{side}" for s in subjects for side in "LR"]
    assert result.training_cases == ids and result.groups == {c: c[:3] for c in ids}
    ds = result.dataset_dir
    assert json.loads((ds / "dataset.json").read_text(encoding="utf-8"))["labels"] == {"background": 0, "hippocampus": 1}
    for subject, side, code in (("S02", "L", 165), ("S04", "R", 166)):
        source_label = sitk.ReadImage(str(src / "labels" / f"{subject}.delineation.structure.label.nii.gz"))
        source_image = sitk.ReadImage(str(src / "images" / f"{subject}.delineation.skullstripped.nii.gz"))
        z, y, x = np.nonzero(sitk.GetArrayViewFromImage(source_label) == code)
        # 1 mm voxels, far from the border: 8 voxels on every side of the structure
        low, high = np.array([x.min(), y.min(), z.min()]) - 8, np.array([x.max(), y.max(), z.max()]) + 9
        label = sitk.ReadImage(str(ds / "labelsTr" / f"{subject}{side}.nii.gz"))
        image = sitk.ReadImage(str(ds / "imagesTr" / f"{subject}{side}_0000.nii.gz"))
        assert label.GetSize() == image.GetSize() == tuple(int(n) for n in high - low)
        assert all(20 < n < 80 for n in label.GetSize())  # a hippocampus with margins, not a head (160x192x160)
        assert np.allclose(image.GetOrigin(), source_image.TransformIndexToPhysicalPoint([int(v) for v in low]))
        values = sitk.GetArrayFromImage(label)
        assert np.unique(values).tolist() == [0, 1] and int(values.sum()) == len(x)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image),
                                      sitk.GetArrayViewFromImage(source_image)[low[2]:high[2], low[1]:high[1],
                                                                               low[0]:high[0]])
    # one hippocampus measures 2 to 6 mL in LPBA40's generous delineations
    assert all(2.0 < v < 6.0 for v in result.volumes_ml[1].values())
    splits = json.loads((pre / ds.name / "splits_final.json").read_text(encoding="utf-8"))
    assert sorted(sorted(s["val"]) for s in splits) == [[f"{s}L", f"{s}R"] for s in subjects]
