"""What fine-tuning cost the old task: a source-side test set, scored on the classes the target kept.

``nnunet-peft benchmark --source-test-images DIR --source-test-labels DIR`` predicts a test set of
the *checkpoint's* task with every fine-tuned model (the folds of ``--test-folds``) and with the
pretrained checkpoint itself (the base, from its own model folder: the checkpoint's parent's
parent, which nnU-Net writes with ``plans.json`` and ``dataset.json``), then scores each shared class.

Shared classes are those the trainers mapped from the checkpoint
(``class_channel_mapping.map_classes``: by name, through ``NNUNET_PEFT_LABEL_MAP``, or by position
for two label sets of the same size without a common name). Background is not scored. A fine-tuned
model writes the target's label values; they are turned into the checkpoint's before scoring against
the source labels.

Output in ``--out/old_task``: ``old_task.csv`` (one row per model, fold, case and class) and
``old_task.md`` (mean Dice per class, the base first, with the change against the base).
"""
from __future__ import annotations

import csv
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nnunet_peft.evaluation import collect
from nnunet_peft.evaluation.metrics import case_metrics, read_segmentation
from nnunet_peft.evaluation.runs import Experiment, Run, prediction_options
from nnunet_peft.class_channel_mapping import (channel_names, label_map_from_env, map_classes, output_class_names,
                                               read_source)

BASE = "base (pretrained checkpoint)"
FOLDER = "old_task"


def shared_classes(source_json: dict[str, Any], target_json: dict[str, Any],
                   label_map: dict[str, str | None] | None = None) -> list[tuple[str, int, int]]:
    """``(target class name, checkpoint label value, target label value)`` of every shared foreground class."""
    mapping, why_not = map_classes(source_json, target_json, label_map)
    if mapping is None:
        raise ValueError(f"--source-test-images: the checkpoint's classes cannot be paired with the target's: {why_not}")
    values = {}
    for which, dataset_json in (("source", source_json), ("target", target_json)):
        names = output_class_names(dataset_json)
        values[which] = [int(dataset_json["labels"][n]) for n in names]
    shared = [(name, values["source"][s], values["target"][t])
              for t, (name, s) in enumerate(zip(mapping.target_names, mapping.sources))
              if s is not None and values["target"][t] != 0 and values["source"][s] != 0]
    if not shared:
        raise ValueError("--source-test-images: the target shares no foreground class with the checkpoint "
                         f"({mapping.describe()})")
    return shared


def base_predict_command(experiment: Experiment, checkpoint: Path, images: Path, output: Path) -> list[str]:
    """``nnUNetv2_predict_from_modelfolder`` with the pretrained checkpoint in its own model folder."""
    command = ["nnUNetv2_predict_from_modelfolder", "-i", str(images), "-o", str(output),
               "-m", str(checkpoint.parent.parent), "-f", checkpoint.parent.name[len("fold_"):],
               "-chk", checkpoint.name]
    return command + prediction_options(experiment)


def _predict_base(experiment: Experiment, images: Path, destination: Path, cases: list[str], file_ending: str,
                  env: dict[str, str], runner, log) -> Path | None:
    checkpoint = experiment.pretrained
    model = checkpoint.parent.parent
    missing = [f for f in ("plans.json", "dataset.json") if not (model / f).is_file()]
    if missing or not checkpoint.parent.name.startswith("fold_"):
        log(f"base not predicted: {checkpoint} is not inside an nnU-Net model folder "
            f"(MODEL/fold_K/checkpoint.pth with MODEL/plans.json and MODEL/dataset.json)")
        return None
    if not destination.is_dir():
        partial = destination.with_name(destination.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.parent.mkdir(parents=True, exist_ok=True)
        log(f"predict the source test set with the base {checkpoint}")
        completed = (runner or subprocess.run)(base_predict_command(experiment, checkpoint, images, partial),
                                               env=env, check=False)
        produced = {p.name for p in partial.glob(f"*{file_ending}")} if partial.is_dir() else set()
        if completed.returncode != 0 or not {f"{c}{file_ending}" for c in cases} <= produced:
            log(f"FAILED prediction with the base (exit code {completed.returncode}); left out")
            return None
        partial.rename(destination)
    return destination


def score_folder(folder: Path, labels_dir: Path, cases: Sequence[str], pred_ending: str, label_ending: str,
                 shared: Sequence[tuple[str, int, int]], predicted_values: str) -> list[dict]:
    """Dice and volumes per case and shared class; ``predicted_values`` is ``"source"`` or ``"target"``."""
    rows = []
    for case in cases:
        pred, _ = read_segmentation(folder / f"{case}{pred_ending}")
        ref, spacing = read_segmentation(labels_dir / f"{case}{label_ending}")
        remapped = np.zeros_like(pred)
        for _, source_value, target_value in shared:
            remapped[pred == (source_value if predicted_values == "source" else target_value)] = source_value
        labels = {name: source_value for name, source_value, _ in shared}
        rows += [{"case": case, **row} for row in case_metrics(remapped, ref, spacing, labels)]
    return rows


def old_task_check(experiment: Experiment, runs: Sequence[Run], images: Path, labels_dir: Path,
                   target_json: dict[str, Any], out: Path, env: dict[str, str],
                   runner: Callable[..., subprocess.CompletedProcess] | None = None,
                   log: Callable[[str], None] = print) -> tuple[list[dict], str]:
    """Predict and score the source test set; returns the rows and one line for the report's notes."""
    if experiment.pretrained is None:
        raise ValueError("--source-test-images needs --pretrained: the checkpoint says what the old task was")
    source = read_source(experiment.pretrained)
    if source.dataset_json is None:
        raise ValueError(f"--source-test-images: {source.dataset_json_origin}, so the old task's classes are unknown")
    ours, theirs = channel_names(target_json), channel_names(source.dataset_json)
    if ours is not None and theirs is not None and len(ours) != len(theirs):
        raise ValueError(f"--source-test-images: the fine-tuned models take {len(ours)} channel(s) {ours}, the "
                         f"checkpoint's test images have {len(theirs)} {theirs}")
    shared = shared_classes(source.dataset_json, target_json, label_map_from_env())
    target_ending = target_json.get("file_ending", ".nii.gz")
    source_ending = source.dataset_json.get("file_ending", target_ending)
    cases = collect.test_cases(images, target_ending)
    missing = [c for c in cases if not (labels_dir / f"{c}{source_ending}").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} source test case(s) have no label in {labels_dir}, "
                                f"e.g. {missing[0]}{source_ending}")
    folder = out / FOLDER
    folders = collect.predict_test(experiment, runs, images, folder / "predictions", env, target_ending, runner, log)
    rows = []
    base = _predict_base(experiment, images, folder / "predictions" / "base", cases, source_ending, env, runner, log)
    if base is not None:
        rows += [{"method": BASE, "trainer": BASE, "fold": "-", **r}
                 for r in score_folder(base, labels_dir, cases, source_ending, source_ending, shared, "source")]
    for run in runs:
        predictions = folders.get((run.trainer.name, str(run.fold)))
        if predictions is not None:
            rows += [{"method": run.trainer.display, "trainer": run.trainer.name, "fold": str(run.fold), **r}
                     for r in score_folder(predictions, labels_dir, cases, target_ending, source_ending, shared,
                                           "target")]
    table = summary_table(rows, [name for name, _, _ in shared])
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "old_task.csv", rows)
    (folder / "old_task.md").write_text(
        f"# Old task: {len(cases)} source test case(s) from {images}\n\n"
        f"Dice on the classes the target shares with the checkpoint {experiment.pretrained} "
        f"({', '.join(name for name, _, _ in shared)}), mean ± sd over cases (and folds); "
        f"the change is against the base.\n\n{table}\n", encoding="utf-8")
    return rows, _note(rows, [name for name, _, _ in shared], len(cases))


def _means(rows: Sequence[dict], classes: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    by_method: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], {c: [] for c in classes})[r["label"]].append(float(r["dice"]))
    return by_method


def summary_table(rows: Sequence[dict], classes: Sequence[str]) -> str:
    """Markdown: one row per model, mean ± sd Dice per shared class and the change against the base."""
    by_method = _means(rows, classes)
    base = by_method.get(BASE)
    lines = ["| model | " + " | ".join(f"Dice {c}" for c in classes) + " |",
             "|---|" + "---|" * len(classes)]
    for method, values in by_method.items():
        cells = []
        for c in classes:
            v = values[c]
            cell = f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "-"
            if base is not None and method != BASE and v and base[c]:
                cell += f" ({np.mean(v) - np.mean(base[c]):+.3f})"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _note(rows: Sequence[dict], classes: Sequence[str], n_cases: int) -> str:
    parts = [f"{method}: " + ", ".join(f"{c} {np.mean(v):.3f}" if v else f"{c} -" for c, v in values.items())
             for method, values in _means(rows, classes).items()]
    return (f"Old task ({n_cases} source test case(s), mean Dice on the shared classes; {FOLDER}/old_task.md): "
            + ("; ".join(parts) if parts else "nothing was predicted") + ".")


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    fields = ["method", "trainer", "fold", "case", "label", "dice", "hd95_mm", "ref_volume_ml", "pred_volume_ml"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if isinstance(r.get(k), float) and math.isnan(r[k]) else r.get(k)) for k in fields})
