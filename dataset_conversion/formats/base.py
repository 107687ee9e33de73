"""The interface every source layout implements: where its cases are and what its labels mean."""
from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from nnunet_peft.dataset_conversion.cases import Discovery

LabelValue = int | tuple[int, ...]


class Layout(ABC):
    """One source layout. Subclasses only know their folder structure and label scheme; reading,
    checking, writing and summarising are the pipeline's job (see ``pipeline.convert``)."""

    name: ClassVar[str]  # FORMAT on the command line
    summary: ClassVar[str]  # one line for --help
    default_dataset_name: ClassVar[str]  # used when -n is not given

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Options specific to this layout."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Layout:
        return cls()

    def default_name(self, root: Path) -> str:
        """The dataset name when -n is not given."""
        return self.default_dataset_name

    @abstractmethod
    def discover(self, root: Path) -> Discovery:
        """Find every case under ``root``; report pairing problems instead of raising."""

    @abstractmethod
    def channel_names(self) -> dict[int, str]:
        """nnU-Net channel names; 'CT' selects nnU-Net's CT normalisation, anything else z-score."""

    @abstractmethod
    def labels(self) -> dict[str, LabelValue] | None:
        """dataset.json labels ({'background': 0, ...}); None: infer consecutive labels from the masks."""

    def crop_required(self) -> str | None:
        """Why this layout's cases only make sense cropped (--crop-margin), or None if they do whole."""
        return None

    def regions_class_order(self) -> tuple[int, ...] | None:
        return None

    def value_names(self) -> dict[int, str]:
        """Names for label values in the summary where labels() holds regions rather than values."""
        return {}

    def dataset_json_extras(self) -> dict[str, object]:
        """Extra dataset.json fields (reference, licence) for the record."""
        return {}
