"""``--combine``: one label map per case holding the classes of every task.

The rule (docs/serving_many_adapters.md): each task first segments the case on its own, exactly as
its own sub-folder holds it (the argmax of its softmax). A voxel that no task assigns to a foreground
class is background. A voxel that one task assigns to a foreground class takes that class. A voxel
that several tasks claim takes the class whose probability, in its own task's softmax, is highest;
an exact tie goes to the task listed first (the base, then the adapters in the order given). So a
task's class is never reported where that task itself says background, and the combined map on the
voxels only one task claims is that task's segmentation.

Classes are renumbered 1, 2, ... in that task order and class-value order; ``labels.json`` holds the
table (combined value, the task and its own value). Two tasks with a class of the same name (case
aside) are refused: the combined map could not say which one a voxel holds. Region-based tasks
(sigmoid outputs that overlap by design) are refused too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

RULE = ("each task segments on its own (argmax of its softmax); a voxel claimed by no task is background, by one "
        "task its class, by several the class with the highest probability in its own task's softmax (ties: the "
        "task listed first)")


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    label: int  # the class's value in its task
    value: int  # its value in the combined map


@dataclass(frozen=True)
class CombinedLabels:
    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, tasks: Sequence) -> "CombinedLabels":
        """The combined label table of ``tasks``; raises a ValueError naming colliding classes or region tasks."""
        seen: dict[str, Entry] = {}
        entries: list[Entry] = []
        for task in tasks:
            manager = task.label_manager
            if manager.has_regions:
                raise ValueError(f"--combine: {task.name} is region-based (overlapping sigmoid outputs); its regions "
                                 "cannot share one label map with other tasks. Predict without --combine")
            for name, value in sorted(task.dataset_json["labels"].items(), key=lambda kv: int(kv[1])):
                value = int(value)
                if value == 0 or value == manager.ignore_label:
                    continue
                if name.lower() in seen:
                    other = seen[name.lower()]
                    raise ValueError(
                        f"--combine: the class {name!r} (label {value}) of {task.name} and {other.name!r} (label "
                        f"{other.label}) of {other.task} have the same name, so one label map cannot tell them apart. "
                        "Rename one in its dataset.json (the adapter folder's), or predict without --combine")
                entry = Entry(name, task.name, value, len(entries) + 1)
                seen[name.lower()] = entry
                entries.append(entry)
        return cls(tuple(entries))

    def table(self) -> dict:
        return {
            "labels": {"background": 0, **{e.name: e.value for e in self.entries}},
            "sources": {e.name: {"task": e.task, "label": e.label} for e in self.entries},
            "rule": RULE,
        }

    def mapping(self, task: str, num_labels: int, dtype) -> np.ndarray:
        """Combined value by the task's own value (0 where the task's value is not one of its classes)."""
        table = np.zeros(num_labels, dtype)
        for e in self.entries:
            if e.task == task:
                table[e.label] = e.value
        return table


def combine_case(labels: CombinedLabels, tasks: Sequence, results: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The combined label map of one case from each task's ``(segmentation, probabilities)`` (see the module
    docstring for the rule)."""
    shape = results[0][0].shape
    dtype = np.uint8 if len(labels.entries) < 255 else np.uint16
    combined = np.zeros(shape, dtype)
    best = np.full(shape, -np.inf, np.float32)
    for task, (segmentation, probabilities) in zip(tasks, results):
        if segmentation.shape != shape:
            raise ValueError(f"{task.name} predicted a {segmentation.shape} map where the first task predicted {shape}")
        segmentation = segmentation.astype(np.int64)
        mapping = labels.mapping(task.name, max(int(segmentation.max()) + 1, probabilities.shape[0]), dtype)
        probability = np.take_along_axis(np.asarray(probabilities, np.float32), segmentation[None], 0)[0]
        wins = (mapping[segmentation] > 0) & (probability > best)
        combined[wins] = mapping[segmentation[wins]]
        best[wins] = probability[wins]
    return combined
