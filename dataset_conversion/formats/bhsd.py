"""`bhsd`: BHSD / MBH-Seg brain hemorrhage CT — ``imagesTr``/``labelsTr`` (optional ``imagesTs``)
or ``label_192/images`` + ``label_192/ground truths``; labels 1 epidural, 2 intraparenchymal,
3 intraventricular, 4 subarachnoid, 5 subdural. Any subset of subtypes can be kept, separately
or merged into one label; the others become background."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Discovery
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.labels import LabelMapping
from nnunet_peft.dataset_conversion.pairing import merge, pair_folders, unlabelled_folder

SUBTYPES = {"epidural": 1, "intraparenchymal": 2, "intraventricular": 3, "subarachnoid": 4, "subdural": 5}
ALIASES = {"edh": "epidural", "iph": "intraparenchymal", "ivh": "intraventricular", "sah": "subarachnoid",
           "sdh": "subdural"} | {str(v): k for k, v in SUBTYPES.items()}


def parse_subtypes(text: str) -> tuple[str, ...]:
    chosen = []
    for word in (w.strip().lower() for w in text.split(",")):
        if word == "all":
            chosen += [s for s in SUBTYPES if s not in chosen]
            continue
        subtype = ALIASES.get(word, word)
        if subtype not in SUBTYPES:
            raise argparse.ArgumentTypeError(
                f"unknown subtype {word!r}; choose from {', '.join(SUBTYPES)} (or edh, iph, ivh, sah, sdh, 1-5, all)")
        if subtype not in chosen:
            chosen.append(subtype)
    return tuple(chosen)


@dataclass(frozen=True)
class Bhsd(Layout):
    subtypes: tuple[str, ...] = tuple(SUBTYPES)
    merged: bool = False

    name = "bhsd"
    summary = "BHSD / MBH-Seg: imagesTr/labelsTr or label_192/{images,ground truths}; subtypes 1-5"
    default_dataset_name = "BHSD"

    def __post_init__(self) -> None:
        if not self.subtypes or any(s not in SUBTYPES for s in self.subtypes):
            raise ValueError(f"subtypes must be a non-empty selection of {', '.join(SUBTYPES)}, got {self.subtypes}")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--subtypes", type=parse_subtypes, default=tuple(SUBTYPES), metavar="LIST",
                            help="comma-separated subtypes to keep, in output label order, e.g. 'sah' or "
                                 "'sah,sdh' (default: all five); the others become background")
        parser.add_argument("--merge-subtypes", action="store_true",
                            help="write the kept subtypes as one label 'hemorrhage'")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Bhsd:
        return cls(args.subtypes, args.merge_subtypes)

    def mapping(self) -> LabelMapping:
        kept = [([SUBTYPES[s]], 1 if self.merged else i) for i, s in enumerate(self.subtypes, 1)]
        dropped = [v for s, v in SUBTYPES.items() if s not in self.subtypes]
        # values outside 0-5 stay unmatched, so a mask from another dataset is reported, not relabelled
        return LabelMapping.from_pairs(kept + ([(dropped, 0)] if dropped else []))

    def discover(self, root: Path) -> Discovery:
        if (root / "imagesTr").is_dir() or not (root / "label_192").is_dir():
            train = pair_folders(root / "imagesTr", root / "labelsTr", mapping=self.mapping())
            test = unlabelled_folder(root / "imagesTs") if (root / "imagesTs").is_dir() else Discovery()
            return merge(train, test)
        return pair_folders(root / "label_192" / "images", root / "label_192" / "ground truths",
                            mapping=self.mapping())

    def channel_names(self) -> dict[int, str]:
        return {0: "CT"}

    def labels(self) -> dict[str, LabelValue] | None:
        if self.merged:
            name = self.subtypes[0] if len(self.subtypes) == 1 else "hemorrhage"
            return {"background": 0, name: 1}
        return {"background": 0} | {s: i for i, s in enumerate(self.subtypes, 1)}
