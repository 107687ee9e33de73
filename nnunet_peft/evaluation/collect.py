"""Gathering a benchmark's figures from nnU-Net's output folders.

Per case: the validation predictions nnU-Net wrote after training (``fold_K/validation``) and, when
a labelled test set is given, one prediction per fold, all evaluated with ``metrics``. Per run: the
costs the plugin's trainers record in ``fold_K/peft_summary.json``; for nnU-Net's own trainers,
which write no such file, what the final checkpoint tells (every parameter trainable, no adapter
file, epoch times from nnU-Net's log). Per epoch: nnU-Net's own training log in the final checkpoint
(pseudo-Dice, its moving average, losses, learning rate; a short trailing mean of the pseudo-Dice
for the convergence figures), which shows whether the schedule converged.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnunet_peft.evaluation.metrics import evaluate_folder, ignore_label_of
from nnunet_peft.evaluation.runs import Experiment, Run, predict_command
from nnunet_peft.model_folder import SUMMARY_NAME

COST_FIELDS = ("trainable_parameters", "total_parameters", "adapter_bytes", "mean_epoch_time_s",
               "peak_gpu_memory_bytes")
# curve column -> the list in nnU-Net's logger (nnUNetLogger / LocalLogger) holding one value per epoch
CURVE_FIELDS = {"pseudo_dice": "mean_fg_dice", "ema_pseudo_dice": "ema_fg_dice", "train_loss": "train_losses",
                "val_loss": "val_losses", "lr": "lrs"}
CONVERGENCE_FIELDS = ("epochs", "final_pseudo_dice", "epoch_95")
CONVERGED_SHARE = 0.95  # epoch_95: the first epoch whose smoothed pseudo-Dice reaches this share of the final one
# nnU-Net's EMA (0.9 old + 0.1 new, seeded with epoch 1) lags about ten epochs and remembers epoch 1, so on a
# schedule of tens of epochs it is still catching up at the end and places epoch_95 late; a short trailing
# mean of the raw pseudo-Dice over the epochs that exist has neither the lag nor the seed.
SMOOTHING_EPOCHS = 3


def load_dataset_json(experiment: Experiment, preprocessed_root: Path | None,
                      trainers: Sequence[str]) -> dict:
    """The target's dataset.json: nnUNet_preprocessed's copy, else the one nnU-Net puts beside a model."""
    candidates = []
    if preprocessed_root is not None:
        candidates.append(preprocessed_root / experiment.dataset / "dataset.json")
    candidates += [experiment.model_folder(t) / "dataset.json" for t in trainers]
    for path in candidates:
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                content = json.load(f)
            if not isinstance(content.get("labels"), dict):
                raise ValueError(f"{path} has no 'labels' mapping; is it an nnU-Net v2 dataset.json?")
            return content
    raise FileNotFoundError(f"no dataset.json for {experiment.dataset}; looked at "
                            + ", ".join(str(p) for p in candidates[:3]))


def reference_folder(dataset: str, preprocessed_root: Path | None, raw_root: Path | None) -> Path:
    """Where the validation cases' reference labels are: nnU-Net's gt_segmentations, else labelsTr."""
    candidates = []
    if preprocessed_root is not None:
        candidates.append(preprocessed_root / dataset / "gt_segmentations")
    if raw_root is not None:
        candidates.append(raw_root / dataset / "labelsTr")
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"no reference labels for {dataset}: looked for "
                            + " and ".join(str(c) for c in candidates)
                            + " (set nnUNet_preprocessed or nnUNet_raw)")


def run_costs(fold_folder: Path, checkpoint: dict | None = None) -> dict:
    """Cost figures of one finished run (NaN where unknown) and ``cost_source`` saying where from.

    ``checkpoint``: the run's checkpoint_final.pth if the caller has loaded it already; otherwise it
    is loaded here, and only when peft_summary.json leaves a figure open.
    """
    costs: dict = {field: math.nan for field in COST_FIELDS}
    summary_file = fold_folder / SUMMARY_NAME
    sources = []
    if summary_file.is_file():
        costs.update(_read_peft_summary(summary_file))
        sources.append(SUMMARY_NAME)
    missing = [f for f in ("trainable_parameters", "total_parameters", "mean_epoch_time_s")
               if _is_missing(costs[f])]
    checkpoint_file = fold_folder / "checkpoint_final.pth"
    if missing and checkpoint is None and checkpoint_file.is_file():
        checkpoint = _load_checkpoint(checkpoint_file)
    if missing and checkpoint is not None:
        derived = {"mean_epoch_time_s": mean_epoch_time(training_log(checkpoint))}
        if "network_weights" in checkpoint:
            total = count_parameters(checkpoint["network_weights"])
            # without the plugin's record, assume nnU-Net's default: every parameter is trained
            derived.update(total_parameters=total, trainable_parameters=total)
        for field in missing:
            costs[field] = derived.get(field, math.nan)
        sources.append("checkpoint")
    costs["cost_source"] = "+".join(sources) or "none"
    return costs


def count_parameters(state_dict: dict) -> int:
    """Floating-point elements of a state dict, each tensor counted once.

    dynamic-network-architectures' decoder holds the encoder, so its state dict lists every encoder
    tensor twice; a saved-and-loaded checkpoint keeps them as one storage, which identifies them.
    """
    seen: set[tuple[int, int, tuple]] = set()
    total = 0
    for tensor in state_dict.values():
        if not hasattr(tensor, "is_floating_point") or not tensor.is_floating_point():
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel()
    return total


def mean_epoch_time(logging: dict) -> float:
    """Mean seconds per epoch from nnU-Net's logger (``epoch_start/end_timestamps``)."""
    starts = logging.get("epoch_start_timestamps") or []
    ends = logging.get("epoch_end_timestamps") or []
    durations = [float(e) - float(s) for s, e in zip(starts, ends)]
    return sum(durations) / len(durations) if durations else math.nan


def training_log(checkpoint: dict) -> dict:
    """nnU-Net's per-epoch log in a checkpoint (``logging``), unwrapped where a MetaLogger nests it."""
    log = checkpoint.get("logging") or {}
    return log.get("local", log)


def training_curve(log: dict) -> list[dict]:
    """One row per trained epoch: ``epoch`` (counted from 1) and the fields of ``CURVE_FIELDS``.

    The number of epochs is that of the longest per-epoch list, timestamps included, so a log that
    lacks a field still counts its epochs; a missing value is NaN.
    """
    series = {field: list(log.get(key) or []) for field, key in CURVE_FIELDS.items()}
    timestamps = [log.get(k) or [] for k in ("epoch_start_timestamps", "epoch_end_timestamps")]
    epochs = max(len(values) for values in [*series.values(), *timestamps])
    rows = [{"epoch": i + 1, **{field: _float(values[i]) if i < len(values) else math.nan
                                for field, values in series.items()}}
            for i in range(epochs)]
    raw = [r["pseudo_dice"] for r in rows]
    for i, row in enumerate(rows):
        row["smoothed_pseudo_dice"] = float(np.mean(raw[max(0, i + 1 - SMOOTHING_EPOCHS):i + 1]))
    return rows


def convergence(curve: Sequence[dict]) -> dict:
    """``epochs``, ``final_pseudo_dice`` and ``epoch_95`` of one run's ``training_curve``.

    final_pseudo_dice is the last epoch's smoothed pseudo-Dice (the mean of the last
    ``SMOOTHING_EPOCHS`` raw values); epoch_95 is the first epoch (counted from 1) whose smoothed
    pseudo-Dice reaches ``CONVERGED_SHARE`` of it. Both are NaN for a run of 0 epochs (NoFinetune);
    epoch_95 is also NaN when the final value is not positive, as a run that learned nothing has no
    level to approach.
    """
    final = curve[-1]["smoothed_pseudo_dice"] if curve else math.nan
    epoch_95 = math.nan
    if final > 0:  # NaN compares False
        epoch_95 = next(r["epoch"] for r in curve if r["smoothed_pseudo_dice"] >= CONVERGED_SHARE * final)
    return {"epochs": len(curve), "final_pseudo_dice": final, "epoch_95": epoch_95}


def run_curve(checkpoint: dict, run: Run) -> tuple[list[dict], dict]:
    """A finished run's per-epoch rows, tagged with method, trainer and fold, and its ``convergence``."""
    curve = training_curve(training_log(checkpoint))
    tag = {"method": run.trainer.display, "trainer": run.trainer.name, "fold": str(run.fold)}
    return [{**tag, **row} for row in curve], convergence(curve)


def collect_validation(experiment: Experiment, runs: Sequence[Run], reference: Path, labels: dict,
                       file_ending: str, num_processes: int = 1
                       ) -> tuple[list[dict], list[dict], list[dict], list[str]]:
    """Per-case rows (split ``val``), per-run costs and convergence figures (``CONVERGENCE_FIELDS``),
    per-epoch curve rows, and notes on runs that could not be collected."""
    rows, costs, curves, notes = [], [], [], []
    ignore = ignore_label_of(labels)
    for run in runs:
        folder = experiment.fold_folder(run.trainer.name, run.fold)
        predictions = folder / "validation"
        if not (folder / "checkpoint_final.pth").is_file() or not (predictions / "summary.json").is_file():
            notes.append(f"{run.trainer.name} fold {run.fold}: not finished (no checkpoint_final.pth "
                         f"and validation/summary.json in {folder}); left out")
            continue
        case_rows = evaluate_folder(predictions, reference, labels, file_ending, ignore, num_processes)
        rows += [_tag(r, run, "val") for r in case_rows]
        checkpoint = _load_checkpoint(folder / "checkpoint_final.pth")  # once: costs and curve share it
        curve, converged = run_curve(checkpoint, run)
        curves += curve
        costs.append({"method": run.trainer.display, "trainer": run.trainer.name, "fold": str(run.fold),
                      **run_costs(folder, checkpoint), **converged})
    return rows, costs, curves, notes


def predict_test(experiment: Experiment, runs: Sequence[Run], images: Path, output_root: Path,
                 env: dict[str, str], file_ending: str,
                 runner: Callable[..., subprocess.CompletedProcess] | None = None,
                 log: Callable[[str], None] = print) -> dict[tuple[str, str], Path]:
    """Predict the test images with each finished run's model; returns the prediction folders.

    Predictions go to ``output_root/TRAINER/fold_K``. nnUNetv2_predict writes into a temporary
    folder beside it that is moved into place only when it succeeded, so an existing folder is
    complete and is reused.
    """
    cases = test_cases(images, file_ending)
    folders = {}
    for run in runs:
        if not (experiment.fold_folder(run.trainer.name, run.fold) / "checkpoint_final.pth").is_file():
            continue
        destination = output_root / run.trainer.name / f"fold_{run.fold}"
        if not destination.is_dir():
            partial = destination.with_name(destination.name + ".partial")
            if partial.exists():
                shutil.rmtree(partial)
            partial.parent.mkdir(parents=True, exist_ok=True)
            command = predict_command(experiment, run, images, partial)
            log(f"predict test set with {run.trainer.name} fold {run.fold}")
            completed = (runner or subprocess.run)(command, env=env, check=False)
            produced = {p.name for p in partial.glob(f"*{file_ending}")} if partial.is_dir() else set()
            if completed.returncode != 0 or not {f"{c}{file_ending}" for c in cases} <= produced:
                log(f"FAILED test prediction {run.trainer.name} fold {run.fold} "
                    f"(exit code {completed.returncode}); left out")
                continue
            partial.rename(destination)
        folders[(run.trainer.name, str(run.fold))] = destination
    return folders


def collect_test(runs: Sequence[Run], prediction_folders: dict[tuple[str, str], Path], labels_dir: Path,
                 labels: dict, file_ending: str, num_processes: int = 1) -> list[dict]:
    rows = []
    ignore = ignore_label_of(labels)
    for run in runs:
        folder = prediction_folders.get((run.trainer.name, str(run.fold)))
        if folder is not None:
            case_rows = evaluate_folder(folder, labels_dir, labels, file_ending, ignore, num_processes)
            rows += [_tag(r, run, "test") for r in case_rows]
    return rows


def test_cases(images: Path, file_ending: str) -> list[str]:
    """Case names of an nnU-Net input folder (files CASE_XXXX + file ending)."""
    if not images.is_dir():
        raise FileNotFoundError(f"test image folder {images} does not exist")
    cases = sorted({p.name[: -len(file_ending)].rsplit("_", 1)[0]
                    for p in images.glob(f"*_[0-9][0-9][0-9][0-9]{file_ending}")})
    if not cases:
        raise FileNotFoundError(f"no nnU-Net input images (CASE_0000{file_ending}) in {images}")
    return cases


def check_test_labels(images: Path, labels_dir: Path, file_ending: str) -> None:
    """Fail before any prediction when a test image has no label to be scored against."""
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"test label folder {labels_dir} does not exist")
    missing = [c for c in test_cases(images, file_ending) if not (labels_dir / f"{c}{file_ending}").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} test case(s) have no label in {labels_dir}, "
                                f"e.g. {missing[0]}{file_ending}")


def _tag(row: dict, run: Run, split: str) -> dict:
    return {"method": run.trainer.display, "trainer": run.trainer.name, "fold": str(run.fold),
            "split": split, **row}


def _read_peft_summary(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or rerun the training") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object")
    values = {}
    for field in COST_FIELDS:
        value = content.get(field)
        if value is None:
            values[field] = math.nan
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[field] = value
        else:
            raise ValueError(f"{path}: {field} must be a number or null, got {value!r}")
    return values


def _load_checkpoint(path: Path) -> dict:
    import torch

    # nnU-Net's checkpoints hold numpy scalars in their log, which the safe loader refuses; this
    # is the same full load nnU-Net itself does on the user's own results.
    return torch.load(path, map_location="cpu", weights_only=False)


def _float(value) -> float:
    # the log holds Python floats, numpy scalars or 0-d tensors, depending on nnU-Net's version
    return math.nan if value is None else float(value)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
