"""Finding image files in folders, naming them by case id, and pairing images with masks.

This is the part every layout shares: the layouts differ only in where they look and how a file
name turns into a case id.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

from nnunet_peft.dataset_conversion.cases import Case, Discovery, LabelSource, Problem, safe_case_id
from nnunet_peft.dataset_conversion.imageio import ImageSource, split_extension
from nnunet_peft.dataset_conversion.labels import LabelMapping

DEFAULT_IMAGE_PATTERN = r"(?P<id>.+?)(_0000)?"
DEFAULT_MASK_PATTERN = r"(?P<id>.+?)(_(mask|seg|label|labels|gt))?"


def compile_case_pattern(pattern: str, option: str) -> re.Pattern[str]:
    """A regular expression matched against the whole file name without its extension."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{option} {pattern!r} is not a valid regular expression: {e}") from None
    if "id" not in compiled.groupindex and compiled.groups < 1:
        raise ValueError(f"{option} {pattern!r} must capture the case id, as a group named 'id' or as its "
                         f"first group, e.g. 'sub-(?P<id>\\d+)_T1w'")
    return compiled


def _hidden(path: Path) -> bool:
    # macOS leaves "._name" resource forks and ".DS_Store" in archives it touched
    return path.name.startswith(".")


def list_images(folder: Path, *, recursive: bool = False, dicom_folders: bool = False) -> list[tuple[str, Path]]:
    """``(stem, path)`` for every image in ``folder``; with ``dicom_folders``, sub-folders are series."""
    entries: list[tuple[str, Path]] = []
    candidates = sorted(folder.rglob("*") if recursive else folder.iterdir())
    for path in candidates:
        if _hidden(path) or any(_hidden(p) for p in path.relative_to(folder).parents if p != Path(".")):
            continue
        if path.is_dir():
            if dicom_folders:
                entries.append((path.name, path))
            continue
        parts = split_extension(path.name)
        if parts is not None:
            entries.append((parts[0], path))
    return entries


def index_by_case(entries: Iterable[tuple[str, Path]], pattern: re.Pattern[str] | Callable[[str], str | None],
                  role: str, option: str) -> tuple[dict[str, list[Path]], list[Problem]]:
    """Group files by case id; files the pattern rejects and ids claimed twice are problems."""
    by_id: dict[str, list[Path]] = {}
    problems: list[Problem] = []
    for stem, path in entries:
        raw = _extract_id(stem, pattern)
        if raw is None:
            problems.append(Problem(f"{role} file name does not match {option}; rename it, move it out of the "
                                    f"folder or adjust {option}", path=path))
            continue
        by_id.setdefault(safe_case_id(raw), []).append(path)
    for case_id, paths in by_id.items():
        if len(paths) > 1:
            problems.append(Problem(f"duplicate case id: {len(paths)} {role} files map to it "
                                    f"({', '.join(str(p) for p in paths)}); keep one of them", case=case_id))
    return by_id, problems


def _extract_id(stem: str, pattern: re.Pattern[str] | Callable[[str], str | None]) -> str | None:
    if not isinstance(pattern, re.Pattern):
        return pattern(stem)
    m = pattern.fullmatch(stem)
    if not m:
        return None
    return m["id"] if "id" in pattern.groupindex else m[1]


def pair_cases(images: dict[str, list[Path]], masks: dict[str, list[Path]], *,
               mapping: LabelMapping = LabelMapping(), unlabelled_allowed: bool = False,
               channels: int = 1) -> Discovery:
    """Match images with masks by case id; a partner missing on either side is a problem.

    ``unlabelled_allowed`` turns images without a mask into unlabelled (imagesTs) cases instead.
    ``channels`` > 1 reads each image as a 4-D file holding one channel per volume (the MSD way).
    """
    found = Discovery()
    for case_id in sorted(masks.keys() - images.keys()):
        found.problems.append(Problem("mask has no matching image; add the image or remove the mask",
                                      case=case_id, path=masks[case_id][0]))
    for case_id in sorted(images):
        image = images[case_id][0]
        if case_id in masks:
            found.cases.append(Case(case_id, channel_sources(image, channels), (LabelSource(masks[case_id][0], mapping),)))
        elif unlabelled_allowed:
            found.cases.append(Case(case_id, channel_sources(image, channels)))
        else:
            found.problems.append(Problem("image has no matching mask; add the mask (its name must give the "
                                          "same case id) or remove the image", case=case_id, path=image))
    return found


def channel_sources(path: Path, channels: int = 1) -> tuple[ImageSource, ...]:
    if channels == 1:
        return (ImageSource(path),)
    return tuple(ImageSource(path, volume=i) for i in range(channels))


def index_by_role(entries: Iterable[tuple[str, Path]], pattern: re.Pattern[str],
                  roles: dict[str, str]) -> tuple[dict[str, dict[str, list[Path]]], list[Problem]]:
    """Sort files whose stem matches ``pattern`` (groups ``id`` and ``role``) by role, then by case id.

    ``roles`` maps each role as written in file names to the kind of file it is ("image", "mask");
    several spellings may name one kind, and an optional role group that did not take part counts as
    role "". Files the pattern does not match are not part of the layout and are ignored.
    """
    grouped: dict[str, list[tuple[str, Path]]] = {kind: [] for kind in roles.values()}
    for stem, path in entries:
        m = pattern.fullmatch(stem)
        if m and (m["role"] or "") in roles:
            grouped[roles[m["role"] or ""]].append((m["id"], path))
    out: dict[str, dict[str, list[Path]]] = {}
    problems: list[Problem] = []
    for kind, files in grouped.items():
        out[kind], found = index_by_case(files, lambda case_id: case_id, kind, "the layout's file naming")
        problems += found
    return out, problems


def require_dir(path: Path, what: str) -> Problem | None:
    if not path.is_dir():
        return Problem(f"{what} folder not found; check the input folder and the layout (FORMAT)", path=path)
    return None


def pair_folders(image_dir: Path, mask_dir: Path, *, image_pattern: re.Pattern[str] = re.compile(DEFAULT_IMAGE_PATTERN),
                 mask_pattern: re.Pattern[str] = re.compile(DEFAULT_MASK_PATTERN),
                 image_option: str = "the image naming", mask_option: str = "the mask naming",
                 mapping: LabelMapping = LabelMapping(), unlabelled_allowed: bool = False,
                 dicom_folders: bool = False, recursive: bool = False, channels: int = 1) -> Discovery:
    """The common case: a folder of images and a folder of masks, matched by case id."""
    missing = [p for p in (require_dir(image_dir, "image"), require_dir(mask_dir, "mask")) if p]
    if missing:
        return Discovery(problems=missing)
    images, p1 = index_by_case(list_images(image_dir, recursive=recursive, dicom_folders=dicom_folders),
                               image_pattern, "image", image_option)
    masks, p2 = index_by_case(list_images(mask_dir, recursive=recursive), mask_pattern, "mask", mask_option)
    found = pair_cases(images, masks, mapping=mapping, unlabelled_allowed=unlabelled_allowed, channels=channels)
    found.problems[:0] = p1 + p2
    return found


def unlabelled_folder(folder: Path, pattern: re.Pattern[str] = re.compile(DEFAULT_IMAGE_PATTERN), *,
                      recursive: bool = False, option: str = "the image naming", channels: int = 1) -> Discovery:
    """Images without masks (a test or evaluation set) become imagesTs cases."""
    images, problems = index_by_case(list_images(folder, recursive=recursive), pattern, "image", option)
    found = pair_cases(images, {}, unlabelled_allowed=True, channels=channels)
    found.problems[:0] = problems
    return found


def merge(*discoveries: Discovery) -> Discovery:
    """Combine e.g. a training and a test discovery; an id used in both is a problem."""
    out = Discovery()
    seen: dict[str, Case] = {}
    for d in discoveries:
        out.problems += d.problems
        for case in d.cases:
            if case.case_id in seen:
                out.problems.append(Problem(f"duplicate case id: appears as {seen[case.case_id].images[0]} and "
                                            f"{case.images[0]}; case ids must be unique across training and test "
                                            f"data", case=case.case_id))
                continue
            seen[case.case_id] = case
            out.cases.append(case)
    return out
