"""The conversion every layout shares: discover -> check every case -> (crop) -> write to a temporary
folder -> move into place, then dataset.json, an optional splits_final.json and a summary.

Cropping (``ConvertOptions.crop_margin``) cuts each labelled case down to its mask's foreground plus a
margin in mm (``geometry.foreground_box``), for benchmarks on small structures. Cases with a
``Case.group`` (e.g. both sides of one subject) get grouped folds (``splits.grouped_kfold_splits``).

Checking and writing happen in one pass (each file is read once per case); writing stops at the first
problem but checking goes on, so that one run lists every problem of the input.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

from nnunet_peft.dataset_conversion.cases import Case, ConversionError, Problem
from nnunet_peft.dataset_conversion.formats.base import LabelValue, Layout
from nnunet_peft.dataset_conversion.geometry import (CropBox, GeometryTolerance, foreground_box,
                                                     geometry_differences, same_size)
from nnunet_peft.dataset_conversion.imageio import OUTPUT_ENDING, ImageReadError, ImageSource, read_image, write_image
from nnunet_peft.dataset_conversion.labels import format_values, integer_labels
from nnunet_peft.dataset_conversion.splits import (grouped_kfold_splits, grouped_stratified_splits, kfold_splits,
                                                   stratified_splits)

_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ConvertOptions:
    dataset_id: int
    dataset_name: str
    raw_dir: Path
    preprocessed_dir: Path | None = None  # needed for splits_final.json; also checked for ID clashes
    overwrite: bool = False
    fix_geometry: bool = False
    tolerance: GeometryTolerance = GeometryTolerance()
    folds: int | None = None
    stratify: bool = False
    max_cases: int | None = None
    crop_margin: float | None = None  # mm around the mask's foreground; None: keep the whole image

    def __post_init__(self) -> None:
        if not 1 <= self.dataset_id <= 999:
            raise ValueError(f"dataset ID must be between 1 and 999 (nnU-Net names it with 3 digits), "
                             f"got {self.dataset_id}")
        if not _DATASET_NAME.fullmatch(self.dataset_name):
            raise ValueError(f"dataset name {self.dataset_name!r} must start with a letter or digit and hold only "
                             f"letters, digits, '_', '-' and '.', e.g. 'SAH' or 'Hippocampus_HarP'")
        if self.raw_dir.exists() and not self.raw_dir.is_dir():
            raise FileExistsError(f"nnUNet_raw {self.raw_dir} is a file, not a folder; point --raw (or the "
                                  f"nnUNet_raw environment variable) at a folder")
        if self.folds is not None:
            if self.folds < 2:
                raise ValueError(f"--folds must be at least 2, got {self.folds}")
            if self.preprocessed_dir is None:
                raise ValueError("--folds writes splits_final.json into nnUNet_preprocessed; set the "
                                 "nnUNet_preprocessed environment variable or pass --preprocessed")
        if self.stratify and self.folds is None:
            raise ValueError("--stratify-volume only applies to splits; add --folds K")
        if self.max_cases is not None and self.max_cases < 1:
            raise ValueError(f"--max-cases must be at least 1, got {self.max_cases}")
        if self.crop_margin is not None and not 0 <= self.crop_margin < float("inf"):
            raise ValueError(f"--crop-margin must be a distance of 0 mm or more, got {self.crop_margin}")

    @property
    def folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.dataset_name}"


@dataclass
class ConversionResult:
    dataset_dir: Path
    training_cases: list[str]
    test_cases: list[str]
    volumes_ml: dict[int, dict[str, float]]  # label value -> case -> foreground volume in mL
    label_names: dict[int, str]
    fixed_geometry: list[str] = field(default_factory=list)
    splits_file: Path | None = None
    folds: int | None = None
    groups: dict[str, str] | None = None  # training case -> group, where the folds keep groups together
    crop_margin: float | None = None
    created_raw: bool = False  # nnUNet_raw did not exist and was created, as nnU-Net's own converters do

    def report(self) -> str:
        lines = [f"created the nnUNet_raw folder {self.dataset_dir.parent}"] if self.created_raw else []
        lines += [f"{self.dataset_dir.name} written to {self.dataset_dir}",
                 f"  cases: {len(self.training_cases)} training (imagesTr/labelsTr), "
                 f"{len(self.test_cases)} unlabelled (imagesTs)",
                 f"  foreground volume per training case, mL:  {'min':>9} {'median':>9} {'max':>9}  cases with it"]
        for value, per_case in sorted(self.volumes_ml.items()):
            v = np.array(list(per_case.values()))
            label = f"{value} {self.label_names.get(value, '')}"[:38]
            lines.append(f"    {label:<38} {v.min():9.3f} {np.median(v):9.3f} {v.max():9.3f}  "
                         f"{int((v > 0).sum())}/{len(v)}")
        if self.crop_margin is not None:
            lines.append(f"  cropped to the mask's foreground + {self.crop_margin:g} mm on every side")
        if self.fixed_geometry:
            lines.append(f"  --fix-geometry copied the image geometry onto {len(self.fixed_geometry)} mask(s): "
                         f"{', '.join(self.fixed_geometry)}")
        if self.splits_file is not None and self.groups is not None:
            lines.append(f"  {self.folds}-fold splits grouped by subject ({len(set(self.groups.values()))} subjects; "
                         f"a subject's cases are always in the same fold) written to {self.splits_file}")
        elif self.splits_file is not None:
            lines.append(f"  {self.folds}-fold splits written to {self.splits_file}")
        return "\n".join(lines)


def convert(layout: Layout, source: Path, options: ConvertOptions, progress: TextIO | None = sys.stderr) -> ConversionResult:
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"input folder {source} does not exist or is not a folder")
    if options.crop_margin is None and (why := layout.crop_required()):
        raise ValueError(f"{why}; add --crop-margin MM")
    target = options.raw_dir / options.folder_name
    splits_file = (options.preprocessed_dir / options.folder_name / "splits_final.json"
                   if options.folds is not None and options.preprocessed_dir is not None else None)
    _refuse_clashes(options, target, splits_file)
    created_raw = not options.raw_dir.exists()
    try:
        result = _convert(layout, source, options, progress, target, splits_file)
    except BaseException:
        if created_raw:  # a failed run leaves nothing behind, not even the folder it made
            shutil.rmtree(options.raw_dir, ignore_errors=True)
        raise
    result.created_raw = created_raw
    return result


def _convert(layout: Layout, source: Path, options: ConvertOptions, progress: TextIO | None, target: Path,
             splits_file: Path | None) -> ConversionResult:
    options.raw_dir.mkdir(parents=True, exist_ok=True)
    found = layout.discover(source)
    cases = sorted((c for c in found.cases if c.labelled), key=lambda c: c.case_id) + \
        sorted((c for c in found.cases if not c.labelled), key=lambda c: c.case_id)
    if options.max_cases is not None:
        cases = cases[:options.max_cases]
    problems = list(found.problems)
    if not any(c.labelled for c in cases) and not problems:
        problems.append(Problem(f"no labelled cases found; check that this is a '{layout.name}' layout",
                                path=source))

    declared = layout.labels()
    writer = _CaseWriter(options, _label_values(declared) if declared is not None else None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{options.folder_name}.partial-", dir=options.raw_dir))
    try:
        for d in ("imagesTr", "labelsTr"):
            (tmp / d).mkdir()
        for i, case in enumerate(cases, 1):
            if progress is not None:
                print(f"[{i}/{len(cases)}] {case.case_id}", file=progress, flush=True)
            problems += writer.convert(case, tmp, write=not problems)
        labels = declared if declared is not None else _infer_labels(writer.observed, problems)
        groups = _groups(cases, writer.training)
        if options.folds is not None and len(writer.training) < options.folds and not problems:
            problems.append(Problem(f"{options.folds}-fold cross-validation needs at least {options.folds} "
                                    f"labelled cases, found {len(writer.training)}; lower --folds"))
        elif options.folds is not None and groups and len(set(groups.values())) < options.folds and not problems:
            problems.append(Problem(f"{options.folds}-fold cross-validation grouped by subject needs at least "
                                    f"{options.folds} subjects, found {len(set(groups.values()))} (in "
                                    f"{len(writer.training)} cases); lower --folds or add subjects"))
        if problems:
            raise ConversionError(problems, source)
        generate_dataset_json(str(tmp), channel_names=dict(layout.channel_names()), labels=dict(labels),
                              num_training_cases=len(writer.training), file_ending=OUTPUT_ENDING,
                              regions_class_order=layout.regions_class_order(), dataset_name=options.folder_name,
                              converted_by=f"nnunet-peft convert {layout.name}", **layout.dataset_json_extras())
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    names = {v: n for n, v in labels.items() if isinstance(v, int)} | layout.value_names()
    # a label first seen in a later case has no entry for the earlier ones: they hold 0 mL of it
    volumes = {v: {c: per_case.get(c, 0.0) for c in writer.training} for v, per_case in writer.volumes.items()}
    result = ConversionResult(target, writer.training, writer.test, volumes, names, writer.fixed,
                              crop_margin=options.crop_margin)
    if splits_file is not None:
        assert options.folds is not None
        totals = {c: sum(per_case[c] for per_case in volumes.values()) for c in writer.training}
        _write_json_atomically(_splits(totals, groups, options), splits_file)
        result.splits_file, result.folds, result.groups = splits_file, options.folds, groups
    return result


def _groups(cases: list[Case], training: list[str]) -> dict[str, str] | None:
    """``case -> group`` of the training cases, or None when no case has a group (plain folds)."""
    by_id = {c.case_id: c for c in cases}
    if all(by_id[c].group is None for c in training):
        return None
    return {c: by_id[c].group or c for c in training}  # an ungrouped case is a group of its own


def _splits(totals: dict[str, float], groups: dict[str, str] | None,
            options: ConvertOptions) -> list[dict[str, list[str]]]:
    assert options.folds is not None
    if groups is not None:
        # stratifying groups by their total volume keeps both goals: balanced folds, no subject in two
        return (grouped_stratified_splits(totals, groups, options.folds) if options.stratify
                else grouped_kfold_splits(groups, options.folds))
    return (stratified_splits(totals, options.folds) if options.stratify
            else kfold_splits(list(totals), options.folds))


def _refuse_clashes(options: ConvertOptions, target: Path, splits_file: Path | None) -> None:
    """Check before any work that the run may write where it would (nnU-Net needs unique IDs)."""
    prefix = f"Dataset{options.dataset_id:03d}_"
    for root in filter(None, (options.raw_dir, options.preprocessed_dir)):
        if not root.is_dir():
            continue
        for other in root.glob(prefix + "*"):
            if other.name != options.folder_name:
                raise FileExistsError(f"dataset ID {options.dataset_id} is already used by {other}; nnU-Net needs "
                                      f"unique IDs, so choose another -d (or remove that dataset)")
    if target.exists() and not options.overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")
    if splits_file is not None and splits_file.exists() and not options.overwrite:
        raise FileExistsError(f"{splits_file} already exists; pass --overwrite to replace it")


def _label_values(labels: dict[str, LabelValue]) -> set[int]:
    values: set[int] = set()
    for v in labels.values():
        values.update(v if isinstance(v, (tuple, list)) else (v,))
    return values


def _infer_labels(observed: set[int], problems: list[Problem]) -> dict[str, LabelValue]:
    values = sorted(observed | {0})
    if values != list(range(len(values))):
        problems.append(Problem(f"the masks hold label values {format_values(values)}, but nnU-Net needs "
                                f"consecutive labels 0, 1, 2, ...; remap them, e.g. --labels "
                                f"'{values[-1]}->{len(values) - 1}'"))
    return {"background": 0} | {f"label_{v}": v for v in values[1:]}


class _CaseWriter:
    """Checks one case at a time and, while the run is still clean, writes it into the temp folder."""

    def __init__(self, options: ConvertOptions, allowed: set[int] | None) -> None:
        self.options = options
        self.allowed = allowed
        self.training: list[str] = []
        self.test: list[str] = []
        self.volumes: dict[int, dict[str, float]] = {v: {} for v in sorted(allowed or ()) if v > 0}
        self.observed: set[int] = set()
        self.fixed: list[str] = []

    def convert(self, case: Case, out: Path, write: bool) -> list[Problem]:
        problems: list[Problem] = []
        images = [self._read(case, src, problems) for src in case.images]
        if problems:
            return problems
        reference = images[0]
        for src, image in zip(case.images, images):
            if src is not case.images[0] and (diffs := geometry_differences(reference, image, self.options.tolerance)):
                problems.append(Problem(f"channel geometry differs from {case.images[0]}: {'; '.join(diffs)}; all "
                                        f"channels of a case must share one grid, so resample them onto it",
                                        case.case_id, src))
            if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) and \
                    np.isnan(sitk.GetArrayViewFromImage(image)).any():
                problems.append(Problem("image contains NaN values; replace them (e.g. with the background "
                                        "intensity) before converting", case.case_id, src))
        label = self._labels(case, reference, problems) if case.labelled else None
        box = self._crop_box(case, label, reference, problems) if self.options.crop_margin is not None else None
        if problems or not write:
            return problems
        if box is not None and label is not None:
            images, label = [box.crop(image) for image in images], label[box.slices()]
            reference = images[0]

        folder = "imagesTr" if case.labelled else "imagesTs"
        (out / folder).mkdir(exist_ok=True)
        for channel, image in enumerate(images):
            if channel:
                image.CopyInformation(reference)  # within tolerance: make the grids bit-identical for nnU-Net
            write_image(image, out / folder / f"{case.case_id}_{channel:04d}{OUTPUT_ENDING}")
        if label is None:
            self.test.append(case.case_id)
            return problems
        mask = sitk.GetImageFromArray(label.astype(np.uint8 if label.max() < 256 else np.uint16))
        mask.CopyInformation(reference)
        write_image(mask, out / "labelsTr" / f"{case.case_id}{OUTPUT_ENDING}")
        self.training.append(case.case_id)
        voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
        counts = np.bincount(label.ravel())
        for value in sorted(set(self.volumes) | set(range(1, len(counts)))):
            n = int(counts[value]) if value < len(counts) else 0
            self.volumes.setdefault(value, {})[case.case_id] = n * voxel_ml
        return problems

    def _crop_box(self, case: Case, label: np.ndarray | None, reference: sitk.Image,
                  problems: list[Problem]) -> CropBox | None:
        assert self.options.crop_margin is not None
        if not case.labelled:
            problems.append(Problem("--crop-margin crops around the mask, but this image has none; leave "
                                    "unlabelled images out of the input or convert them without --crop-margin",
                                    case.case_id, case.images[0]))
            return None
        if label is None:  # the mask could not be read: already a problem
            return None
        if case.crop_around:
            label = self._crop_mask(case, reference, problems)
            if label is None:
                return None
        box = foreground_box(label, reference.GetSpacing(), self.options.crop_margin)
        if box is None:
            what = "the structures to crop around" if case.crop_around else "the selected structures"
            problems.append(Problem("mask has no foreground after label mapping, so --crop-margin has nothing to "
                                    f"crop around; check that the mask holds {what}, or leave the case out",
                                    case.case_id, case.labels[0].path))
        return box

    def _crop_mask(self, case: Case, reference: sitk.Image, problems: list[Problem]) -> np.ndarray | None:
        """The union of ``case.crop_around``'s mapped masks (their geometry was checked with the labels)."""
        union: np.ndarray | None = None
        for part in case.crop_around:
            mask = self._read(case, ImageSource(part.path), problems)
            if mask is None:
                return None
            values, reason = integer_labels(sitk.GetArrayFromImage(mask))
            if values is None:
                problems.append(Problem(f"mask {reason}", case.case_id, part.path))
                return None
            mapped = part.mapping.apply(values)[0] > 0
            union = mapped if union is None else union | mapped
        return union

    @staticmethod
    def _read(case: Case, source: ImageSource, problems: list[Problem]) -> sitk.Image | None:
        try:
            return read_image(source)
        except ImageReadError as e:
            problems.append(Problem(str(e), case.case_id, source))
            return None

    def _labels(self, case: Case, reference: sitk.Image, problems: list[Problem]) -> np.ndarray | None:
        combined: np.ndarray | None = None
        for part in case.labels:
            n_before = len(problems)
            mask = self._read(case, ImageSource(part.path), problems)
            if mask is None:
                continue
            diffs = geometry_differences(reference, mask, self.options.tolerance)
            if diffs and not same_size(reference, mask):
                problems.append(Problem(f"mask does not fit its image {case.images[0]}: {diffs[0]}; re-export or "
                                        f"resample the mask on the image's grid", case.case_id, part.path))
                continue
            if diffs and not self.options.fix_geometry:
                problems.append(Problem(f"mask geometry differs from its image {case.images[0]}: {'; '.join(diffs)}. "
                                        f"If the mask was drawn on this image and only its header is off, rerun "
                                        f"with --fix-geometry to copy the image's geometry onto the mask; "
                                        f"otherwise resample the mask onto the image", case.case_id, part.path))
            elif diffs and case.case_id not in self.fixed:
                self.fixed.append(case.case_id)
            values, reason = integer_labels(sitk.GetArrayFromImage(mask))
            if values is None:
                problems.append(Problem(f"mask {reason}", case.case_id, part.path))
                continue
            mapped, unmatched = part.mapping.apply(values)
            if unmatched:
                problems.append(Problem(f"mask holds label value(s) {format_values(unmatched)} that the label "
                                        f"mapping '{part.mapping}' does not cover; check that this is the right mask "
                                        f"and format, or map them explicitly (e.g. append ';*->0' to --labels to "
                                        f"send them to background)", case.case_id, part.path))
            present = set(np.flatnonzero(np.bincount(mapped.ravel())).tolist())  # np.unique sorts: slow
            if self.allowed is not None and (extra := sorted(present - self.allowed)):
                problems.append(Problem(f"mask holds label value(s) {format_values(extra)} but the dataset's labels "
                                        f"are {format_values(sorted(self.allowed))}; check the mask or remap its "
                                        f"values", case.case_id, part.path))
            self.observed |= present
            if len(problems) > n_before:
                continue
            if combined is None:
                combined = mapped
                continue
            clash = (combined > 0) & (mapped > 0) & (combined != mapped)
            if clash.any():
                problems.append(Problem(f"{int(clash.sum())} voxels are labelled both in this mask and in "
                                        f"{case.labels[0].path.name} with different labels; fix the overlap, or "
                                        f"merge the labels", case.case_id, part.path))
            combined = np.where(mapped > 0, mapped, combined)
        return combined


def _move_into_place(tmp: Path, target: Path) -> None:
    """Swap the finished folder in with renames (atomic on one file system); restore on failure."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json_atomically(data: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        partial.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
