"""What a layout discovers (cases, the files they come from) and what can be wrong with them."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_peft.dataset_conversion.imageio import ImageSource
from nnunet_peft.dataset_conversion.labels import LabelMapping

# nnU-Net finds channels by the "_XXXX" suffix and case ids end up in file names and splits:
# keep them to characters that survive every file system and shell
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_case_id(raw: str) -> str:
    return _SAFE_ID.sub("_", raw.strip()).strip("_") or "case"


@dataclass(frozen=True)
class LabelSource:
    """One mask file and how its values become output labels.

    A case may have several (HarP ships left and right hippocampus in separate files); they are
    combined after mapping, and voxels claimed by two parts with different labels are an error.
    """

    path: Path
    mapping: LabelMapping = field(default_factory=LabelMapping)


@dataclass(frozen=True)
class Case:
    case_id: str
    images: tuple[ImageSource, ...]  # one per channel, in channel order
    labels: tuple[LabelSource, ...] = ()  # empty: an unlabelled case, written to imagesTs
    # cases of one group (e.g. the left and right half of one subject) share data, so splits must
    # keep them on the same side of every fold; None: the case is its own group
    group: str | None = None
    # --crop-margin crops around the foreground of these masks instead of ``labels`` (e.g. a base
    # dataset cropped around a structure it does not label, so that base and target crops agree)
    crop_around: tuple[LabelSource, ...] = ()

    @property
    def labelled(self) -> bool:
        return bool(self.labels)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: which case, which file, what is wrong and what to do."""

    message: str
    case: str | None = None
    path: Path | str | None = None

    def __str__(self) -> str:
        where = [f"case {self.case}"] if self.case else []
        where += [str(self.path)] if self.path else []
        return (": ".join(where) + ": " if where else "") + self.message


class ConversionError(ValueError):
    """Every problem of one run, reported together so that one fix-and-rerun cycle suffices."""

    def __init__(self, problems: list[Problem], source: Path | str) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in {source}; nothing was written:\n{lines}")


@dataclass
class Discovery:
    """The cases a layout found, and the pairing problems it found on the way."""

    cases: list[Case] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
