"""Per-case segmentation metrics: Dice, 95% Hausdorff distance and foreground volume per label.

Conventions (the report repeats them):

- A *label* is either one integer value of the label map or a region, a tuple of values whose union
  is the structure (nnU-Net's region-based training, e.g. BraTS). Background is never evaluated.
- Dice of two empty masks is 1 (nothing to find, nothing found); Dice with exactly one side empty is 0.
- HD95 follows the widely used MedPy definition: the surface of a mask is its voxels that touch the
  background (6-/4-connectivity erosion, the image edge counts as background); the directed
  surface distances in both directions, in mm using the voxel spacing, are pooled and their 95th
  percentile taken. HD95 is undefined (NaN) when either mask is empty; reports count those cases
  instead of inventing a penalty distance.
- Voxels of the reference carrying nnU-Net's ``ignore`` label are removed from both masks.
- Volume in mL is voxel count x product of the spacing in mm / 1000.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import numpy as np
from scipy import ndimage

LabelSpec = Union[int, tuple[int, ...]]
# A label set as callers tend to hold it: dataset.json's {"name": value-or-list} or a plain list.
Labels = Union[Mapping[str, Union[int, Sequence[int]]], Sequence[LabelSpec]]
TIFF_ENDINGS = (".tif", ".tiff")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty."""
    pred, ref = _as_bool_pair(pred, ref)
    denominator = int(pred.sum()) + int(ref.sum())
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / denominator


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile surface distance in mm; NaN when either mask is empty."""
    pred, ref = _as_bool_pair(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        return math.nan
    # Only the bounding box of both masks matters: Euclidean distances between surface voxels do
    # not depend on the domain, and cropping makes the distance transforms of large, mostly-empty
    # CT volumes cheap. The one-voxel margin keeps the erosion's view of the background intact.
    box = _bounding_box(pred | ref, margin=1)
    pred, ref = pred[box], ref[box]
    pred_surface = _surface(pred)
    ref_surface = _surface(ref)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    distances = np.concatenate([to_ref[pred_surface], to_pred[ref_surface]])
    return float(np.percentile(distances, 95))


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Foreground volume in millilitres (spacing in mm)."""
    spacing = _check_spacing(spacing, mask.ndim)
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


def normalise_labels(labels: Labels) -> dict[str, LabelSpec]:
    """``{name: value or region}`` without background (0) or ``ignore``, from either accepted form.

    A mapping is read like dataset.json's ``labels`` (name -> int, or list of ints for a region); a
    sequence of ints or tuples gets the value as its name.
    """
    if isinstance(labels, Mapping):
        out: dict[str, LabelSpec] = {}
        for name, value in labels.items():
            if name == "ignore":
                continue
            spec = _label_spec(value, f"label {name!r}")
            if spec not in (0, (0,)):
                out[str(name)] = spec
    else:
        out = {}
        for value in labels:
            spec = _label_spec(value, "label")
            if spec not in (0, (0,)):
                out[str(spec if isinstance(spec, int) else "+".join(map(str, spec)))] = spec
    if not out:
        raise ValueError(f"no foreground label to evaluate in {labels!r}; give values >= 1 "
                         "(or dataset.json's 'labels' mapping)")
    return out


def ignore_label_of(labels: Mapping[str, object]) -> int | None:
    """The value of dataset.json's ``ignore`` label, if it has one."""
    value = labels.get("ignore") if isinstance(labels, Mapping) else None
    return None if value is None else int(value)


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: Labels,
                 ignore_label: int | None = None) -> list[dict]:
    """One row per label: dice, hd95_mm, ref_volume_ml, pred_volume_ml (arrays already loaded)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = _check_spacing(spacing, ref.ndim)
    keep = None if ignore_label is None else ref != ignore_label
    rows = []
    for name, spec in normalise_labels(labels).items():
        values = [spec] if isinstance(spec, int) else list(spec)
        pred_mask, ref_mask = np.isin(pred, values), np.isin(ref, values)
        if keep is not None:
            pred_mask &= keep
            ref_mask &= keep
        rows.append({
            "label": name,
            "dice": dice(pred_mask, ref_mask),
            "hd95_mm": hd95(pred_mask, ref_mask, spacing),
            "ref_volume_ml": volume_ml(ref_mask, spacing),
            "pred_volume_ml": volume_ml(pred_mask, spacing),
        })
    return rows


def read_segmentation(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """Label map as an integer array and its spacing in mm, both in numpy axis order.

    SimpleITK reads the formats nnU-Net writes segmentations in (NIfTI, NRRD, MHA, PNG); its
    spacing is (x, y, z) while its arrays are (z, y, x), hence the reversal. TIFF is read as
    nnU-Net's Tiff3DIO writes it, with the spacing from the ``CASE.json`` beside the file: SimpleITK
    takes such a multi-page TIFF for a 2-D image of several components.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation {path} does not exist")
    if path.suffix.lower() in TIFF_ENDINGS:
        array, spacing = _read_tiff_segmentation(path)
    else:
        array, spacing = _read_sitk_segmentation(path)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise ValueError(f"segmentation {path} holds non-integer values; expected a label map")
        array = rounded.astype(np.int32)
    return array, spacing


def _read_sitk_segmentation(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ValueError(f"cannot read segmentation {path}: {e}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"segmentation {path} has {image.GetNumberOfComponentsPerPixel()} components "
                         "per voxel; expected a single-channel label map")
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing()))


def _read_tiff_segmentation(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import json

    from nnunetv2.imageio.tif_reader_writer import Tiff3DIO

    sidecar = path.with_suffix(".json")
    # nnU-Net falls back to 1 mm with a printed warning; a volume in mL would then be silently wrong
    if not sidecar.is_file():
        raise ValueError(f"segmentation {path} has no spacing file {sidecar} beside it (nnU-Net's Tiff3DIO "
                         'writes one with every TIFF segmentation); add one holding {"spacing": [z, y, x]} in mm')
    try:
        spacing = json.loads(sidecar.read_text(encoding="utf-8"))["spacing"]
        array, _ = Tiff3DIO().read_seg(str(path))
    except Exception as e:  # tifffile, JSON and nnU-Net's asserts fail in many ways; all mean "unreadable"
        raise ValueError(f"cannot read segmentation {path} with its spacing file {sidecar}: {e}") from None
    return array[0], tuple(float(s) for s in spacing)


def evaluate_case(pred_file: str | os.PathLike, ref_file: str | os.PathLike, labels: Labels,
                  ignore_label: int | None = None) -> list[dict]:
    """Metrics rows for one case read from disk; the spacing is the reference's."""
    pred, pred_spacing = read_segmentation(pred_file)
    ref, ref_spacing = read_segmentation(ref_file)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred_file} has shape {pred.shape} but reference {ref_file} has "
                         f"{ref.shape}; predictions must be in the reference's geometry")
    if not np.allclose(pred_spacing, ref_spacing, rtol=1e-3, atol=1e-5):
        raise ValueError(f"prediction {pred_file} has spacing {pred_spacing} but reference {ref_file} "
                         f"has {ref_spacing}")
    return case_metrics(pred, ref, ref_spacing, labels, ignore_label)


def evaluate_folder(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, labels: Labels,
                    file_ending: str = ".nii.gz", ignore_label: int | None = None,
                    num_processes: int = 1) -> list[dict]:
    """Evaluate every prediction in ``pred_dir`` against the same-named file in ``ref_dir``.

    Returns one dict per (case, label) with ``case``, ``label``, ``dice``, ``hd95_mm``,
    ``ref_volume_ml`` and ``pred_volume_ml``, sorted by case. A prediction without a reference is
    an error (it names the file); references without predictions are ignored, because nnU-Net's
    validation folders hold only one fold's cases.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder {folder} does not exist")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    labels = normalise_labels(labels)  # validate once, before any work
    cases = sorted(p.name[: -len(file_ending)] for p in pred_dir.iterdir()
                   if p.is_file() and p.name.endswith(file_ending))
    if not cases:
        raise FileNotFoundError(f"no '*{file_ending}' predictions in {pred_dir}")
    missing = [c for c in cases if not (ref_dir / f"{c}{file_ending}").is_file()]
    if missing:
        raise FileNotFoundError(f"no reference in {ref_dir} for {len(missing)} prediction(s) of "
                                f"{pred_dir}, e.g. {missing[0]}{file_ending}")
    jobs = [(pred_dir / f"{c}{file_ending}", ref_dir / f"{c}{file_ending}", labels, ignore_label)
            for c in cases]
    if num_processes == 1 or len(jobs) == 1:
        per_case = [evaluate_case(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(min(num_processes, len(jobs))) as pool:
            per_case = list(pool.map(evaluate_case, *zip(*jobs)))
    return [{"case": case, **row} for case, rows in zip(cases, per_case) for row in rows]


def _as_bool_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _check_spacing(spacing: Iterable[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing {spacing} must hold {ndim} positive finite values (mm per voxel)")
    return spacing


def _label_spec(value: object, what: str) -> LabelSpec:
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, (int, np.integer)) for v in value):
            raise ValueError(f"{what} region {value!r} must be a non-empty list of integers")
        return tuple(int(v) for v in value) if len(value) > 1 else int(value[0])
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{what} must be an integer value or a list of values, got {value!r}")


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, mask.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, border_value=0)
