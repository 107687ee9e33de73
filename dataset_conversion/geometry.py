"""Comparing the physical grids of an image and its mask (size, spacing, origin, direction), and
cropping both to the mask's foreground."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class GeometryTolerance:
    """How far two grids may differ and still count as the same.

    Spacing and origin agree if they are within ``relative`` of each other's magnitude OR within
    ``absolute`` mm: exporters round to a few significant digits (relative), and origins near 0 need
    an absolute floor. Direction cosines are unitless, so they get an absolute tolerance only.
    """

    relative: float = 1e-4
    absolute: float = 1e-3  # mm
    direction: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("relative", "absolute", "direction"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"geometry tolerance {name} must be >= 0, got {getattr(self, name)}")

    def close(self, a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        x, y = np.asarray(a, float), np.asarray(b, float)
        return bool(np.all(np.abs(x - y) <= np.maximum(self.absolute, self.relative * np.abs(x))))


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def geometry_differences(reference: sitk.Image, other: sitk.Image, tol: GeometryTolerance) -> list[str]:
    """Human-readable differences of ``other`` from ``reference``; empty if they match within ``tol``."""
    if reference.GetSize() != other.GetSize():
        # sizes differing makes the metadata comparison meaningless: report it alone
        return [f"size {other.GetSize()} instead of {reference.GetSize()}"]
    diffs = []
    if not tol.close(reference.GetSpacing(), other.GetSpacing()):
        diffs.append(f"spacing {_fmt(other.GetSpacing())} instead of {_fmt(reference.GetSpacing())}")
    if not tol.close(reference.GetOrigin(), other.GetOrigin()):
        diffs.append(f"origin {_fmt(other.GetOrigin())} instead of {_fmt(reference.GetOrigin())}")
    if not np.allclose(reference.GetDirection(), other.GetDirection(), rtol=0, atol=tol.direction):
        diffs.append(f"direction {_fmt(other.GetDirection())} instead of {_fmt(reference.GetDirection())}")
    return diffs


def same_size(reference: sitk.Image, other: sitk.Image) -> bool:
    return reference.GetSize() == other.GetSize()


@dataclass(frozen=True)
class CropBox:
    """A box of voxels in SimpleITK's (x, y, z) order: first voxel and extent per axis."""

    index: tuple[int, ...]
    size: tuple[int, ...]

    def crop(self, image: sitk.Image) -> sitk.Image:
        # RegionOfInterest keeps spacing and direction and puts the origin at the first kept voxel,
        # so the cropped voxels stay where they were in physical space, oblique grids included
        return sitk.RegionOfInterest(image, list(self.size), list(self.index))

    def slices(self) -> tuple[slice, ...]:
        """The same box for a numpy array, whose axes are (z, y, x)."""
        return tuple(slice(i, i + n) for i, n in zip(reversed(self.index), reversed(self.size)))


def foreground_box(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> CropBox | None:
    """The bounding box of ``mask > 0`` (a numpy (z, y, x) array) grown by ``margin_mm`` on every side
    and clipped to the grid; None when the mask has no foreground.

    The margin is ceil(margin_mm / spacing) voxels along each axis, with that axis' own ``spacing``
    (x, y, z as SimpleITK gives it), so that a thick-slice axis gets as many mm as a thin one.
    """
    foreground = mask > 0
    if not foreground.any():
        return None
    index, size = [], []
    for axis, step in enumerate(spacing):
        np_axis = mask.ndim - 1 - axis
        present = np.flatnonzero(foreground.any(axis=tuple(a for a in range(mask.ndim) if a != np_axis)))
        # 8 mm / 0.8 mm is 10.000000000000002 in floating point: that is 10 voxels, not 11
        pad = math.ceil(margin_mm / step - 1e-6)
        low, high = max(0, int(present[0]) - pad), min(mask.shape[np_axis], int(present[-1]) + 1 + pad)
        index.append(low)
        size.append(high - low)
    return CropBox(tuple(index), tuple(size))
