"""Dataset converters: every layout as tiny synthetic files, each kind of bad input, the shared checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_peft import cli
from nnunet_peft.dataset_conversion.geometry import CropBox, GeometryTolerance, foreground_box, geometry_differences
from nnunet_peft.dataset_conversion.labels import LabelMapping, integer_labels
from nnunet_peft.dataset_conversion.splits import kfold_splits, stratified_splits

SHAPE = (6, 8, 10)  # z, y, x as numpy sees it


def write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array, isVector=False)  # 4-D arrays are volumes, not vector voxels
    extra = (1.0,) * (array.ndim - 3)  # a 4-D file's volume axis
    image.SetSpacing(tuple(spacing) + extra)
    image.SetOrigin(tuple(origin) + (0.0,) * len(extra))
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, SHAPE).astype(np.float32)


def mask(*values: int, dtype=np.uint8) -> np.ndarray:
    """A mask with one 2x2x2 block per value, so that label k covers 8 voxels (16 mm^3 at 1x1x2 mm)."""
    m = np.zeros(SHAPE, dtype=dtype)
    for i, v in enumerate(values):
        m[1:3, 1:3, 2 * i:2 * i + 2] = v
    return m


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    raw.mkdir()
    pre.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    # only this command: the test must not depend on the other subcommands' modules
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("nnunet_peft.commands.convert",))
    return {"src": tmp_path / "src", "raw": raw, "pre": pre}


def convert(capsys: pytest.CaptureFixture, fmt: str, src: Path, *args: str, dataset_id: int = 1) -> tuple[int, str, str]:
    code = cli.main(["convert", fmt, str(src), "-d", str(dataset_id), *args])
    out, err = capsys.readouterr()
    return code, out, err


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def assert_nothing_written(raw: Path) -> None:
    assert list(raw.iterdir()) == [], "a failed conversion must leave nothing in nnUNet_raw"


# ---------------------------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("text, values, expected", [
    ("1,2->1", [0, 1, 2], [0, 1, 1]),
    (">0->1", [0, 3, 255], [0, 1, 1]),
    ("1,2->1,3->2", [0, 1, 2, 3], [0, 1, 1, 2]),
    ("165->1;166->2;*->0", [0, 17, 165, 166], [0, 0, 1, 2]),
    ("2->1; 1->2; 4->3", [0, 1, 2, 4], [0, 2, 1, 3]),
    (">=2->1, <2->0", [0, 1, 2, 9], [0, 0, 1, 1]),
])
def test_label_mapping_grammar(text: str, values: list[int], expected: list[int]) -> None:
    mapped, unmatched = LabelMapping.parse(text).apply(np.array(values))
    assert mapped.tolist() == expected and unmatched == []


def test_label_mapping_reports_unmatched_values_and_keeps_background() -> None:
    mapped, unmatched = LabelMapping.parse("1->1").apply(np.array([[0, 1], [2, 7]]))
    assert mapped.tolist() == [[0, 1], [0, 0]]
    assert unmatched == [2, 7]


@pytest.mark.parametrize("text, message", [
    ("", "no rule"), ("1->", "target ''"), ("a->1", "'a' is not a label value"),
    ("1->1->2", "without a separator"), ("1->-1", "non-negative"), ("1->1.5", "non-negative"),
])
def test_label_mapping_rejects_bad_syntax(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LabelMapping.parse(text)


def test_integer_labels_rounds_near_integers_and_rejects_soft_masks() -> None:
    values, reason = integer_labels(np.array([0.0, 0.99999994, 2.0004], dtype=np.float64))
    assert values.tolist() == [0, 1, 2] and reason is None
    values, reason = integer_labels(np.array([0.0, 0.5, 1.0], dtype=np.float32))
    assert values is None and "non-integer" in reason and "0.5" in reason


def test_geometry_tolerance_is_relative_or_absolute() -> None:
    a = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    a.SetSpacing((0.5, 0.5, 5.0))
    a.SetOrigin((100.0, 0.0, 0.0))
    b = sitk.Image(a)
    b.SetSpacing((0.5, 0.5, 5.0004))  # 8e-5 relative: same grid
    b.SetOrigin((100.005, 0.0005, 0.0))  # 5e-5 relative, and 5e-4 mm absolute near 0
    assert geometry_differences(a, b, GeometryTolerance()) == []
    b.SetOrigin((100.05, 0.0, 0.0))
    assert [d.split()[0] for d in geometry_differences(a, b, GeometryTolerance())] == ["origin"]
    assert geometry_differences(a, b, GeometryTolerance(relative=1e-3)) == []


def test_unstratified_splits_are_nnunets_own() -> None:
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    ids = [f"case{i:02d}" for i in range(10)]
    ours = kfold_splits(ids, 3)
    theirs = generate_crossval_split(ids, seed=12345, n_splits=3)
    assert [sorted(s["val"]) for s in ours] == [sorted(s["val"]) for s in theirs]


def test_stratified_splits_balance_volume() -> None:
    volumes = {f"c{i}": float(v) for i, v in enumerate([1, 2, 3, 50, 51, 52, 100, 101, 102])}
    splits = stratified_splits(volumes, 3)
    assert sorted(c for s in splits for c in s["val"]) == sorted(volumes)
    for s in splits:
        assert sorted(s["train"] + s["val"]) == sorted(volumes)
        # one small, one medium and one large case per fold
        assert sorted(volumes[c] // 50 for c in s["val"]) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least 5 labelled cases"):
        stratified_splits({"a": 1.0, "b": 2.0}, 5)


# ---------------------------------------------------------------------------------------------- paired


def make_paired(src: Path, n: int = 4) -> None:
    for i in range(n):
        write(src / "images" / f"sah{i:02d}.nii.gz", image(i))
        write(src / "masks" / f"sah{i:02d}_mask.nii.gz", mask(1, *([2] * i)))  # case i has i blocks of label 2


def test_paired_writes_nnunet_raw_with_mapping_splits_and_summary(folders, capsys) -> None:
    src, raw, pre = folders["src"], folders["raw"], folders["pre"]
    make_paired(src)
    write(src / "images" / "extra.nrrd", image(9))  # NRRD, and an image without mask -> imagesTs
    code, out, err = convert(capsys, "paired", src, "-n", "SAH", "--labels", "1,2->1", "--label-names", "sah",
                             "--folds", "2", "--unlabelled-as-test", "--channel-name", "CT", dataset_id=17)
    assert code == 0, err
    ds = raw / "Dataset017_SAH"
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == [f"sah{i:02d}_0000.nii.gz" for i in range(4)]
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [f"sah{i:02d}.nii.gz" for i in range(4)]
    assert [p.name for p in (ds / "imagesTs").iterdir()] == ["extra_0000.nii.gz"]
    meta = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, "sah": 1} and meta["channel_names"] == {"0": "CT"}
    assert meta["numTraining"] == 4 and meta["file_ending"] == ".nii.gz"
    label = read(ds / "labelsTr" / "sah03.nii.gz")
    assert sorted(np.unique(label)) == [0, 1] and int(label.sum()) == 4 * 8  # 1 + three 2-blocks merged
    np.testing.assert_array_equal(read(ds / "imagesTr" / "sah02_0000.nii.gz"), image(2))
    splits = json.loads((pre / "Dataset017_SAH" / "splits_final.json").read_text(encoding="utf-8"))
    assert len(splits) == 2 and sorted(splits[0]["val"] + splits[1]["val"]) == [f"sah{i:02d}" for i in range(4)]
    # 8 voxels of 2 mm^3 = 0.016 mL per block: min 1 block, median 2.5 blocks, max 4 blocks
    line = next(ln for ln in out.splitlines() if "sah" in ln and "mL" not in ln and "written" not in ln)
    assert [float(x) for x in line.split()[2:5]] == [0.016, 0.040, 0.064]
    assert "4 training" in out and "1 unlabelled" in out
    assert "[5/5] extra" in err  # progress on stderr
    assert [p.name for p in raw.iterdir()] == ["Dataset017_SAH"]  # no temp folder left


def test_paired_lists_every_problem_at_once_and_writes_nothing(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_paired(src, 2)
    write(src / "images" / "lonely.nii.gz", image())  # missing partner
    write(src / "masks" / "orphan_seg.nii.gz", mask(1))  # missing partner
    write(src / "images" / "sah00.mha", image())  # duplicate id next to sah00.nii.gz
    (src / "images" / "broken.nii.gz").write_bytes(b"not an image")
    write(src / "masks" / "broken_mask.nii.gz", mask(1))  # unreadable image
    write(src / "images" / "soft.nii.gz", image())
    write(src / "masks" / "soft_mask.nii.gz", mask(1).astype(np.float32) * 0.5)  # non-integer labels
    write(src / "images" / "big.nii.gz", image())
    write(src / "masks" / "big_mask.nii.gz", np.zeros((6, 8, 11), np.uint8))  # wrong size
    write(src / "images" / "shift.nii.gz", image())
    write(src / "masks" / "shift_mask.nii.gz", mask(1), origin=(5.0, 0.0, 0.0))  # header differs only
    write(src / "images" / "seven.nii.gz", image())
    write(src / "masks" / "seven_mask.nii.gz", mask(1, 7))  # value outside the mapping
    code, _, err = convert(capsys, "paired", src, "--labels", "1,2->1")
    assert code == 2
    expected = [
        ("case lonely", "lonely.nii.gz", "no matching mask"),
        ("case orphan", "orphan_seg.nii.gz", "no matching image"),
        ("case sah00", "sah00.mha", "duplicate case id"),
        ("case broken", "broken.nii.gz", "cannot be read"),
        ("case soft", "soft_mask.nii.gz", "non-integer label values"),
        ("case big", "big_mask.nii.gz", "size (11, 8, 6) instead of (10, 8, 6)"),
        ("case shift", "shift_mask.nii.gz", "--fix-geometry"),
        ("case seven", "seven_mask.nii.gz", "label value(s) 7"),
    ]
    for case, file, what in expected:
        assert any(case in ln and file in ln and what in ln for ln in err.splitlines()), (case, err)
    assert "8 problem(s)" in err and "nothing was written" in err
    assert_nothing_written(raw)


def test_fix_geometry_copies_the_image_header_onto_the_mask(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    write(src / "images" / "a.nii.gz", image(), spacing=(0.7, 0.7, 5.0), origin=(-90.0, 12.0, 3.0), direction=direction)
    write(src / "masks" / "a.nii.gz", mask(1))  # same voxels, default header
    code, _, err = convert(capsys, "paired", src, "-n", "Fix")
    assert code == 2 and "mask geometry differs" in err and "spacing" in err and "direction" in err
    assert_nothing_written(raw)
    code, out, err = convert(capsys, "paired", src, "-n", "Fix", "--fix-geometry")
    assert code == 0, err
    written = sitk.ReadImage(str(raw / "Dataset001_Fix" / "labelsTr" / "a.nii.gz"))
    assert np.allclose(written.GetSpacing(), (0.7, 0.7, 5.0)) and np.allclose(written.GetOrigin(), (-90, 12, 3))
    assert np.allclose(written.GetDirection(), direction)
    assert "copied the image geometry onto 1 mask(s): a" in out


def write_dicom_series(folder: Path, volume: np.ndarray, series_uid: str, spacing=(0.8, 0.8, 3.0)) -> None:
    """One tiny MR series, one file per slice, tagged the way ImageSeriesReader sorts and stacks them."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z, plane in enumerate(volume):
        s = sitk.GetImageFromArray(plane[np.newaxis].astype(np.int16), isVector=False)
        s.SetSpacing(spacing)
        s.SetOrigin((10.0, 20.0, 30.0 + z * spacing[2]))
        for tag, value in {"0008|0060": "MR", "0020|000d": "1.2.3", "0020|000e": series_uid,
                           "0020|0013": str(z + 1), "0020|0032": f"10\\20\\{30 + z * spacing[2]}",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": f"{spacing[1]}\\{spacing[0]}",
                           "0018|0050": str(spacing[2])}.items():
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(s)


def test_paired_dicom_series_folders(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    volume = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 200).astype(np.int16)
    write_dicom_series(src / "images" / "pat01", volume, "1.2.3.4")
    grid = sitk.ImageSeriesReader()
    grid.SetFileNames(grid.GetGDCMSeriesFileNames(str(src / "images" / "pat01")))
    reference = grid.Execute()
    label = sitk.GetImageFromArray(mask(1))
    label.CopyInformation(reference)
    (src / "masks").mkdir()
    sitk.WriteImage(label, str(src / "masks" / "pat01_seg.nrrd"))
    write_dicom_series(src / "images" / "pat02", volume, "1.2.3.5")
    write_dicom_series(src / "images" / "pat02", volume[:3], "1.2.3.6")  # a second series in the same folder
    write(src / "masks" / "pat02_seg.nii.gz", mask(1))
    code, _, err = convert(capsys, "paired", src)
    assert code == 2 and "case pat02" in err and "holds 2 DICOM series" in err and "case pat01" not in err
    assert_nothing_written(raw)
    for f in (src / "images" / "pat02").iterdir():
        f.unlink()
    (src / "images" / "pat02").rmdir()
    (src / "masks" / "pat02_seg.nii.gz").unlink()
    code, _, err = convert(capsys, "paired", src)
    assert code == 0, err
    written = sitk.ReadImage(str(raw / "Dataset001_src" / "imagesTr" / "pat01_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), volume)
    assert np.allclose(written.GetSpacing(), (0.8, 0.8, 3.0)) and np.allclose(written.GetOrigin(), (10, 20, 30))


def test_single_volume_4d_files_are_read_as_3d(folders, capsys) -> None:
    # LPBA40's Analyze files and some exporters store one volume as 4-D; NRRD keeps that 4th axis on disk
    src, raw = folders["src"], folders["raw"]
    write(src / "images" / "a.nrrd", image()[np.newaxis])
    assert sitk.ReadImage(str(src / "images" / "a.nrrd")).GetDimension() == 4
    write(src / "masks" / "a.nrrd", mask(1)[np.newaxis])
    write(src / "images" / "b.nrrd", np.stack([image(), image()]))
    write(src / "masks" / "b.nrrd", mask(1))
    code, _, err = convert(capsys, "paired", src)
    assert code == 2 and "case b" in err and "4-D with 2 volumes" in err and "case a" not in err
    (src / "images" / "b.nrrd").unlink()
    (src / "masks" / "b.nrrd").unlink()
    code, _, err = convert(capsys, "paired", src)
    assert code == 0, err
    np.testing.assert_array_equal(read(raw / "Dataset001_src" / "imagesTr" / "a_0000.nii.gz"), image())


def test_inferred_labels_must_be_consecutive(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    write(src / "images" / "a.nii.gz", image())
    write(src / "masks" / "a.nii.gz", mask(1, 3))
    code, _, err = convert(capsys, "paired", src)
    assert code == 2 and "label values 0, 1, 3" in err and "--labels '3->2'" in err
    assert_nothing_written(raw)
    code, _, err = convert(capsys, "paired", src, "--labels", "1->1;3->2")
    assert code == 0, err
    meta = json.loads((raw / "Dataset001_src" / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, "label_1": 1, "label_2": 2}


def test_refuses_to_overwrite_or_reuse_an_id(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_paired(src, 2)
    assert convert(capsys, "paired", src, "-n", "A", "--folds", "2")[0] == 0
    stamp = (raw / "Dataset001_A" / "dataset.json").stat().st_mtime_ns
    code, _, err = convert(capsys, "paired", src, "-n", "A")
    assert code == 2 and "already exists; pass --overwrite" in err
    code, _, err = convert(capsys, "paired", src, "-n", "B")
    assert code == 2 and "already used by" in err and "Dataset001_A" in err
    assert (raw / "Dataset001_A" / "dataset.json").stat().st_mtime_ns == stamp
    (src / "masks" / "sah01_mask.nii.gz").unlink()
    code, _, err = convert(capsys, "paired", src, "-n", "A", "--overwrite")
    assert code == 2 and "sah01" in err  # a failing overwrite keeps the old dataset intact
    assert len(list((raw / "Dataset001_A" / "labelsTr").iterdir())) == 2
    write(src / "masks" / "sah01_mask.nii.gz", mask(1))
    assert convert(capsys, "paired", src, "-n", "A", "--overwrite", "--folds", "2")[0] == 0
    assert [p.name for p in raw.iterdir()] == ["Dataset001_A"]


@pytest.mark.parametrize("args, message", [
    (["-n", "has space"], "dataset name 'has space'"),
    (["--labels", "1->2"], "consecutive labels"),
    (["--stratify-volume"], "add --folds"),
    (["--folds", "1"], "at least 2"),
    (["--folds", "5"], "needs at least 5 labelled cases, found 2"),
    (["--image-pattern", "(unclosed"], "not a valid regular expression"),
    (["--image-pattern", "abc"], "must capture the case id"),
])
def test_bad_options_are_clear_errors(folders, capsys, args, message) -> None:
    make_paired(folders["src"], 2)
    code, _, err = convert(capsys, "paired", folders["src"], *args)
    assert code == 2 and message in err
    assert_nothing_written(folders["raw"])


def test_missing_raw_folder_is_created_and_named(folders, capsys) -> None:
    make_paired(folders["src"], 2)
    raw = folders["raw"].parent / "new" / "nnUNet_raw"
    code, out, _ = convert(capsys, "paired", folders["src"], "--raw", str(raw))
    assert code == 0 and f"created the nnUNet_raw folder {raw}" in out
    assert [p.name.startswith("Dataset001_") for p in raw.iterdir()] == [True]
    again = convert(capsys, "paired", folders["src"], "--raw", str(raw), "--overwrite")
    assert again[0] == 0 and "created the nnUNet_raw folder" not in again[1]


def test_failed_run_removes_the_raw_folder_it_created(folders, capsys) -> None:
    make_paired(folders["src"], 2)
    (folders["src"] / "masks" / "sah01_mask.nii.gz").write_bytes(b"not an image")
    raw = folders["raw"].parent / "new_raw"
    code, _, err = convert(capsys, "paired", folders["src"], "--raw", str(raw))
    assert code == 2 and "sah01" in err and not raw.exists()


def test_raw_that_is_a_file_is_refused(folders, capsys) -> None:
    make_paired(folders["src"], 2)
    not_a_folder = folders["raw"].parent / "raw.txt"
    not_a_folder.write_text("")
    code, _, err = convert(capsys, "paired", folders["src"], "--raw", str(not_a_folder))
    assert code == 2 and "is a file, not a folder" in err


def test_raw_folder_is_required(folders, capsys, monkeypatch) -> None:
    monkeypatch.delenv("nnUNet_raw")
    make_paired(folders["src"], 2)
    code, _, err = convert(capsys, "paired", folders["src"])
    assert code == 2 and "--raw" in err and "nnUNet_raw" in err


def test_stratified_folds_from_the_command_line(folders, capsys) -> None:
    src, pre = folders["src"], folders["pre"]
    make_paired(src, 6)  # volumes grow with the case number
    assert convert(capsys, "paired", src, "-n", "S", "--folds", "3", "--stratify-volume")[0] == 0
    splits = json.loads((pre / "Dataset001_S" / "splits_final.json").read_text(encoding="utf-8"))
    for s in splits:  # one of the three smaller and one of the three larger cases per fold
        assert sorted(int(c[-2:]) // 3 for c in s["val"]) == [0, 1]


# ---------------------------------------------------------------------------------------------- crop, groups


def test_foreground_box_margin_is_in_mm_per_axis() -> None:
    m = np.zeros((20, 30, 40), np.uint8)
    m[10, 12:14, 20:25] = 1
    # 8 mm: 8 / 0.8 is 10.000000000000002 in floating point and still 10 voxels; 8 / 3 rounds up to 3
    box = foreground_box(m, (0.8, 1.0, 3.0), 8.0)
    assert box == CropBox(index=(10, 4, 7), size=(25, 18, 7))
    assert box.slices() == (slice(7, 14), slice(4, 22), slice(10, 35))
    assert foreground_box(m, (0.8, 1.0, 3.0), 0.0) == CropBox((20, 12, 10), (5, 2, 1))
    assert foreground_box(np.zeros_like(m), (1.0, 1.0, 1.0), 8.0) is None


def test_crop_margin_anisotropic_and_oblique(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    volume = np.random.default_rng(0).random((10, 20, 30)).astype(np.float32)
    label = np.zeros((10, 20, 30), np.uint8)
    label[4:6, 8:12, 12:18] = 1
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # x and y swapped: the origin moves along them
    kwargs = dict(spacing=(0.5, 1.0, 3.0), origin=(10.0, 20.0, 30.0), direction=direction)
    write(src / "images" / "a.nii.gz", volume, **kwargs)
    write(src / "masks" / "a.nii.gz", label, **kwargs)
    code, out, err = convert(capsys, "paired", src, "--crop-margin", "2")
    assert code == 0, err
    ds = raw / "Dataset001_src"
    cropped = sitk.ReadImage(str(ds / "imagesTr" / "a_0000.nii.gz"))
    # 2 mm: 4 voxels along x (0.5 mm), 2 along y (1 mm), 1 along z (3 mm, rounded up)
    assert cropped.GetSize() == (14, 8, 4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cropped), volume[3:7, 6:14, 8:22])
    # first kept voxel (8, 6, 3) is (4, 6, 9) mm along the grid axes; the direction sends them to (6, 4, 9)
    assert np.allclose(cropped.GetOrigin(), (16.0, 24.0, 39.0))
    assert np.allclose(cropped.GetSpacing(), (0.5, 1.0, 3.0)) and np.allclose(cropped.GetDirection(), direction)
    written_label = sitk.ReadImage(str(ds / "labelsTr" / "a.nii.gz"))
    assert written_label.GetSize() == (14, 8, 4) and np.allclose(written_label.GetOrigin(), (16.0, 24.0, 39.0))
    assert int(sitk.GetArrayFromImage(written_label).sum()) == int(label.sum())
    assert "cropped to the mask's foreground + 2 mm on every side" in out


def test_crop_margin_is_clipped_at_the_image_border(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    label = np.zeros(SHAPE, np.uint8)
    label[0:2, 6:8, 3:5] = 1  # touches the first z and the last y slice
    write(src / "images" / "a.nii.gz", image(), origin=(5.0, 6.0, 7.0))
    write(src / "masks" / "a.nii.gz", label, origin=(5.0, 6.0, 7.0))
    code, _, err = convert(capsys, "paired", src, "--crop-margin", "2")
    assert code == 0, err
    cropped = sitk.ReadImage(str(raw / "Dataset001_src" / "imagesTr" / "a_0000.nii.gz"))
    # spacing (1, 1, 2): x 3..4 +- 2 -> 1..6, y 6..7 +- 2 -> 4..7 (clipped), z 0..1 +- 1 -> 0..2 (clipped)
    assert cropped.GetSize() == (6, 4, 3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cropped), image()[0:3, 4:8, 1:7])
    assert np.allclose(cropped.GetOrigin(), (6.0, 10.0, 7.0))


def test_crop_margin_needs_a_mask_with_foreground(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_paired(src, 2)
    write(src / "images" / "empty.nii.gz", image())
    write(src / "masks" / "empty.nii.gz", np.zeros(SHAPE, np.uint8))
    write(src / "images" / "test.nii.gz", image())
    code, _, err = convert(capsys, "paired", src, "--crop-margin", "4", "--unlabelled-as-test")
    assert code == 2 and "2 problem(s)" in err
    assert any("case empty" in ln and "empty.nii.gz" in ln and "no foreground" in ln for ln in err.splitlines())
    assert any("case test" in ln and "test.nii.gz" in ln and "--crop-margin crops around the mask, but this image "
               "has none" in ln for ln in err.splitlines())
    assert_nothing_written(raw)


def test_grouped_splits_keep_a_group_together() -> None:
    from nnunet_peft.dataset_conversion.splits import grouped_kfold_splits, grouped_stratified_splits

    groups = {f"s{g}{part}": f"s{g}" for g in range(7) for part in "abc"}
    for splits in (grouped_kfold_splits(groups, 3),
                   grouped_stratified_splits({c: float(c[1]) for c in groups}, groups, 3)):
        assert sorted(c for s in splits for c in s["val"]) == sorted(groups)
        for s in splits:
            assert sorted(s["train"] + s["val"]) == sorted(groups)
            assert {groups[c] for c in s["train"]}.isdisjoint(groups[c] for c in s["val"])
    # one case per group: nnU-Net's own split
    ids = [f"case{i:02d}" for i in range(10)]
    assert grouped_kfold_splits({c: c for c in ids}, 3) == kfold_splits(ids, 3)
    # groups weighed by their totals: 3 cases of 1 mL outweigh 1 case of 2 mL
    volumes = {"a1": 1.0, "a2": 1.0, "a3": 1.0, "b1": 2.0, "c1": 0.5, "d1": 2.5}
    by_group = {c: c[0] for c in volumes}
    for s in grouped_stratified_splits(volumes, by_group, 2):  # totals c 0.5 < b 2 < d 2.5 < a 3
        val = {c[0] for c in s["val"]}
        assert len(val & {"c", "b"}) == 1 and len(val & {"d", "a"}) == 1
    with pytest.raises(ValueError, match="at least 5 groups \\(subjects\\), found 2"):
        grouped_kfold_splits({"a1": "a", "a2": "a", "b1": "b", "b2": "b", "b3": "b"}, 5)


# ---------------------------------------------------------------------------------------------- layouts


def make_ct_ich(src: Path) -> None:
    rows = ["PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,"
            "No_Hemorrhage,Fracture_Yes_No"]
    for number, sah in ((49, 1), (50, 0), (51, 1)):
        write(src / "ct_scans" / f"{number:03d}.nii", image(number))
        write(src / "masks" / f"{number:03d}.nii", mask(255))  # 0/255 masks are hemorrhage too
        rows += [f"{number},1,0,0,{sah},0,0,{1 - sah},0", f"{number},2,0,1,0,0,0,0,0"]
    (src / "hemorrhage_diagnosis_raw_ct.csv").write_text("\n".join(rows) + "\n")


def test_ct_ich(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_ct_ich(src)
    code, out, err = convert(capsys, "ct-ich", src, "--with-subtype", "subarachnoid")
    assert code == 0, err
    ds = raw / "Dataset001_CTICH"
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == ["049.nii.gz", "051.nii.gz"]
    assert np.unique(read(ds / "labelsTr" / "049.nii.gz")).tolist() == [0, 1]
    assert json.loads((ds / "dataset.json").read_text(encoding="utf-8"))["channel_names"] == {"0": "CT"}


def test_ct_ich_cross_checks_the_csv(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_ct_ich(src)
    write(src / "ct_scans" / "052.nii", image())
    write(src / "masks" / "052.nii", mask(1))
    (src / "ct_scans" / "050.nii").unlink()
    code, _, err = convert(capsys, "ct-ich", src)
    assert code == 2
    assert "case 052" in err and "052.nii" in err and "no rows in hemorrhage_diagnosis_raw_ct.csv" in err
    assert "case 050" in err and "no matching image" in err
    assert_nothing_written(raw)


def test_instance2022_with_evaluation_set(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    for i in (1, 2):
        write(src / "train_2" / "data" / f"{i:03d}.nii.gz", image(i))
        write(src / "train_2" / "label" / f"{i:03d}.nii.gz", mask(1))
    write(src / "evaluation" / "data" / "101.nii.gz", image(5))
    code, _, err = convert(capsys, "instance2022", src)
    assert code == 0, err
    ds = raw / "Dataset001_INSTANCE2022"
    assert [p.name for p in (ds / "imagesTs").iterdir()] == ["101_0000.nii.gz"]
    assert len(list((ds / "labelsTr").iterdir())) == 2


def test_instance2022_rejects_an_unexpected_label(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    write(src / "train_2" / "data" / "001.nii.gz", image())
    write(src / "train_2" / "label" / "001.nii.gz", mask(1, 2))
    code, _, err = convert(capsys, "instance2022", src)
    assert code == 2 and "case 001" in err and "label value(s) 2" in err and "labels are 0, 1" in err
    assert_nothing_written(raw)


@pytest.mark.parametrize("layout", ["nnunet", "label_192"])
@pytest.mark.parametrize("args, labels, expected", [
    ([], {"background": 0, "epidural": 1, "intraparenchymal": 2, "intraventricular": 3, "subarachnoid": 4,
          "subdural": 5}, [1, 2, 3, 4, 5]),
    (["--subtypes", "sah"], {"background": 0, "subarachnoid": 1}, [0, 0, 0, 1, 0]),
    (["--subtypes", "sah,sdh", "--merge-subtypes"], {"background": 0, "hemorrhage": 1}, [0, 0, 0, 1, 1]),
])
def test_bhsd_subtypes(folders, capsys, layout, args, labels, expected) -> None:
    src, raw = folders["src"], folders["raw"]
    images, masks = ("imagesTr", "labelsTr") if layout == "nnunet" else ("label_192/images", "label_192/ground truths")
    write(src / images / ("ID_1_0000.nii.gz" if layout == "nnunet" else "ID_1.nii.gz"), image())
    write(src / masks / "ID_1.nii.gz", mask(1, 2, 3, 4, 5))
    code, _, err = convert(capsys, "bhsd", src, *args)
    assert code == 0, err
    ds = raw / "Dataset001_BHSD"
    assert json.loads((ds / "dataset.json").read_text(encoding="utf-8"))["labels"] == labels
    out = read(ds / "labelsTr" / "ID_1.nii.gz")
    assert [int(out[1, 1, 2 * i]) for i in range(5)] == expected


def test_bhsd_rejects_values_outside_1_to_5(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    write(src / "imagesTr" / "ID_9.nii.gz", image())
    write(src / "labelsTr" / "ID_9.nii.gz", mask(4, 6))
    code, _, err = convert(capsys, "bhsd", src, "--subtypes", "sah")
    assert code == 2 and "case ID_9" in err and "label value(s) 6" in err
    assert_nothing_written(raw)


def make_msd(src: Path, channels: int = 2) -> None:
    meta = {"name": "Prostate", "modality": {str(c): f"m{c}" for c in range(channels)},
            "labels": {"0": "background", "1": "PZ", "2": "TZ"}, "numTraining": 2}
    src.mkdir(parents=True)
    (src / "dataset.json").write_text(json.dumps(meta))
    for i in (1, 2):
        write(src / "imagesTr" / f"prostate_{i:02d}.nii.gz", np.stack([image(i + 10 * c) for c in range(channels)]))
        write(src / "labelsTr" / f"prostate_{i:02d}.nii.gz", mask(1, 2))
        (src / "imagesTr" / f"._prostate_{i:02d}.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")


def test_msd_splits_4d_channels_skips_resource_forks_and_tolerates_no_imagesTs(folders, capsys) -> None:
    src, raw = folders["src"] / "Task05_Prostate", folders["raw"]
    make_msd(src)
    code, _, err = convert(capsys, "msd", src, dataset_id=5)
    assert code == 0, err
    ds = raw / "Dataset005_Prostate"
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == [
        "prostate_01_0000.nii.gz", "prostate_01_0001.nii.gz", "prostate_02_0000.nii.gz", "prostate_02_0001.nii.gz"]
    np.testing.assert_array_equal(read(ds / "imagesTr" / "prostate_02_0001.nii.gz"), image(12))
    meta = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "m0", "1": "m1"} and meta["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert not (ds / "imagesTs").exists()


def test_msd_without_dataset_json(folders, capsys) -> None:
    src, raw = folders["src"] / "Task05_Prostate", folders["raw"]
    make_msd(src)
    (src / "dataset.json").unlink()
    code, _, err = convert(capsys, "msd", src, "-n", "P")
    assert code == 2 and "dataset.json not found" in err and str(src) in err
    assert_nothing_written(raw)


def test_msd_channel_count_must_match_the_files(folders, capsys) -> None:
    src, raw = folders["src"] / "Task05_Prostate", folders["raw"]
    make_msd(src, channels=2)
    meta = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    meta["modality"] = {"0": "T2", "1": "ADC", "2": "DWI"}
    (src / "dataset.json").write_text(json.dumps(meta))
    code, _, err = convert(capsys, "msd", src)
    assert code == 2 and "case prostate_01" in err and "has 2 volumes" in err and "volume 2" in err
    assert_nothing_written(raw)


def make_harp(src: Path) -> None:
    for name in ("ADNI_002_S_0295", "ADNI_003_S_1021"):
        write(src / "images" / f"{name}.mnc", image())
        left, right = mask(1).astype(np.float32), np.roll(mask(1), 4, axis=2).astype(np.float32)
        write(src / "labels" / f"{name}_L.nii", left * np.float32(0.99999994))  # HarP's odd floats
        write(src / "labels" / f"{name}_R.nii", right * np.float32(1.0000001))


@pytest.mark.parametrize("sides, labels, right_value", [
    ("separate", {"background": 0, "left": 1, "right": 2}, 2),
    ("merged", {"background": 0, "hippocampus": 1}, 1),
])
def test_harp_minc_images_and_float_side_labels(folders, capsys, sides, labels, right_value) -> None:
    src, raw = folders["src"], folders["raw"]
    make_harp(src)
    code, out, err = convert(capsys, "harp", src, "--sides", sides)
    assert code == 0, err
    ds = raw / "Dataset001_HarP"
    assert json.loads((ds / "dataset.json").read_text(encoding="utf-8"))["labels"] == labels
    out_mask = read(ds / "labelsTr" / "ADNI_002_S_0295.nii.gz")
    assert int(out_mask[1, 1, 0]) == 1 and int(out_mask[1, 1, 4]) == right_value
    assert int((out_mask > 0).sum()) == 16


def test_harp_missing_side_and_soft_mask(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_harp(src)
    (src / "labels" / "ADNI_003_S_1021_R.nii").unlink()
    write(src / "labels" / "ADNI_002_S_0295_L.nii", mask(1).astype(np.float32) * 0.7)
    code, _, err = convert(capsys, "harp", src)
    assert code == 2
    assert "case ADNI_003_S_1021" in err and "no right label file" in err
    assert "case ADNI_002_S_0295" in err and "ADNI_002_S_0295_L.nii" in err and "non-integer" in err
    assert_nothing_written(raw)


def make_lpba40(src: Path, n: int = 2) -> None:
    for i in range(1, n + 1):
        case = src / "native_space" / f"S{i:02d}"
        write(case / f"S{i:02d}.native.mri.hdr", image(i))
        write(case / f"S{i:02d}.native.label.hdr", mask(165, 166, 21, dtype=np.uint16))
        write(case / f"S{i:02d}.native.brain.mask.hdr", np.ones(SHAPE, np.uint8))  # not part of the layout


def test_lpba40_analyze_and_hippocampus_labels(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_lpba40(src)
    code, _, err = convert(capsys, "lpba40", src)
    assert code == 0, err
    out = read(raw / "Dataset001_LPBA40" / "labelsTr" / "S01.nii.gz")
    assert out.shape == SHAPE
    assert [int(out[1, 1, x]) for x in (0, 2, 4)] == [1, 2, 0]  # 165 left, 166 right, other structures dropped


def test_lpba40_missing_label(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_lpba40(src)
    for f in (src / "native_space" / "S02").glob("S02.native.label.*"):
        f.unlink()
    code, _, err = convert(capsys, "lpba40", src)
    assert code == 2 and "case S02" in err and "S02.native.mri.hdr" in err and "no matching mask" in err
    assert_nothing_written(raw)


def make_lpba40_nifti(src: Path, subjects=("S01", "S02")) -> None:
    """The delineation-space NIfTI files as distributed now: images/ and labels/ side by side."""
    for i, subject in enumerate(subjects):
        write(src / "images" / f"{subject}.delineation.skullstripped.nii.gz", image(i))
        write(src / "labels" / f"{subject}.delineation.structure.label.nii.gz", mask(165, 166, 21, 22, 182))


def test_lpba40_default_keeps_the_hippocampus_labels(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_lpba40(src)
    assert convert(capsys, "lpba40", src)[0] == 0
    meta = json.loads((raw / "Dataset001_LPBA40" / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, "left": 1, "right": 2}  # as before --structures, and as harp's


@pytest.mark.parametrize("sides, labels, expected", [
    # blocks along x hold 165 (left hippocampus), 166, 21 / 22 (superior frontal), 182 (brainstem)
    ("separate", {"background": 0, "left_superior_frontal_gyrus": 1, "right_superior_frontal_gyrus": 2,
                  "left_hippocampus": 3, "brainstem": 4}, [3, 0, 1, 2, 4]),
    ("merged", {"background": 0, "superior_frontal_gyrus": 1, "left_hippocampus": 2, "brainstem": 3},
     [2, 0, 1, 1, 3]),
])
def test_lpba40_nifti_and_structures_by_name_and_code(folders, capsys, sides, labels, expected) -> None:
    src, raw = folders["src"], folders["raw"]
    make_lpba40_nifti(src)
    code, _, err = convert(capsys, "lpba40", src, "--structures", "superior frontal, left_hippocampus,182",
                           "--sides", sides)
    assert code == 0, err
    ds = raw / "Dataset001_LPBA40"
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == ["S01.nii.gz", "S02.nii.gz"]
    assert json.loads((ds / "dataset.json").read_text(encoding="utf-8"))["labels"] == labels
    out = read(ds / "labelsTr" / "S02.nii.gz")
    assert [int(out[1, 1, 2 * i]) for i in range(5)] == expected
    np.testing.assert_array_equal(read(ds / "imagesTr" / "S02_0000.nii.gz"), image(1))


@pytest.mark.parametrize("spec, message", [
    ("hipocampus", "unknown LPBA40 structure 'hipocampus'; valid names are superior_frontal_gyrus,"),
    ("hippocampus,99", "unknown LPBA40 structure '99'"),
    ("hippocampus,165", "selects left_hippocampus (165) twice"),
])
def test_lpba40_bad_structures_are_argparse_errors(folders, capsys, spec, message) -> None:
    make_lpba40_nifti(folders["src"])
    with pytest.raises(SystemExit) as exit_:
        convert(capsys, "lpba40", folders["src"], "--structures", spec)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--structures" in err and message in err
    if "valid names" in message:
        assert "cerebellum, brainstem" in err and "left_NAME" in err


def make_lpba40_heads(src: Path, subjects: int) -> None:
    """Heads of 10 x 20 x 30 voxels (1 x 2 x 0.5 mm) with a left (165) and a right (166) hippocampus."""
    for s in range(1, subjects + 1):
        label = np.zeros((10, 20, 30), np.uint8)
        label[4:6, 8:10, 4:8] = 165
        label[4:6, 8:10 + s, 20:24] = 166  # volumes differ per subject
        label[0, 0, 15] = 21  # another structure between them, which must not widen either crop
        write(src / "images" / f"S{s:02d}.delineation.skullstripped.nii.gz",
              np.random.default_rng(s).random((10, 20, 30)), spacing=(0.5, 2.0, 1.0))
        write(src / "labels" / f"S{s:02d}.delineation.structure.label.nii.gz", label, spacing=(0.5, 2.0, 1.0))


@pytest.mark.parametrize("sides, right_value", [("separate", 2), ("merged", 1)])
def test_lpba40_split_sides_makes_cropped_per_side_cases_in_grouped_folds(folders, capsys, sides, right_value) -> None:
    src, raw, pre = folders["src"], folders["raw"], folders["pre"]
    make_lpba40_heads(src, 4)
    code, out, err = convert(capsys, "lpba40", src, "--split-sides", "--crop-margin", "1", "--sides", sides,
                             "--folds", "2")
    assert code == 0, err
    ds = raw / "Dataset001_LPBA40"
    ids = [f"S{s:02d}{side}" for s in range(1, 5) for side in "LR"]
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in ids]
    left, right = read(ds / "labelsTr" / "S03L.nii.gz"), read(ds / "labelsTr" / "S03R.nii.gz")
    # 1 mm is 2 voxels along x (0.5 mm), 1 along y (2 mm, rounded up) and 1 along z
    assert left.shape == (4, 4, 8) and right.shape == (4, 7, 8)
    assert np.unique(left).tolist() == [0, 1] and np.unique(right).tolist() == [0, right_value]
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "images" / "S03.delineation.skullstripped.nii.gz")))
    np.testing.assert_array_equal(read(ds / "imagesTr" / "S03R_0000.nii.gz"), source[3:7, 7:14, 18:26])
    assert np.allclose(sitk.ReadImage(str(ds / "imagesTr" / "S03R_0000.nii.gz")).GetOrigin(), (9.0, 14.0, 3.0))
    splits = json.loads((pre / "Dataset001_LPBA40" / "splits_final.json").read_text(encoding="utf-8"))
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == ids
        for subject in range(1, 5):  # both sides of a subject on the same side of every split
            assert (f"S{subject:02d}L" in fold["val"]) == (f"S{subject:02d}R" in fold["val"])
    assert "2-fold splits grouped by subject (4 subjects" in out and "+ 1 mm on every side" in out


@pytest.mark.parametrize("args, message", [
    (["--split-sides"], "--split-sides makes a left and a right case from each head, which uncropped would be "
                        "two whole-head copies; add --crop-margin MM"),
    (["--split-sides", "--crop-margin", "4", "--structures", "hippocampus,cerebellum"],
     "cerebellum lie(s) on neither side"),
    (["--split-sides", "--crop-margin", "4", "--folds", "3"],
     "3-fold cross-validation grouped by subject needs at least 3 subjects, found 2 (in 4 cases)"),
    (["--crop-margin", "-1"], "--crop-margin must be a distance of 0 mm or more"),
])
def test_lpba40_split_sides_errors(folders, capsys, args, message) -> None:
    make_lpba40_heads(folders["src"], 2)
    code, _, err = convert(capsys, "lpba40", folders["src"], *args)
    assert code == 2 and message in err
    assert_nothing_written(folders["raw"])


@pytest.mark.parametrize("split", [True, False])
def test_lpba40_crop_around_other_structures_than_the_labels(folders, capsys, split) -> None:
    """A base dataset that does not label the hippocampus, cropped around it, gets the target's crops."""
    src, raw = folders["src"], folders["raw"]
    make_lpba40_heads(src, 2)
    sides = ["--split-sides"] if split else []
    common = ["--crop-margin", "1", "--sides", "merged", *sides, "-q"]
    assert convert(capsys, "lpba40", src, "--structures", "hippocampus", "-d", "1", *common)[0] == 0
    code, _, err = convert(capsys, "lpba40", src, "--structures", "superior_frontal", "--crop-around", "hippocampus",
                           "-d", "2", *common)
    assert code == 0, err
    target, base = raw / "Dataset001_LPBA40", raw / "Dataset002_LPBA40"
    names = sorted(p.name for p in (target / "imagesTr").iterdir())
    assert names == sorted(p.name for p in (base / "imagesTr").iterdir())
    assert names == (["S01L_0000.nii.gz", "S01R_0000.nii.gz", "S02L_0000.nii.gz", "S02R_0000.nii.gz"] if split
                     else ["S01_0000.nii.gz", "S02_0000.nii.gz"])
    for name in names:
        a, b = (sitk.ReadImage(str(d / "imagesTr" / name)) for d in (target, base))
        assert a.GetSize() == b.GetSize() and a.GetOrigin() == b.GetOrigin()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    # the base labels only its own structure (21, in a corner outside every hippocampus crop): the
    # hippocampus it was cropped around is background to it
    for name in names:
        assert not read(base / "labelsTr" / name.replace("_0000", "")).any()
        assert read(target / "labelsTr" / name.replace("_0000", "")).any()


@pytest.mark.parametrize("args, message", [
    (["--crop-around", "hippocampus"], "--crop-around says what to crop around, but nothing is cropped; "
                                       "add --crop-margin MM"),
    (["--crop-around", "cerebellum", "--split-sides", "--crop-margin", "2"],
     "--crop-around's cerebellum lie(s) on neither side"),
    (["--crop-around", "caudate", "--crop-margin", "2"], "the structures to crop around"),
])
def test_lpba40_crop_around_errors(folders, capsys, args, message) -> None:
    make_lpba40_heads(folders["src"], 2)
    code, _, err = convert(capsys, "lpba40", folders["src"], *args)
    assert code == 2 and message in err, err
    assert_nothing_written(folders["raw"])


def make_lorapt(src: Path) -> None:
    for i in range(1, 5):
        write(src / f"sub{i}" / f"sub{i}_img.nii.gz", image(i))
        write(src / f"sub{i}" / f"sub{i}_mask.nii.gz", mask(1, 2))


def test_lorapt_excludes_subjects(folders, capsys, tmp_path) -> None:
    src, raw = folders["src"], folders["raw"]
    make_lorapt(src)
    listing = tmp_path / "exclude.txt"
    listing.write_text("sub2  # motion\n")
    code, _, err = convert(capsys, "lorapt", src, "--exclude", "sub4", "--exclude-file", str(listing),
                           "--labels", ">0->1")
    assert code == 0, err
    ds = raw / "Dataset001_LoRAPT"
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == ["sub1.nii.gz", "sub3.nii.gz"]
    assert np.unique(read(ds / "labelsTr" / "sub1.nii.gz")).tolist() == [0, 1]


def test_lorapt_unknown_excluded_subject(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_lorapt(src)
    code, _, err = convert(capsys, "lorapt", src, "--exclude", "sub44")
    assert code == 2 and "case sub44" in err and "does not exist" in err
    assert_nothing_written(raw)


def make_brats(src: Path, case: str, seg: np.ndarray | None, modalities=("t1", "t1ce", "t2", "flair")) -> None:
    for c, m in enumerate(modalities):
        write(src / case / f"{case}_{m}.nii.gz", image(c))
    if seg is not None:
        write(src / case / f"{case}_seg.nii.gz", seg)


def test_brats2021_follows_dataset137(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_brats(src, "BraTS2021_00000", mask(1, 2, 4))
    make_brats(src, "BraTS2021_00001", mask(2))
    make_brats(src, "BraTS2021_01000", None)  # validation case: no segmentation
    code, out, err = convert(capsys, "brats2021", src, dataset_id=137)
    assert code == 0, err
    ds = raw / "Dataset137_BraTS2021"
    meta = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                              "enhancing tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3]
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    np.testing.assert_array_equal(read(ds / "imagesTr" / "BraTS2021_00000_0003.nii.gz"), image(3))
    out_mask = read(ds / "labelsTr" / "BraTS2021_00000.nii.gz")
    assert [int(out_mask[1, 1, x]) for x in (0, 2, 4)] == [2, 1, 3]  # necrosis 1->2, edema 2->1, enhancing 4->3
    assert len(list((ds / "imagesTs").iterdir())) == 4
    assert "edema" in out and "enhancing tumor" in out


def test_brats2021_missing_modality_and_unknown_label(folders, capsys) -> None:
    src, raw = folders["src"], folders["raw"]
    make_brats(src, "BraTS2021_00000", mask(1, 3))
    make_brats(src, "BraTS2021_00001", mask(1), modalities=("t1", "t1ce", "t2"))
    code, _, err = convert(capsys, "brats2021", src)
    assert code == 2
    assert "case BraTS2021_00001" in err and "no flair image" in err
    assert "case BraTS2021_00000" in err and "BraTS2021_00000_seg.nii.gz" in err and "label value(s) 3" in err
    assert_nothing_written(raw)
