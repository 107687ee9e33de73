"""`nnunet-peft volumes` and `nnunet-peft classify`: volumes of segmentations written here with known
voxel counts and spacings, and classifiers on synthetic tables whose answer is known."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnunet_peft.cli import main
from nnunet_peft.volumetry.diagnosis import build_cohort, classify, cross_validate, subject_volumes, subjects_of
from nnunet_peft.volumetry.volumes import volume_table

# SimpleITK order (x, y, z) in mm: an anisotropic voxel of 0.5 x 0.8 x 3 = 1.2 mm^3
SITK_SPACING = (0.5, 0.8, 3.0)
VOXEL_ML = 0.5 * 0.8 * 3.0 / 1000


def write_image(path, array, spacing=SITK_SPACING):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def label_map(counts: dict[int, int], shape=(6, 10, 12)) -> np.ndarray:
    """A label map holding ``counts[value]`` voxels of each value, scattered so no axis order hides an error."""
    flat = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    order = np.random.default_rng(sum(counts.values())).permutation(flat.size)
    start = 0
    for value, n in counts.items():
        flat[order[start:start + n]] = value
        start += n
    return flat.reshape(shape)


def write_dataset_json(path, labels):
    path.write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz", "channel_names": {"0": "T1"}}),
                    encoding="utf-8")
    return path


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------ volumes
def test_volumes_in_ml_with_anisotropic_spacing_and_dataset_json_names(tmp_path, capsys):
    seg = tmp_path / "seg"
    seg.mkdir()
    write_image(seg / "hippocampus_001.nii.gz", label_map({1: 250, 2: 100}))
    write_image(seg / "hippocampus_002.nii.gz", label_map({1: 40}))  # no posterior at all
    (seg / "plans.json").write_text("{}", encoding="utf-8")  # nnU-Net's prediction folders hold these too
    dataset_json = write_dataset_json(tmp_path / "dataset.json",
                                      {"background": 0, "anterior": 1, "posterior": 2, "whole": [1, 2]})

    code, out, err = run_cli(["volumes", seg, "-o", tmp_path / "volumes.csv", "--dataset-json", dataset_json], capsys)

    assert code == 0, err
    table = pd.read_csv(tmp_path / "volumes.csv", dtype={"case": str})
    assert list(table.columns) == ["case", "anterior_ml", "posterior_ml", "whole_ml"]
    assert table["case"].tolist() == ["hippocampus_001", "hippocampus_002"]
    np.testing.assert_allclose(table["anterior_ml"], [250 * VOXEL_ML, 40 * VOXEL_ML], rtol=1e-5)
    np.testing.assert_allclose(table["posterior_ml"], [100 * VOXEL_ML, 0.0], rtol=1e-5)
    np.testing.assert_allclose(table["whole_ml"], [350 * VOXEL_ML, 40 * VOXEL_ML], rtol=1e-5)
    assert table["anterior_ml"][0] == pytest.approx(0.3, rel=1e-5)  # 250 voxels x 1.2 mm^3 = 0.3 mL
    assert "2 cases" in out


def test_volumes_without_labels_name_every_value_found(tmp_path):
    seg = tmp_path / "seg"
    seg.mkdir()
    write_image(seg / "a.nrrd", label_map({3: 10}))
    write_image(seg / "b.nrrd", label_map({1: 5, 3: 20}))

    table = volume_table(seg)

    assert list(table.columns) == ["case", "1_ml", "3_ml"]
    np.testing.assert_allclose(table[["1_ml", "3_ml"]].to_numpy(), [[0, 10 * VOXEL_ML], [5 * VOXEL_ML, 20 * VOXEL_ML]])


def test_volumes_normalised_by_a_mask_folder(tmp_path):
    seg, masks = tmp_path / "seg", tmp_path / "icv"
    seg.mkdir(), masks.mkdir()
    write_image(seg / "s1.nii.gz", label_map({1: 30}))
    write_image(masks / "s1.nii.gz", label_map({1: 300, 7: 200}))  # every non-zero voxel counts

    table = volume_table(seg, {"background": 0, "hippocampus": 1}, reference="mask", reference_dir=masks)

    assert table["icv_ml"][0] == pytest.approx(500 * VOXEL_ML)
    assert table["hippocampus_fraction"][0] == pytest.approx(30 / 500)


def test_volumes_normalised_by_the_images_nonzero_region_with_holes_filled(tmp_path):
    seg, images = tmp_path / "seg", tmp_path / "imagesTs"
    seg.mkdir(), images.mkdir()
    write_image(seg / "s1.nii.gz", label_map({1: 8}))
    head = np.zeros((6, 10, 12), np.float32)
    head[1:5, 2:8, 2:10] = 100.0  # 4 x 6 x 8 = 192 voxels ...
    head[2:4, 4:6, 4:6] = 0.0  # ... with an enclosed hole (ventricles) that nnU-Net's mask fills
    other = np.zeros_like(head)
    other[0, 0, 0:3] = -5.0  # a second channel's non-zero voxels count too: 3 more
    write_image(images / "s1_0000.nii.gz", head)
    write_image(images / "s1_0001.nii.gz", other)

    table = volume_table(seg, [1], reference="image", reference_dir=images)

    assert table["image_nonzero_ml"][0] == pytest.approx((192 + 3) * VOXEL_ML)
    assert table["1_fraction"][0] == pytest.approx(8 / 195)


def test_volumes_of_nnunet_tiff_segmentations_read_their_spacing_file(tmp_path):
    from nnunetv2.imageio.tif_reader_writer import Tiff3DIO

    seg = tmp_path / "seg"
    seg.mkdir()
    Tiff3DIO().write_seg(label_map({1: 50}), str(seg / "c1.tif"), {"spacing": [3.0, 0.8, 0.5]})

    assert volume_table(seg)["1_ml"][0] == pytest.approx(50 * VOXEL_ML)
    (seg / "c1.json").unlink()
    with pytest.raises(ValueError, match=r"c1\.tif has no spacing file .*c1\.json"):
        volume_table(seg)


def test_volumes_errors_name_the_file_and_leave_no_output(tmp_path, capsys):
    seg = tmp_path / "seg"
    seg.mkdir()
    write_image(seg / "good.nii.gz", label_map({1: 5}))
    (seg / "broken.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "volumes.csv"

    code, _, err = run_cli(["volumes", seg, "-o", out], capsys)

    assert code == 2
    assert "broken.nii.gz" in err and "cannot read segmentation" in err
    assert not out.exists() and not list(tmp_path.glob(".volumes.csv*"))


def test_volumes_refuse_values_the_labels_do_not_name_and_existing_output(tmp_path, capsys):
    seg = tmp_path / "seg"
    seg.mkdir()
    write_image(seg / "c1.nii.gz", label_map({1: 5, 4: 2}))
    with pytest.raises(ValueError, match=r"c1\.nii\.gz holds values \[4\]"):
        volume_table(seg, {"background": 0, "hippocampus": 1})
    out = tmp_path / "volumes.csv"
    out.write_text("old", encoding="utf-8")
    code, _, err = run_cli(["volumes", seg, "-o", out], capsys)
    assert code == 2 and "--overwrite" in err and out.read_text(encoding="utf-8") == "old"
    assert run_cli(["volumes", seg, "-o", out, "--overwrite"], capsys)[0] == 0
    assert list(pd.read_csv(out).columns) == ["case", "1_ml", "4_ml"]


def test_volumes_refuse_mixed_formats_2d_maps_and_missing_reference(tmp_path):
    seg = tmp_path / "seg"
    seg.mkdir()
    write_image(seg / "a.nii.gz", label_map({1: 5}))
    write_image(seg / "b.mha", label_map({1: 5}))
    with pytest.raises(ValueError, match="--file-ending"):
        volume_table(seg)
    assert len(volume_table(seg, file_ending=".mha")) == 1
    with pytest.raises(FileNotFoundError, match=r"a_0000\.nii\.gz"):
        volume_table(seg, file_ending=".nii.gz", reference="image", reference_dir=tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    write_image(flat / "slice.nii.gz", label_map({1: 5})[0], SITK_SPACING[:2])
    with pytest.raises(ValueError, match=r"slice\.nii\.gz is 2-D"):
        volume_table(flat)


# ------------------------------------------------------------------------------------------ classify
def synthetic_cohort(n_per_class=20, separable=True, seed=0):
    """Volumes and metadata of AD and CN subjects; separable: every AD below every CN in hippocampus volume."""
    rng = np.random.default_rng(seed)
    subjects = [f"S{i:03d}" for i in range(2 * n_per_class)]
    diagnosis = ["AD"] * n_per_class + ["CN"] * n_per_class
    if separable:
        hippocampus = np.r_[rng.uniform(2.0, 2.4, n_per_class), rng.uniform(3.0, 3.4, n_per_class)]
    else:
        hippocampus = rng.normal(3.0, 0.3, 2 * n_per_class)
        diagnosis = list(rng.permutation(diagnosis))  # labels independent of every feature
    volumes = pd.DataFrame({"case": subjects, "hippocampus_ml": hippocampus,
                            "icv_ml": rng.normal(1400, 100, 2 * n_per_class)})
    metadata = pd.DataFrame({"subject": subjects, "diagnosis": diagnosis,
                             "age": rng.uniform(60, 85, 2 * n_per_class).round(1),
                             "sex": rng.choice(["F", "M"], 2 * n_per_class)})
    return volumes, metadata


def write_tables(tmp_path, volumes, metadata):
    volumes.to_csv(tmp_path / "volumes.csv", index=False)
    metadata.to_csv(tmp_path / "meta.csv", index=False)
    return tmp_path / "volumes.csv", tmp_path / "meta.csv"


def test_classify_separable_cohort_through_the_cli(tmp_path, capsys):
    vol, meta = write_tables(tmp_path, *synthetic_cohort())
    out = tmp_path / "diagnosis"

    code, printed, err = run_cli(["classify", vol, "--metadata", meta, "--target", "diagnosis", "-o", out,
                                  "--covariates", "age", "sex", "--classes", "CN", "AD"], capsys)

    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["accuracy"] == 1.0 and metrics["balanced_accuracy"] == 1.0 and metrics["auc"] == 1.0
    assert metrics["confusion_matrix"] == [[20, 0], [0, 20]]
    assert metrics["positive_class"] == "AD" and metrics["classes"] == ["CN", "AD"]
    assert metrics["features"] == ["hippocampus_ml", "icv_ml", "age", "sex"]
    assert metrics["categorical_covariates"] == ["sex"]
    assert {"sex_F", "sex_M", "age", "hippocampus_ml"} <= set(metrics["encoded_features"])
    assert metrics["missing_metadata"] == [] and metrics["missing_volumes"] == []
    for name in ("roc.png", "confusion_matrix.png", "predictions.csv", "confusion_matrix.csv",
                 "feature_weights.csv", "excluded_subjects.csv"):
        assert (out / name).stat().st_size > 0, name
    predictions = pd.read_csv(out / "predictions.csv")
    assert (predictions["diagnosis"] == predictions["predicted"]).all() and predictions["fold"].nunique() == 5
    weights = pd.read_csv(out / "feature_weights.csv").set_index("feature")["coefficient_AD"]
    assert weights["hippocampus_ml"] < 0  # smaller hippocampi mean AD: the sign the data put there
    assert "accuracy           1.000" in printed and "hippocampus_ml, icv_ml, age, sex" in printed


def test_classify_random_labels_are_at_chance():
    # Labels drawn independently of every feature: the out-of-fold AUC is an AUC of noise. For one
    # cohort of n1 = n2 = 100 its standard deviation is about 0.063 (measured over 60 such cohorts:
    # mean 0.49, range 0.33-0.62), wider than the 0.041 of a fixed score (Hanley & McNeil 1982),
    # because every fold has its own model and cross-validation under the null anti-learns a little
    # (the held-out subjects' deviations are missing from the fit). The mean of 5 independent
    # cohorts then has sd 0.063 / sqrt(5) = 0.028: 4 sd (0.11) around 0.5 fail by accident about once
    # in 10^4, while a pipeline that leaks labels into its folds (AUC near 1) or flips them (near 0)
    # fails. Single cohorts must stay within 4 of their own sd (0.25).
    aucs, balanced = [], []
    for seed in range(5):
        volumes, metadata = synthetic_cohort(n_per_class=100, separable=False, seed=seed)
        by_subject, _ = subject_volumes(volumes.astype({"case": str}))
        cohort = build_cohort(by_subject, metadata.astype(str), "diagnosis", covariates=["age", "sex"])
        result = cross_validate(cohort, seed=seed)
        aucs.append(result["auc"])
        balanced.append(result["balanced_accuracy"])

    assert abs(np.mean(aucs) - 0.5) < 4 * 0.063 / math.sqrt(5)
    assert max(abs(a - 0.5) for a in aucs) < 4 * 0.063
    # a proportion of 200 has sd 0.035, its mean over 5 cohorts 0.016; 0.1 leaves room for the fold noise
    assert abs(np.mean(balanced) - 0.5) < 0.1


def test_classify_lists_subjects_without_metadata_or_volumes(tmp_path, capsys):
    volumes, metadata = synthetic_cohort(n_per_class=8)
    metadata = metadata[metadata["subject"] != "S003"].copy()  # S003: volumes but no metadata
    metadata.loc[metadata["subject"] == "S010", "age"] = np.nan  # S010: a covariate is missing
    metadata.loc[metadata["subject"] == "S012", "diagnosis"] = np.nan  # S012: the target is missing
    metadata = pd.concat([metadata, pd.DataFrame({"subject": ["S099"], "diagnosis": ["AD"], "age": [70.0],
                                                  "sex": ["F"]})])  # S099: metadata but no volumes
    volumes.loc[volumes["case"] == "S005", "icv_ml"] = np.nan  # S005: a volume is missing
    vol, meta = write_tables(tmp_path, volumes, metadata)

    code, printed, err = run_cli(["classify", vol, "--metadata", meta, "--target", "diagnosis", "-o",
                                  tmp_path / "out", "--covariates", "age", "--folds", "3"], capsys)

    assert code == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["missing_metadata"] == ["S003", "S010", "S012"]
    assert metrics["missing_volumes"] == ["S005", "S099"]
    assert metrics["n_subjects"] == 16 - 4
    assert "S003 S010 S012" in printed and "S005 S099" in printed
    excluded = pd.read_csv(tmp_path / "out" / "excluded_subjects.csv")
    assert sorted(excluded["subject"]) == ["S003", "S005", "S010", "S012", "S099"]


def test_classify_sides_of_one_subject_become_features(tmp_path):
    volumes, metadata = synthetic_cohort(n_per_class=6)
    sides = pd.concat([volumes.assign(case=volumes["case"] + side, hippocampus_ml=volumes["hippocampus_ml"] / 2)
                       for side in "LR"])
    sides = sides[sides["case"] != "S001R"]  # S001 lost its right side: missing volumes
    vol, meta = write_tables(tmp_path, sides, metadata)

    metrics = classify(vol, meta, "diagnosis", tmp_path / "out", features=["hippocampus_ml"], folds=3,
                       subject_pattern=r"(?P<subject>S\d+)(?P<part>[LR])")

    assert metrics["features"] == ["hippocampus_ml_L", "hippocampus_ml_R"]
    assert metrics["missing_volumes"] == ["S001"] and metrics["n_subjects"] == 11
    assert metrics["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"cases S000L, S000R all map to subject 'S000'.*\(\?P<part>"):
        classify(vol, meta, "diagnosis", tmp_path / "again", subject_pattern=r"(S\d+)[LR]")


def test_subject_pattern_keeps_leading_zeros():
    ids = subjects_of(["hippocampus_001", "hippocampus_010"], r"hippocampus_(\d+)")
    assert ids["subject"].tolist() == ["001", "010"] and ids["part"].tolist() == ["", ""]
    with pytest.raises(ValueError, match=r"case 'brain_002' does not match"):
        subjects_of(["brain_002"], r"hippocampus_(\d+)")


def test_classify_uses_categorical_covariates_one_hot(tmp_path):
    volumes, metadata = synthetic_cohort(n_per_class=10, separable=False, seed=3)
    metadata["site"] = np.where(metadata["diagnosis"] == "AD", "clinic", "cohort")  # the target, as a category
    vol, meta = write_tables(tmp_path, volumes, metadata)

    metrics = classify(vol, meta, "diagnosis", tmp_path / "out", covariates=["site"])

    assert metrics["categorical_covariates"] == ["site"]
    assert {"site_clinic", "site_cohort"} <= set(metrics["encoded_features"])
    assert metrics["accuracy"] == 1.0 and metrics["auc"] == 1.0


def test_classify_with_a_random_forest_reports_importances(tmp_path):
    vol, meta = write_tables(tmp_path, *synthetic_cohort(n_per_class=10))

    metrics = classify(vol, meta, "diagnosis", tmp_path / "out", model="random-forest")

    # every tree that sees the separating volume splits on it; trees drawn without it (max_features
    # sqrt) split on noise, so a forest may leave a subject at a tie even here: AUC, not accuracy, is exact
    assert metrics["model"] == "random-forest" and metrics["auc"] == 1.0 and metrics["accuracy"] >= 0.9
    importance = pd.read_csv(tmp_path / "out" / "feature_weights.csv").set_index("feature")["importance"]
    assert importance["hippocampus_ml"] > importance["icv_ml"]  # the separating volume, not the noise


def test_classify_three_classes_reports_one_vs_rest_macro_auc(tmp_path):
    rng = np.random.default_rng(0)
    centres = {"CN": 3.4, "EMCI": 2.8, "AD": 2.2}
    subjects = [f"S{i:02d}" for i in range(30)]
    diagnosis = [c for c in centres for _ in range(10)]
    hippocampus = [centres[d] + rng.uniform(-0.1, 0.1) for d in diagnosis]
    volumes = pd.DataFrame({"case": subjects, "hippocampus_ml": hippocampus})
    metadata = pd.DataFrame({"subject": subjects, "diagnosis": diagnosis})
    vol, meta = write_tables(tmp_path, volumes, metadata)

    metrics = classify(vol, meta, "diagnosis", tmp_path / "out", folds=5)

    assert metrics["auc"] == 1.0 and metrics["accuracy"] == 1.0 and metrics["positive_class"] is None
    assert "one-vs-rest" in metrics["auc_definition"]
    assert np.trace(metrics["confusion_matrix"]) == 30


def test_classify_errors(tmp_path, capsys):
    volumes, metadata = synthetic_cohort(n_per_class=4)
    vol, meta = write_tables(tmp_path, volumes, metadata)

    def error(*extra):
        code, _, err = run_cli(["classify", vol, "--metadata", meta, "-o", tmp_path / "out", *extra], capsys)
        assert code == 2 and not (tmp_path / "out").exists()
        return err

    assert "needs at least 5 subjects per class" in error("--target", "diagnosis")
    assert "AD: 4, CN: 4" in error("--target", "diagnosis")
    assert "no column 'dx'" in error("--target", "dx") and "--target" in error("--target", "dx")
    assert "no column 'subject_id'" in error("--target", "diagnosis", "--id-column", "subject_id", "--folds", "2")
    assert "at least two classes" in error("--target", "diagnosis", "--classes", "AD", "--folds", "2")
    assert "--classes MCI never occur" in error("--target", "diagnosis", "--classes", "AD", "MCI")
    assert "no feature column(s) nope" in error("--target", "diagnosis", "--features", "nope")
    assert "lists the target" in error("--target", "diagnosis", "--covariates", "diagnosis", "--folds", "2")
    metadata.loc[1, "subject"] = metadata.loc[0, "subject"]
    vol, meta = write_tables(tmp_path, volumes, metadata)
    assert "subject(s) S000 more than once" in error("--target", "diagnosis", "--folds", "2")


def test_volumes_then_classify_from_segmentations_of_both_sides(tmp_path, capsys):
    # 12 subjects, one segmentation per side (convert --split-sides names them S01L, S01R); AD subjects
    # have smaller hippocampi on both sides, so the two volumes the pipeline measures separate them
    seg = tmp_path / "seg"
    seg.mkdir()
    subjects = [f"S{i:02d}" for i in range(12)]
    diagnosis = ["AD" if i % 2 else "CN" for i in range(12)]
    for i, (subject, dx) in enumerate(zip(subjects, diagnosis)):
        for side in "LR":
            write_image(seg / f"{subject}{side}.nii.gz", label_map({1: (150 if dx == "AD" else 250) + i}))
    pd.DataFrame({"subject": subjects, "diagnosis": diagnosis}).to_csv(tmp_path / "meta.csv", index=False)
    volumes = tmp_path / "volumes.csv"

    assert run_cli(["volumes", seg, "-o", volumes], capsys)[0] == 0
    code, printed, err = run_cli(["classify", volumes, "--metadata", tmp_path / "meta.csv", "--target", "diagnosis",
                                  "--subject-pattern", r"(?P<subject>S\d+)(?P<part>[LR])", "--folds", "3",
                                  "-o", tmp_path / "out"], capsys)

    assert code == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["features"] == ["1_ml_L", "1_ml_R"] and metrics["n_subjects"] == 12
    assert metrics["accuracy"] == 1.0 and metrics["auc"] == 1.0
    assert "through --subject-pattern" in printed
