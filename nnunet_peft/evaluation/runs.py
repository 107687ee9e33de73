"""The benchmark's runs: which nnU-Net commands train and predict each (trainer, fold), and their state.

Every run is nnU-Net's own ``nnUNetv2_train``; this module only decides the arguments and whether a
run is needed. The state of a run is read from its nnU-Net output folder, so a benchmark that was
interrupted, or whose jobs ran on a cluster, resumes where it stopped.
"""
from __future__ import annotations

import enum
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nnunet_peft.trainer_folder import trainer_environment  # noqa: F401 (used as runs.trainer_environment)
from nnunet_peft.evaluation.trainer_names import TrainerName

RESULT_FOLDER_SEPARATOR = "__"  # nnU-Net's TRAINER__PLANS__CONFIGURATION


class RunState(enum.Enum):
    NEW = "not started"
    PARTIAL = "interrupted (continues from its latest checkpoint)"
    NEEDS_VALIDATION = "trained, validation missing"
    FINISHED = "finished"


@dataclass(frozen=True)
class Experiment:
    """What every run of one benchmark shares."""
    dataset: str  # DatasetNNN_Name, as nnU-Net names the folders
    configuration: str
    plans: str
    results_root: Path
    pretrained: Path | None = None
    device: str | None = None
    # test-set prediction only: nnU-Net's mirroring (8 passes per window in 3-D) and its worker counts
    test_time_mirroring: bool = True
    predict_processes: int | None = None
    # views of a tri-planar method: nnU-Net writes the probabilities (validation --npz, prediction
    # --save_probabilities) that nnU-Net's ensembling averages over the views
    save_probabilities: bool = False

    def model_folder(self, trainer: str) -> Path:
        return self.results_root / self.dataset / RESULT_FOLDER_SEPARATOR.join(
            (trainer, self.plans, self.configuration))

    def fold_folder(self, trainer: str, fold: int | str) -> Path:
        return self.model_folder(trainer) / f"fold_{fold}"


@dataclass(frozen=True)
class Run:
    trainer: TrainerName
    fold: int | str  # an int, or nnU-Net's "all"


def parse_fold(value: str | int) -> int | str:
    """nnU-Net folds: a non-negative integer or ``all``."""
    if value == "all":
        return "all"
    try:
        fold = int(value)
    except (TypeError, ValueError):
        fold = -1
    if fold < 0:
        raise ValueError(f"fold {value!r} must be a non-negative integer or 'all'")
    return fold


def run_state(experiment: Experiment, run: Run) -> RunState:
    folder = experiment.fold_folder(run.trainer.name, run.fold)
    if (folder / "checkpoint_final.pth").is_file():
        validation = folder / "validation"
        if (validation / "summary.json").is_file() and (
                not experiment.save_probabilities or any(validation.glob("*.npz"))):
            return RunState.FINISHED
        return RunState.NEEDS_VALIDATION
    if (folder / "checkpoint_latest.pth").is_file():
        return RunState.PARTIAL
    return RunState.NEW


def train_command(experiment: Experiment, run: Run, state: RunState) -> list[str] | None:
    """The ``nnUNetv2_train`` call that brings ``run`` to FINISHED from ``state`` (None if it is)."""
    if state is RunState.FINISHED:
        return None
    command = ["nnUNetv2_train", experiment.dataset, experiment.configuration, str(run.fold),
               "-p", experiment.plans, "-tr", run.trainer.name]
    if state is RunState.NEW:
        # Plugin trainers start from the pretrained network; nnU-Net's own trainers and 'scratch'
        # ones train from random initialisation (the baseline a small dataset would otherwise get).
        if run.trainer.fine_tunes:
            if experiment.pretrained is None:
                raise ValueError(f"{run.trainer.name} fine-tunes a pretrained network: give --pretrained")
            command += ["-pretrained_weights", str(experiment.pretrained)]
    elif state is RunState.PARTIAL:
        # nnU-Net refuses --c together with -pretrained_weights; the checkpoint holds them anyway
        command.append("--c")
    else:
        command.append("--val")
    if experiment.save_probabilities:
        command.append("--npz")
    if experiment.device is not None:
        command += ["-device", experiment.device]
    return command


def predict_command(experiment: Experiment, run: Run, images: Path, output: Path) -> list[str]:
    """``nnUNetv2_predict`` with one fold's model, so test figures vary over folds like validation."""
    command = ["nnUNetv2_predict", "-i", str(images), "-o", str(output), "-d", experiment.dataset,
               "-c", experiment.configuration, "-p", experiment.plans, "-tr", run.trainer.name,
               "-f", str(run.fold)]
    return command + prediction_options(experiment)


def prediction_options(experiment: Experiment) -> list[str]:
    """What every test-set prediction of the benchmark shares: device, mirroring and worker counts."""
    options = [] if experiment.device is None else ["-device", experiment.device]
    if not experiment.test_time_mirroring:
        options.append("--disable_tta")
    if experiment.predict_processes is not None:
        n = str(experiment.predict_processes)
        options += ["-npp", n, "-nps", n]
    if experiment.save_probabilities:
        options.append("--save_probabilities")
    return options


def job_line(command: Sequence[str], env: dict[str, str]) -> str:
    """One self-contained shell line for a scheduler: the trainer folder travels with the command."""
    return f"nnUNet_extTrainer={shlex.quote(env['nnUNet_extTrainer'])} {shlex.join(command)}"


@dataclass
class RunOutcome:
    run: Run
    state_before: RunState
    returncode: int | None  # None when nothing had to run


def execute(experiment: Experiment, runs: Sequence[Run], env: dict[str, str],
            runner: Callable[..., subprocess.CompletedProcess] | None = None,
            log: Callable[[str], None] = print) -> list[RunOutcome]:
    """Run every unfinished run in turn; a failed run is reported and the others still run."""
    outcomes = []
    for run in runs:
        state = run_state(experiment, run)
        command = train_command(experiment, run, state)
        if command is None:
            log(f"skip {run.trainer.name} fold {run.fold}: {state.value}")
            outcomes.append(RunOutcome(run, state, None))
            continue
        log(f"run  {run.trainer.name} fold {run.fold} ({state.value}): {shlex.join(command)}")
        completed = (runner or subprocess.run)(command, env=env, check=False)
        if completed.returncode != 0:
            log(f"FAILED {run.trainer.name} fold {run.fold}: exit code {completed.returncode}")
        outcomes.append(RunOutcome(run, state, completed.returncode))
    return outcomes
