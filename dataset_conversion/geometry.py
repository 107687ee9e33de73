"""Comparing the physical grids of an image and its mask (size, spacing, origin, direction)."""
from __future__ import annotations

from dataclasses import dataclass

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
