"""Reading the images and masks of every supported layout into 3-D SimpleITK images.

SimpleITK covers NIfTI, NRRD, MHA/MHD, Analyze (.hdr/.img), MINC and DICOM (a folder holding one
series). Everything is written back as NIfTI (.nii.gz), the file ending the converted datasets use.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

# longest first, so that "a.nii.gz" is not taken for a ".gz" file
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".mnc", ".mnc2")
OUTPUT_ENDING = ".nii.gz"


class ImageReadError(Exception):
    """A file that could not be turned into a 3-D image; the message says why and what to do."""


@dataclass(frozen=True)
class ImageSource:
    """One 3-D volume to read: a file, a DICOM series folder, or one volume of a 4-D file."""

    path: Path
    volume: int | None = None  # index along the 4th axis (MSD stores multi-channel cases as 4-D)

    def __str__(self) -> str:
        return str(self.path) + (f" (volume {self.volume})" if self.volume is not None else "")


def split_extension(name: str) -> tuple[str, str] | None:
    """``("case", ".nii.gz")`` for an image file name, None for anything else."""
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    return None


def read_image(source: ImageSource) -> sitk.Image:
    image = _read_dicom_series(source.path) if source.path.is_dir() else _read_file(source.path)
    return _as_3d(image, source)


def _read_file(path: Path) -> sitk.Image:
    if not path.exists():
        raise ImageReadError("file does not exist")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        hint = "check that it is a complete, uncorrupted image file"
        if path.name.lower().endswith((".mnc", ".mnc2")):
            hint = ("this SimpleITK build could not read the MINC file; convert it to NIfTI first, "
                    "e.g. `mnc2nii file.mnc file.nii`, and convert the NIfTI files")
        elif path.name.lower().endswith(".hdr"):
            hint = "an Analyze image needs its .img file next to the .hdr; check that both are there"
        raise ImageReadError(f"cannot be read ({_first_line(e)}); {hint}") from None


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageReadError("is a folder without a DICOM series; put one case's DICOM files (one series) in it")
    if len(series) > 1:
        raise ImageReadError(f"holds {len(series)} DICOM series ({', '.join(series)}); keep exactly one series "
                             f"per case folder")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise ImageReadError(f"DICOM series cannot be read ({_first_line(e)}); check that no slice is "
                             f"missing or corrupt") from None


def _as_3d(image: sitk.Image, source: ImageSource) -> sitk.Image:
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(f"has {image.GetNumberOfComponentsPerPixel()} components per voxel (vector/RGB "
                             f"image); store one scalar volume per file")
    if dim == 3:
        if source.volume not in (None, 0):
            raise ImageReadError(f"is 3-D, but it should hold channel {source.volume} as its volume "
                                 f"{source.volume} (dataset.json lists more channels than the file holds)")
        return image
    if dim == 4:
        n = image.GetSize()[3]
        index = source.volume if source.volume is not None else 0
        if source.volume is None and n != 1:
            raise ImageReadError(f"is 4-D with {n} volumes where one 3-D volume was expected; split it into "
                                 f"one file per channel/time point")
        if not 0 <= index < n:
            raise ImageReadError(f"has {n} volumes along its 4th axis but volume {index} was expected "
                                 f"(dataset.json lists more channels than the file holds)")
        size = list(image.GetSize())
        size[3] = 0  # a zero extent collapses the axis and keeps the 3-D spacing/origin/direction
        return sitk.Extract(image, size, [0, 0, 0, index])
    raise ImageReadError(f"is {dim}-D; only 3-D images (or 4-D files with the volumes as channels) are supported")


def _first_line(error: Exception) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    # ITK puts the useful sentence last, after file/line noise
    return lines[-1] if lines else type(error).__name__


def write_image(image: sitk.Image, path: Path) -> None:
    sitk.WriteImage(image, str(path), useCompression=True)
