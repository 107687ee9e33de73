"""Per-case, per-label volumes in mL from a folder of segmentations (``nnunet-peft volumes``).

A volume here is the benchmark's (``evaluation.metrics``: its reader, its label sets and
``volume_ml``), so a case measures the same in this table as in a benchmark report.

The table has one row per case (``case`` = the file name without its ending, as nnU-Net names
predictions) and one column ``<label>_ml`` per label: dataset.json's label names (regions
included, background and ``ignore`` left out) when it is given, otherwise every non-zero value
found in any case, named by its value. A label absent from a case has volume 0.

A reference volume for normalisation can be added, in two kinds:

- ``image``: the non-zero region of the case's image (all channels ``CASE_XXXX<ending>`` of an
  nnU-Net images folder), holes filled, exactly nnU-Net's ``create_nonzero_mask`` that it crops
  to. For skull-stripped MRI this is the brain volume; for CT (air is -1000, not 0) it is the
  whole field of view, which normalises nothing; use ``mask`` there.
- ``mask``: the non-zero voxels of a same-named mask in another folder, e.g. an intracranial
  mask from a brain-extraction tool or another nnU-Net model.

Its column is ``image_nonzero_ml`` or ``icv_ml``, and every label gets a ``<label>_fraction``
column: its volume divided by the reference volume.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from nnunet_peft.atomic import staged_file
from nnunet_peft.evaluation.metrics import (TIFF_ENDINGS, LabelSpec, ignore_label_of, normalise_labels,
                                            read_segmentation, volume_ml)

# what nnU-Net's reader/writers write segmentations as (SimpleITKIO, NibabelIO, Tiff3DIO, NaturalImage2DIO);
# longest first so that ".nii.gz" wins over a shorter ending of the same name
SEGMENTATION_ENDINGS = (".nii.gz", ".nrrd", ".gipl", ".tiff", ".mha", ".nii", ".tif", ".png", ".bmp")
REFERENCE_KINDS = {"image": "image_nonzero_ml", "mask": "icv_ml"}
CASE_COLUMN = "case"


def find_segmentations(seg_dir: str | os.PathLike, file_ending: str | None = None) -> tuple[dict[str, Path], str]:
    """``({case: file}, file_ending)`` of ``seg_dir``; without ``file_ending`` the one segmentation format present.

    Other files (nnU-Net's prediction folders also hold plans.json, dataset.json, .npz
    probabilities; TIFF segmentations have .json spacing files) are not segmentations and are skipped.
    """
    seg_dir = Path(seg_dir)
    if not seg_dir.is_dir():
        raise FileNotFoundError(f"segmentation folder {seg_dir} does not exist")
    files = sorted(p for p in seg_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if file_ending is None:
        found = sorted({e for p in files if (e := _ending(p.name)) is not None})
        if not found:
            raise FileNotFoundError(f"no segmentation in {seg_dir}: expected files ending in "
                                    f"{', '.join(SEGMENTATION_ENDINGS)} (or give --file-ending)")
        if len(found) > 1:
            raise ValueError(f"{seg_dir} holds segmentations in {len(found)} formats ({', '.join(found)}); "
                             "choose one with --file-ending")
        file_ending = found[0]
    cases = {p.name[: -len(file_ending)]: p for p in files if p.name.endswith(file_ending)}
    if not cases:
        raise FileNotFoundError(f"no '*{file_ending}' segmentation in {seg_dir}")
    return cases, file_ending


def case_volumes(seg_file: str | os.PathLike, labels: Mapping[str, LabelSpec] | None = None,
                 ignore_label: int | None = None, reference: str | None = None,
                 reference_files: Sequence[str | os.PathLike] = ()) -> dict[str, float]:
    """``{label name: mL}`` of one segmentation, plus the reference volume under its column name.

    ``labels`` as ``normalise_labels`` returns them (None: every non-zero value present). A value
    that ``labels`` do not name is an error: the segmentation is not of this label set.
    """
    seg, spacing = read_segmentation(seg_file)
    if seg.ndim != 3:
        raise ValueError(f"segmentation {seg_file} is {seg.ndim}-D (shape {seg.shape}); volumes in mL need "
                         "3-D label maps")
    present = [int(v) for v in np.unique(seg)]
    if labels is None:
        labels = {str(v): v for v in present if v != 0}
    else:
        named = {0} | ({ignore_label} if ignore_label is not None else set())
        named |= {v for spec in labels.values() for v in _values(spec)}
        unknown = [v for v in present if v not in named]
        if unknown:
            raise ValueError(f"segmentation {seg_file} holds values {unknown} that the labels "
                             f"({', '.join(f'{n}={s}' for n, s in labels.items())}) do not name; give the "
                             "dataset.json the segmentations were made with")
    volumes = {name: volume_ml(np.isin(seg, _values(spec)), spacing) for name, spec in labels.items()}
    if reference is not None:
        volumes[REFERENCE_KINDS[reference]] = volume_ml(_reference_mask(reference, reference_files, seg.shape,
                                                                        seg_file), spacing)
    return volumes


def volume_table(seg_dir: str | os.PathLike, labels: Mapping[str, object] | Sequence | None = None,
                 file_ending: str | None = None, reference: str | None = None,
                 reference_dir: str | os.PathLike | None = None, num_processes: int = 1) -> pd.DataFrame:
    """The volumes table of every segmentation in ``seg_dir`` (see the module docstring for its columns).

    ``labels``: dataset.json's ``labels`` mapping or a list of values (None: every value found).
    ``reference``: None, ``"image"`` or ``"mask"``, read from ``reference_dir``.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if reference is not None and reference not in REFERENCE_KINDS:
        raise ValueError(f"reference must be one of {', '.join(REFERENCE_KINDS)}, got {reference!r}")
    if (reference is None) != (reference_dir is None):
        raise ValueError("a reference volume needs both its kind (--normalise image|mask) and its folder "
                         "(--reference-dir)")
    ignore_label = ignore_label_of(labels) if isinstance(labels, Mapping) else None
    specs = None if labels is None else normalise_labels(labels)  # validated before any file is read
    cases, file_ending = find_segmentations(seg_dir, file_ending)
    references = {c: _reference_files(reference, Path(reference_dir), c, file_ending) for c in cases} \
        if reference is not None else {c: () for c in cases}
    jobs = [(cases[c], specs, ignore_label, reference, references[c]) for c in cases]
    if num_processes == 1 or len(jobs) == 1:
        per_case = [case_volumes(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(min(num_processes, len(jobs))) as pool:
            per_case = list(pool.map(case_volumes, *zip(*jobs)))
    names = list(specs) if specs is not None else \
        [str(v) for v in sorted({int(n) for row in per_case for n in row if n not in REFERENCE_KINDS.values()})]
    table = pd.DataFrame({CASE_COLUMN: list(cases)})
    for name in names:
        table[f"{name}_ml"] = [row.get(name, 0.0) for row in per_case]
    if reference is not None:
        column = REFERENCE_KINDS[reference]
        table[column] = [row[column] for row in per_case]
        empty = table.loc[table[column] <= 0, CASE_COLUMN].tolist()
        if empty:
            raise ValueError(f"the {reference} reference of case(s) {', '.join(empty)} in {reference_dir} is empty; "
                             "a volume cannot be normalised by 0 mL")
        for name in names:
            table[f"{name}_fraction"] = table[f"{name}_ml"] / table[column]
    return table


def write_volume_table(table: pd.DataFrame, out: str | os.PathLike, overwrite: bool = False) -> Path:
    with staged_file(out, overwrite) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return Path(out)


def read_dataset_labels(dataset_json: str | os.PathLike) -> tuple[dict, str | None]:
    """``(labels, file_ending)`` of a dataset.json."""
    path = Path(dataset_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset.json {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read dataset.json {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise ValueError(f"{path} has no 'labels' mapping; expected an nnU-Net dataset.json")
    return data["labels"], data.get("file_ending")


def _ending(name: str) -> str | None:
    return next((e for e in SEGMENTATION_ENDINGS if name.endswith(e)), None)


def _values(spec: LabelSpec) -> list[int]:
    return [spec] if isinstance(spec, int) else list(spec)


def _reference_files(reference: str, folder: Path, case: str, file_ending: str) -> tuple[Path, ...]:
    if not folder.is_dir():
        raise FileNotFoundError(f"reference folder {folder} does not exist")
    if reference == "mask":
        path = folder / f"{case}{file_ending}"
        if not path.is_file():
            raise FileNotFoundError(f"no mask {path} for case {case} (--normalise mask reads CASE{file_ending} "
                                    f"from {folder})")
        return (path,)
    channels = sorted(folder.glob(f"{case}_[0-9][0-9][0-9][0-9]{file_ending}"))
    if not channels:
        raise FileNotFoundError(f"no image {folder / f'{case}_0000{file_ending}'} for case {case} (--normalise "
                                f"image reads nnU-Net's CASE_XXXX{file_ending} channel files from {folder})")
    return tuple(channels)


def _reference_mask(reference: str, files: Sequence[str | os.PathLike], shape: tuple[int, ...],
                    seg_file: str | os.PathLike) -> np.ndarray:
    if reference == "mask":
        mask, _ = read_segmentation(files[0])
        if mask.shape != shape:
            raise ValueError(f"mask {files[0]} has shape {mask.shape} but segmentation {seg_file} has {shape}; "
                             "they must share a geometry")
        return mask != 0
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.imageio.tif_reader_writer import Tiff3DIO
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    io = Tiff3DIO() if Path(files[0]).suffix.lower() in TIFF_ENDINGS else SimpleITKIO()
    try:
        data, _ = io.read_images([str(f) for f in files])
    except Exception as e:  # nnU-Net's readers assert and raise RuntimeError; either way the files are unreadable
        raise ValueError(f"cannot read image {', '.join(map(str, files))}: {str(e) or type(e).__name__}") from None
    if data.shape[1:] != shape:
        raise ValueError(f"image {files[0]} has shape {data.shape[1:]} but segmentation {seg_file} has {shape}; "
                         "they must share a geometry")
    return create_nonzero_mask(data)
