"""Predicting every case with every adapter of one base: nnU-Net's predictor, one network, several tasks.

Each case is read and preprocessed once, with the base's plans (every adapter's plans were checked to
preprocess identically, ``named_adapters.preprocessing_differences``). Each task then predicts it as
``nnUNetv2_predict`` predicts with that task's model folder: nnU-Net's sliding window, Gaussian
weighting and mirroring (``nnUNetPredictor``), the folds' logits averaged in nnU-Net's order, and
nnU-Net's resampling and export with that task's own plans and dataset.json. Only where the
network's weights come from differs: a fold is a named adapter set active on the one base, not a
state dict loaded into a network of its own. So each task's folder holds what ``apply-adapter`` +
``nnUNetv2_predict`` would write (tests/test_predict_many.py checks it file by file).
"""
from __future__ import annotations

import json
import multiprocessing
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_peft.adapter_io import BaseFingerprintWarning
from nnunet_peft.atomic import staged_folder
from nnunet_peft.named_adapters import disable_adapters, move_adapters, set_adapter
from nnunet_peft.serving.combine import CombinedLabels, combine_case
from nnunet_peft.serving.shared import SharedEncoderPredictor, shared_stages
from nnunet_peft.serving.tasks import COMBINED_FOLDER, Task, load_tasks


def _predictor_class():
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class TaskPredictor(nnUNetPredictor):
        """nnU-Net's predictor for one task whose folds are named adapters on a shared network."""

        adapters: list[str | None] = [None]

        @torch.inference_mode()
        def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
            # nnUNetPredictor.predict_logits_from_preprocessed_data with set_adapter in place of
            # load_state_dict: the same threads, order of the folds, and sums in half precision
            n_threads = torch.get_num_threads()
            torch.set_num_threads(default_num_processes if default_num_processes < n_threads else n_threads)
            prediction = None
            for adapter in self.adapters:
                with activated(self.network, adapter):
                    if prediction is None:
                        prediction = self.predict_sliding_window_return_logits(data).to("cpu")
                    else:
                        prediction += self.predict_sliding_window_return_logits(data).to("cpu")
            if len(self.adapters) > 1:
                prediction /= len(self.adapters)
            torch.set_num_threads(n_threads)
            return prediction

    return TaskPredictor


def activated(network: nn.Module, adapter: str | None):
    """A context in which ``network`` computes with ``adapter`` (None: the base alone)."""
    if adapter is None:
        return disable_adapters(network)
    set_adapter(network, adapter)
    return nullcontext(network)


def task_predictor(network: nn.Module, task: Task, device: torch.device, step_size: float, use_mirroring: bool):
    predictor = _predictor_class()(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                   perform_everything_on_device=True, device=device, verbose=False,
                                   allow_tqdm=False)
    pm = task.plans_manager
    predictor.manual_initialization(network, pm, pm.get_configuration(task.configuration), None, task.dataset_json,
                                    task.trainer_name, task.mirroring_axes)
    predictor.network = network  # not torch.compile'd: modules are swapped between folds and tasks
    predictor.adapters = list(task.adapters)
    return predictor


def list_cases(images: Path, file_ending: str) -> list[tuple[str, list[str]]]:
    """``(case id, channel files)`` for every case in ``images``, as nnUNetv2_predict lists them."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"-i {images}: no such folder")
    lists = create_lists_from_splitted_dataset_folder(str(images), file_ending, num_processes=1)
    if not lists:
        raise FileNotFoundError(f"{images} holds no images CASE_XXXX{file_ending} (nnU-Net's naming, e.g. "
                                f"case1_0000{file_ending})")
    return [(Path(files[0]).name[:-(len(file_ending) + 5)], files) for files in lists]


def export(task: Task, logits: torch.Tensor, properties: dict, truncated: Path, save_probabilities: bool,
           want_probabilities: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Write ``truncated + file_ending`` (and .npz/.pkl) as nnU-Net's export does; with
    ``want_probabilities`` also return ``(segmentation, probabilities)`` in the image's geometry."""
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.inference.export_prediction import (convert_predicted_logits_to_segmentation_with_correct_shape,
                                                      export_prediction_from_logits)

    pm = task.plans_manager
    cm = pm.get_configuration(task.configuration)
    if not want_probabilities:
        export_prediction_from_logits(logits, properties, cm, pm, task.dataset_json, str(truncated), save_probabilities)
        return None
    # export_prediction_from_logits with the probabilities kept for --combine (its segmentation is the
    # argmax of the same probabilities, so the file is the same)
    segmentation, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, pm, cm, pm.get_label_manager(task.dataset_json), properties, return_probabilities=True)
    if save_probabilities:
        np.savez_compressed(str(truncated) + ".npz", probabilities=probabilities)
        save_pickle(properties, str(truncated) + ".pkl")
    pm.image_reader_writer_class().write_seg(segmentation, str(truncated) + task.dataset_json["file_ending"],
                                              properties)
    return segmentation, probabilities


def _device(name: str) -> torch.device:
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"-device must be cpu, cuda or mps, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("-device cuda: no CUDA device is available here; use -device cpu")
    return torch.device(name)


def predict_many(images: Path, out: Path, checkpoint: Path, adapters: Sequence[Path], base: bool = False,
                 combine: bool = False, folds: Sequence[str] | None = None, device: str = "cuda",
                 use_mirroring: bool = True, step_size: float = 0.5, save_probabilities: bool = False,
                 allow_other_base: bool = False, overwrite: bool = False, shared_encoder: bool = True,
                 log=print) -> dict[str, Any]:
    """Predict every case of ``images`` with every adapter (and the base with ``base``) into ``out``.

    ``out/<adapter folder name>/`` per adapter, ``out/base/`` with ``base``, and with ``combine``
    ``out/combined/`` (one label map per case holding every task's classes, ``labels.json`` beside it;
    ``nnunet_peft.serving.combine``). With ``shared_encoder``, the encoder stages no adapter changes run
    once per patch for every task (``nnunet_peft.serving.shared``). Returns timings and what was written.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"-step_size must be in (0, 1], got {step_size}")
    if not adapters and not base:
        raise ValueError("nothing to predict: give adapters with -a and/or --base")
    torch_device = _device(device)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        network, tasks, reference = load_tasks(Path(checkpoint), [Path(a) for a in adapters], folds, base,
                                               allow_other_base)
    for w in caught:  # the base check's warnings are the user's business; others go on as warnings
        if issubclass(w.category, BaseFingerprintWarning):
            log(f"WARNING: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    labels = CombinedLabels.of(tasks) if combine else None  # refuses colliding class names before predicting
    cases = list_cases(Path(images), reference.dataset_json["file_ending"])
    move_adapters(network, torch_device)
    network.eval()
    predictors = [task_predictor(network, task, torch_device, step_size, use_mirroring) for task in tasks]
    runs = [a for t in tasks for a in t.adapters]
    n_shared = shared_stages(network, runs) if shared_encoder and len(runs) > 1 else 0
    sharer = None
    if n_shared and SharedEncoderPredictor.can_share(predictors):
        sharer = SharedEncoderPredictor(network, predictors, n_shared)
        log(f"shared encoder: no adapter changes the first {n_shared} of {len(network.encoder.stages)} encoder stages; "
            f"they run once per patch for all {len(runs)} task folds")
    elif shared_encoder and len(runs) > 1:
        n_shared = 0
        log("shared encoder: none (an adapter changes the first encoder stage, the tasks mirror differently, or the "
            "network is not one of nnU-Net's U-Nets); each task runs the whole network")
    pm = reference.plans_manager
    cm = pm.get_configuration(reference.configuration)
    loaded = time.perf_counter()
    log(f"{len(cases)} case(s), {len(tasks)} task(s): " + ", ".join(
        f"{t.name} ({len(t.folds)} fold{'s' * (len(t.folds) > 1)})" for t in tasks))
    with staged_folder(out, overwrite) as tmp:
        for task in tasks:
            (tmp / task.name).mkdir()
            (tmp / task.name / "dataset.json").write_text(json.dumps(task.dataset_json, indent=4), encoding="utf-8")
            (tmp / task.name / "plans.json").write_text(json.dumps(task.plans, indent=4), encoding="utf-8")
        if labels is not None:
            (tmp / COMBINED_FOLDER).mkdir()
            (tmp / COMBINED_FOLDER / "labels.json").write_text(json.dumps(labels.table(), indent=2), encoding="utf-8")
        preprocessor = cm.preprocessor_class(verbose=False)
        for case, files in cases:
            data, _, properties = preprocessor.run_case(files, None, pm, cm, reference.dataset_json)
            data = torch.from_numpy(data)
            if sharer is not None:
                every_logits = sharer.predict(data)
            else:
                every_logits = [p.predict_logits_from_preprocessed_data(data).cpu() for p in predictors]
            results = []
            for task, logits in zip(tasks, every_logits):
                results.append(export(task, logits, properties, tmp / task.name / case, save_probabilities,
                                      want_probabilities=labels is not None))
            if labels is not None:
                combined = combine_case(labels, tasks, results)
                pm.image_reader_writer_class().write_seg(
                    combined, str(tmp / COMBINED_FOLDER / case) + reference.dataset_json["file_ending"], properties)
            log(f"{case}: done")
    finished = time.perf_counter()
    return {"cases": [c for c, _ in cases], "tasks": [t.name for t in tasks], "load_s": loaded - started,
            "predict_s": finished - loaded, "shared_stages": n_shared}


def configure_threads(device: str) -> None:
    """As nnUNetv2_predict: every core for the CPU, one thread beside a GPU."""
    if device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif device == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
