"""`ct-ich`: PhysioNet CT-ICH (Hssayeni et al.) — ``ct_scans/NNN.nii``, ``masks/NNN.nii`` and
``hemorrhage_diagnosis_raw_ct.csv`` (one row per slice with the hemorrhage subtypes seen on it).

The masks mark any hemorrhage (one label); the CSV is cross-checked against the scans and can
select the patients that have a given subtype, e.g. only patients with subarachnoid hemorrhage.
"""
from __future__ import annotations

import argparse
import csv
import re
from dataclasses import dataclass
from pathlib import Path

from nnunet_peft.dataset_conversion.cases import Discovery, Problem
from nnunet_peft.dataset_conversion.formats.base import Layout, LabelValue
from nnunet_peft.dataset_conversion.labels import LabelMapping
from nnunet_peft.dataset_conversion.pairing import pair_folders

CSV_NAME = "hemorrhage_diagnosis_raw_ct.csv"
SUBTYPES = {"intraventricular": "Intraventricular", "intraparenchymal": "Intraparenchymal",
            "subarachnoid": "Subarachnoid", "epidural": "Epidural", "subdural": "Subdural"}
_NUMBER = re.compile(r"(?P<id>\d+)")


@dataclass(frozen=True)
class CtIch(Layout):
    with_subtype: str | None = None

    name = "ct-ich"
    summary = "PhysioNet CT-ICH: ct_scans/NNN.nii, masks/NNN.nii, hemorrhage_diagnosis_raw_ct.csv"
    default_dataset_name = "CTICH"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--with-subtype", choices=sorted(SUBTYPES),
                            help="keep only patients the CSV shows with this hemorrhage subtype on some slice")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CtIch:
        return cls(args.with_subtype)

    def discover(self, root: Path) -> Discovery:
        # masks may be stored 0/1 or 0/255: any positive value is hemorrhage
        found = pair_folders(root / "ct_scans", root / "masks", image_pattern=_NUMBER, mask_pattern=_NUMBER,
                             mapping=LabelMapping.parse(">0->1"))
        diagnosis, problem = self._read_csv(root / CSV_NAME)
        if problem:
            found.problems.append(problem)
            return found
        by_number = {int(c.case_id): c for c in found.cases}
        for number in sorted(diagnosis.keys() - by_number.keys()):
            if not any(p.case and p.case.isdigit() and int(p.case) == number for p in found.problems):
                found.problems.append(Problem(f"patient {number} is listed in {CSV_NAME} but has no scan in "
                                              f"ct_scans/; restore the scan or use the complete download",
                                              case=str(number), path=root / CSV_NAME))
        for number, case in by_number.items():
            if number not in diagnosis:
                found.problems.append(Problem(f"scan has no rows in {CSV_NAME}; check that the scan belongs to "
                                              f"this dataset", case=case.case_id, path=case.images[0].path))
        if self.with_subtype:
            found.cases = [c for c in found.cases if self.with_subtype in diagnosis.get(int(c.case_id), set())]
        return found

    @staticmethod
    def _read_csv(path: Path) -> tuple[dict[int, set[str]], Problem | None]:
        """Patient number -> subtypes seen on any of its slices."""
        subtypes: dict[int, set[str]] = {}
        try:
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            return {}, Problem(f"{CSV_NAME} not found; INPUT must be the CT-ICH folder holding it, ct_scans/ and "
                               f"masks/", path=path)
        needed = ["PatientNumber", *SUBTYPES.values()]
        if not rows or any(col not in rows[0] for col in needed):
            return {}, Problem(f"lacks the columns {', '.join(needed)}; restore the original CSV", path=path)
        for line, row in enumerate(rows, 2):
            try:
                seen = subtypes.setdefault(int(row["PatientNumber"]), set())
                seen.update(key for key, col in SUBTYPES.items() if int(float(row[col] or 0)))
            except ValueError:
                return {}, Problem(f"line {line} holds a non-numeric value; restore the original CSV", path=path)
        return subtypes, None

    def channel_names(self) -> dict[int, str]:
        return {0: "CT"}

    def labels(self) -> dict[str, LabelValue] | None:
        return {"background": 0, "hemorrhage": 1}

    def dataset_json_extras(self) -> dict[str, object]:
        return {"reference": "https://physionet.org/content/ct-ich/"}
