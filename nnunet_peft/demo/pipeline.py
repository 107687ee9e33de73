"""The demo's steps: synthetic data, stock nnU-Net pretraining, plans from the checkpoint, fine-tuning
with several methods, prediction of held-out cases and a results table.

The adapters end as they are meant to be used: exported and served, all of them and the base's own
task, from the one pretrained base by ``nnunet-peft predict --base`` (one process, the base loaded
once), on the target's held-out cases and on held-out cases of the source, so the table shows beside
each method's Dice on the new task what its model does to the base's task, and that the base kept
aside is the base.

Every nnU-Net step runs through nnU-Net's own command line in a subprocess whose environment points
nnUNet_raw / nnUNet_preprocessed / nnUNet_results into one work folder, so the demo never touches a
user's real nnU-Net folders, and each step's verbose output goes to its own log file there.
A step that finished writes a marker (``state/<step>.json``); a rerun skips it, so an interrupted
demo resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from nnunet_peft.atomic import staged_folder
from nnunet_peft.demo import synthetic
from nnunet_peft.errors import StepFailed
from nnunet_peft.model_folder import SUMMARY_NAME
from nnunet_peft.planning.from_checkpoint import DEFAULT_PLANS_NAME
from nnunet_peft.planning.plans_variant import write_plans_variant

SOURCE_ID, TARGET_ID = 901, 902
SOURCE_NAME = f"Dataset{SOURCE_ID}_SyntheticTBI"
TARGET_NAME = f"Dataset{TARGET_ID}_SyntheticSAH"
CONFIGURATION = "3d_fullres"
FOLD = 0
TARGET_PLANS = DEFAULT_PLANS_NAME  # the target is planned with plan-from-checkpoint's default name
NUM_SOURCE_CASES = 30
# source cases the pretraining never sees (imagesTs; nnU-Net trains on imagesTr only): the base's task
NUM_SOURCE_TEST = 6
NUM_TARGET_TRAIN, NUM_TARGET_TEST = 24, 6  # about the size of a small SAH cohort
# nnU-Net's fold holds cases out for its per-epoch validation loss and pseudo-Dice; the demo scores the
# held-out test cases instead (and skips nnU-Net's validation after training: demo/train.py), so the fold
# keeps only two.
NUM_VALIDATION_CASES = 2
METHODS: tuple[str, ...] = ("CPLoRA", "LoRAC", "DoRAC", "Finetune", "NoFinetune")
# the methods that are not adapters: Finetune is a whole model of its own; NoFinetune is the base itself
# (the checkpoint as it is), so it is what the served base predicts and is not trained
BASELINES = ("Finetune", "NoFinetune")
BASE_ROW = "base (kept aside)"
DEFAULT_WORKDIR = Path("nnunet_peft_demo")


@dataclass(frozen=True)
class Schedule:
    """Epochs x iterations per epoch, spelled into the trainer names (the plugin's name grammar)."""

    pretrain_epochs: int
    pretrain_iterations: int
    finetune_epochs: int
    finetune_iterations: int


# Sized from measurements on a quiet 2-core CPU: one training iteration of the demo's 16-feature
# network on the 24 x 48 x 48 patch costs ~0.45 s (0.6 s with adapters). Trained from scratch, the
# source network predicts no blood at all for its first ~150-350 iterations (it varies from run to
# run), then climbs within ~100 iterations to pseudo-Dice ~0.85; 640 iterations leave a margin of
# about two. Fine-tuning starts from blood-aware features and gets a tenth of that.
# On a GPU an iteration is far cheaper and the schedules can afford what segmentation needs.
SCHEDULES: dict[tuple[str, bool], Schedule] = {
    ("cpu", False): Schedule(16, 40, 6, 10),
    ("cpu", True): Schedule(5, 8, 3, 5),
    ("cuda", False): Schedule(50, 50, 25, 20),
    ("cuda", True): Schedule(10, 20, 5, 10),
}


@dataclass(frozen=True)
class DemoSettings:
    workdir: Path = DEFAULT_WORKDIR
    quick: bool = False
    device: str = "auto"  # auto | cpu | cuda
    num_processes: int | None = None
    # width of the first U-Net stage; None = nnU-Net's plan (32). The CPU default halves it, which
    # quarters the cost of an iteration; the architecture stays nnU-Net's PlainConvUNet.
    base_features: int | None = None
    seed: int = 0
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes must be at least 1, got {self.num_processes}")
        if self.base_features is not None and not 4 <= self.base_features <= 64:
            raise ValueError(f"base_features must be between 4 and 64, got {self.base_features}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {', '.join(METHODS)}; got {list(self.methods)}")


@dataclass(frozen=True)
class ResolvedSettings:
    """DemoSettings with the machine-dependent choices made."""

    workdir: Path
    device: str
    schedule: Schedule
    num_processes: int
    base_features: int | None
    seed: int
    methods: tuple[str, ...]

    @property
    def source_plans(self) -> str:
        return "nnUNetPlans" if self.base_features is None else f"nnUNetPlans_demo{self.base_features}"

    @property
    def pretrain_trainer(self) -> str:
        s = self.schedule
        # the plugin's from-scratch Finetune trainer is stock nnU-Net training (all parameters,
        # random init; it refuses -pretrained_weights) with a schedule in its name; nnU-Net's own
        # nnUNetTrainer_Xepochs variants keep 250 iterations per epoch, far too many for a CPU demo
        return f"nnUNetTrainerFinetune_scratch_{s.pretrain_epochs}ep_{s.pretrain_iterations}it"

    def finetune_trainer(self, method: str) -> str:
        if method == "NoFinetune":
            return "nnUNetTrainerNoFinetune"  # zero epochs by definition
        s = self.schedule
        return f"nnUNetTrainer{method}_{s.finetune_epochs}ep_{s.finetune_iterations}it"

    # ---- folders inside the work folder
    @property
    def raw(self) -> Path:
        return self.workdir / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.workdir / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.workdir / "nnUNet_results"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    @property
    def predictions(self) -> Path:
        return self.workdir / "predictions"

    @property
    def adapters(self) -> Path:
        return self.workdir / "adapters"

    @property
    def test_images(self) -> Path:
        """The target's held-out images and the source's, in one folder: one prediction run each."""
        return self.workdir / "test_images"

    @property
    def served(self) -> Path:
        """``nnunet-peft predict``'s output: one sub-folder per adapter method, ``base/``."""
        return self.predictions / "served"

    @property
    def adapter_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m not in BASELINES)

    def model_folder(self, dataset: str, trainer: str, plans: str) -> Path:
        return self.results / dataset / f"{trainer}__{plans}__{CONFIGURATION}"

    @property
    def source_checkpoint(self) -> Path:
        return self.model_folder(SOURCE_NAME, self.pretrain_trainer, self.source_plans) / f"fold_{FOLD}" / "checkpoint_final.pth"


def resolve(settings: DemoSettings) -> ResolvedSettings:
    device = settings.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    base_features = settings.base_features
    if base_features is None and device == "cpu":
        base_features = 16
    return ResolvedSettings(
        workdir=Path(settings.workdir).resolve(), device=device,
        schedule=SCHEDULES[(device, settings.quick)],
        num_processes=settings.num_processes or max(1, min(4, os.cpu_count() or 1)),
        base_features=base_features, seed=settings.seed, methods=tuple(settings.methods))


# --------------------------------------------------------------------------- running steps

class DemoStepFailed(StepFailed):
    """A step's command failed; the message names the step, its log file and the log's tail."""

    advice = "Fix the cause and run the same command again: finished steps are skipped."


def nnunet_environment(rs: ResolvedSettings, base: dict[str, str] | None = None) -> dict[str, str]:
    from nnunet_peft.trainer_folder import trainer_environment

    env = trainer_environment(base)
    env.update({
        "nnUNet_raw": str(rs.raw), "nnUNet_preprocessed": str(rs.preprocessed),
        "nnUNet_results": str(rs.results),
        "PYTHONUNBUFFERED": "1",  # progress lines arrive as they happen
    })
    # nnU-Net spawns this many export workers (default 8), each importing torch: on a small machine
    # starting them costs more than the exports
    env.setdefault("nnUNet_def_n_proc", str(rs.num_processes))
    return env


_EPOCH_LINE = re.compile(r"Epoch (\d+)\s*$")


def run_logged(command: Sequence[str], log_file: Path, env: dict[str, str], step: str,
               progress: Callable[[str], None] | None = None, tail_lines: int = 25) -> None:
    """Run ``command``, writing its output to ``log_file``; report nnU-Net's epoch lines to ``progress``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env, encoding="utf-8", errors="replace")
        except FileNotFoundError as e:
            raise DemoStepFailed(f"step '{step}' could not start {command[0]!r} ({e}); is nnU-Net installed "
                                 f"in this Python environment?") from e
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            m = _EPOCH_LINE.search(line)
            if m and progress is not None:
                progress(m.group(1))
        code = proc.wait()
    if code != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-tail_lines:]
        raise DemoStepFailed(f"step '{step}' failed (exit code {code}); full log: {log_file}\n"
                             f"--- last {len(tail)} lines ---\n" + "\n".join(tail))


def nnunet_cli(entry_point: str) -> list[str]:
    """Invoke an nnU-Net console script by its module, robust to a PATH without the venv's bin/."""
    module, func = entry_point.rsplit(":", 1)
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


_CLI = {
    "plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
}


# --------------------------------------------------------------------------- the demo

@dataclass
class MethodResult:
    method: str
    trainer: str
    dice: list[float] = field(default_factory=list)
    train_seconds: float | None = None
    summary: dict | None = None
    source_dice: list[float] = field(default_factory=list)  # on the source's held-out cases: the base's task


class Demo:
    def __init__(self, settings: DemoSettings, out: Callable[[str], None] = print) -> None:
        self.rs = resolve(settings)
        self.out = out
        self.t0 = time.monotonic()
        self.env = nnunet_environment(self.rs)
        self.step_no = 0
        trained = [m for m in self.rs.methods if m != "NoFinetune"]
        self.num_steps = 4 + len(trained) + 1 + ("Finetune" in trained)

    # ---- bookkeeping
    def _elapsed(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:2d}:{s % 60:02d}"

    def _marker(self, key: str) -> Path:
        return self.rs.state / f"{key}.json"

    def _step(self, key: str, title: str, action: Callable[[Path], dict | None]) -> dict:
        """Run ``action(log_file)`` unless its marker exists; the marker holds what it returned."""
        self.step_no += 1
        prefix = f"[{self._elapsed()}] {self.step_no:2d}/{self.num_steps} {title}"
        marker = self._marker(key)
        if marker.is_file():
            self.out(f"{prefix}: done before, skipped")
            return json.loads(marker.read_text(encoding="utf-8"))
        self.out(f"{prefix} ...")
        start = time.monotonic()
        record = action(self.rs.logs / f"{key}.log") or {}
        record["seconds"] = round(time.monotonic() - start, 1)
        self.rs.state.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(record, indent=2), encoding="utf-8")
        self.out(f"[{self._elapsed()}]        done in {_duration(record['seconds'])}")
        return record

    def _epoch_progress(self, total: int) -> Callable[[str], None]:
        def report(epoch: str) -> None:
            self.out(f"[{self._elapsed()}]        epoch {int(epoch) + 1}/{total}")
        return report

    # ---- steps
    def run(self) -> list[MethodResult]:
        rs = self.rs
        self.out(f"nnunet-peft demo: work folder {rs.workdir}")
        self.out(f"  device {rs.device}; logs in {rs.logs}; nnU-Net folders nnUNet_raw, nnUNet_preprocessed, "
                 f"nnUNet_results inside it")
        self.out(f"  pretraining {rs.pretrain_trainer}, fine-tuning {rs.schedule.finetune_epochs} epochs x "
                 f"{rs.schedule.finetune_iterations} iterations"
                 + (f", U-Net width {rs.base_features} (nnU-Net's plan: 32)" if rs.base_features else ""))
        self._step("generate_data", "generate synthetic head CT (source: TBI, target: SAH)", self._generate)
        self._step("plan_source", f"plan and preprocess the source ({SOURCE_NAME})", self._plan_source)
        pretrain = rs.pretrain_trainer
        self._step(f"pretrain__{pretrain}__{rs.source_plans}", f"pretrain a stock nnU-Net on the source ({pretrain})",
                   lambda log: self._train(log, SOURCE_ID, pretrain, rs.source_plans, rs.schedule.pretrain_epochs))
        self._step(f"plan_target__{pretrain}__{rs.source_plans}",
                   f"plan the target ({TARGET_NAME}) from the source checkpoint", self._plan_target)
        seconds = {}
        for method in rs.methods:
            if method == "NoFinetune":  # the base itself: nothing to train, the served base predicts it
                continue
            trainer = rs.finetune_trainer(method)
            rec = self._step(f"finetune__{trainer}", f"fine-tune on the target: {method} ({trainer})",
                             lambda log, t=trainer: self._train(log, TARGET_ID, t, TARGET_PLANS,
                                                                rs.schedule.finetune_epochs,
                                                                pretrained=rs.source_checkpoint))
            seconds[method] = rec.get("seconds")
        adapters = rs.adapter_methods
        served = self._step(
            "serve__" + "__".join([f"{pretrain}__{rs.source_plans}"] + [rs.finetune_trainer(m) for m in adapters]),
            f"nnunet-peft predict --base{' with ' + ', '.join(adapters) if adapters else ''}: "
            f"{NUM_TARGET_TEST} held-out target and {NUM_SOURCE_TEST} held-out source cases", self._serve)
        if "Finetune" in rs.methods:
            trainer = rs.finetune_trainer("Finetune")
            self._step(f"predict__{trainer}__target_and_source",
                       f"predict the same cases with Finetune's model (nnU-Net's predictor)",
                       lambda log: self._predict(log, trainer))
        results = [self._collect(m, seconds.get(m), served) for m in rs.methods] + [self._collect_base()]
        self.out(f"[{self._elapsed()}] results (Dice: {NUM_TARGET_TEST} held-out target cases; base's task Dice: "
                 f"{NUM_SOURCE_TEST} held-out source cases):")
        table = format_table(results)
        self.out(table)
        write_tables(results, rs.workdir)
        self.out(f"table written to {rs.workdir / 'results.md'} and {rs.workdir / 'results.csv'}")
        return results

    def _generate(self, log_file: Path) -> dict:
        rs = self.rs
        made = []
        for dataset_id, name, task, n_train, n_test in (
                (SOURCE_ID, SOURCE_NAME, "tbi", NUM_SOURCE_CASES, NUM_SOURCE_TEST),
                (TARGET_ID, TARGET_NAME, "sah", NUM_TARGET_TRAIN, NUM_TARGET_TEST)):
            if not (rs.raw / name / "dataset.json").is_file():  # written atomically: present means complete
                synthetic.write_dataset(rs.raw, dataset_id, task, n_train, n_test, seed=rs.seed)
                made.append(name)
        return {"generated": made}

    def _plan_source(self, log_file: Path) -> dict:
        rs = self.rs
        # -npfp: nnU-Net's integrity check and fingerprint otherwise start 8 worker processes each
        run_logged(nnunet_cli(_CLI["plan_and_preprocess"]) + [
            "-d", str(SOURCE_ID), "-c", CONFIGURATION, "-np", str(rs.num_processes), "-npfp", str(rs.num_processes),
            "--verify_dataset_integrity"],
            log_file, self.env, "plan and preprocess the source")
        if rs.base_features is not None:
            write_plans_variant(rs.preprocessed / SOURCE_NAME, rs.source_plans, CONFIGURATION,
                                base_features=rs.base_features)
        return {}

    def _train(self, log_file: Path, dataset_id: int, trainer: str, plans: str, epochs: int,
               pretrained: Path | None = None) -> dict:
        name = SOURCE_NAME if dataset_id == SOURCE_ID else TARGET_NAME
        write_split(self.rs.raw / name, self.rs.preprocessed / name, NUM_VALIDATION_CASES)
        # nnUNetv2_train without its validation and without timing the forward modes (demo/train.py says why)
        command = [sys.executable, "-m", "nnunet_peft.demo.train", str(dataset_id), CONFIGURATION, str(FOLD),
                   "-tr", trainer, "-p", plans, "-device", self.rs.device]
        if pretrained is not None:
            command += ["-pretrained_weights", str(pretrained)]
        run_logged(command, log_file, self.env, f"train {trainer}",
                   progress=self._epoch_progress(epochs) if epochs else None)
        return {}

    def _plan_target(self, log_file: Path) -> dict:
        rs = self.rs
        run_logged([sys.executable, "-m", "nnunet_peft.cli", "plan-from-checkpoint", "-d", str(TARGET_ID),
                    "--checkpoint", str(rs.source_checkpoint), "-p", TARGET_PLANS, "-np", str(rs.num_processes),
                    "--verify-dataset-integrity", "--overwrite"],
                   log_file, self.env, "plan the target from the checkpoint")
        return {}

    @contextlib.contextmanager
    def _in_process(self, log_file: Path, what: str):
        """Run nnU-Net in this process with the demo's environment, its output going to ``log_file``."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log_file, "w", encoding="utf-8") as log, _patched_environ(self.env), \
                    contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        except Exception as e:
            tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
            raise DemoStepFailed(f"step '{what}' failed ({type(e).__name__}: {e}); full log: "
                                 f"{log_file}\n--- last {len(tail)} lines ---\n" + "\n".join(tail)) from e

    def _test_images(self) -> Path:
        """The target's and the source's held-out images in one folder (their case names differ)."""
        rs = self.rs
        source = rs.raw / SOURCE_NAME
        if not (source / "labelsTs").is_dir():  # a work folder from a demo that held no source cases out
            synthetic.write_test_cases(source, "tbi", NUM_SOURCE_CASES, NUM_SOURCE_TEST, seed=rs.seed)
        folder = rs.test_images
        with staged_folder(folder, overwrite=True) as tmp:
            for dataset in (TARGET_NAME, SOURCE_NAME):
                for image in sorted((rs.raw / dataset / "imagesTs").glob("*.nii.gz")):
                    shutil.copy2(image, tmp / image.name)
        return folder

    def _serve(self, log_file: Path) -> dict:
        """Every adapter method exported and served with the base's own task from the one base."""
        from nnunet_peft.adapter_sharing import export_adapter
        from nnunet_peft.model_folder import load_base
        from nnunet_peft.serving.predict import predict_many
        from nnunet_peft.summary import count_parameters

        rs = self.rs
        shared_label(rs.raw / SOURCE_NAME, rs.raw / TARGET_NAME)
        images = self._test_images()
        with self._in_process(log_file, "serve the adapters and the base") as log:
            exported = []
            for method in rs.adapter_methods:
                model = rs.model_folder(TARGET_NAME, rs.finetune_trainer(method), TARGET_PLANS)
                # named after the method: nnunet-peft predict names its output sub-folders after these
                export_adapter(model, rs.adapters / method, overwrite=True)
                exported.append(rs.adapters / method)
            summary = predict_many(images, rs.served, rs.source_checkpoint, exported, base=True, device=rs.device,
                                   use_mirroring=rs.device == "cuda", overwrite=True,
                                   log=lambda text: print(f"nnunet-peft predict: {text}", file=log, flush=True))
            # what NoFinetune "trains": nothing of the stock network; its size is every percentage's base
            # when Finetune is not run
            _, stock = count_parameters(load_base(rs.source_checkpoint))
        return {"load_s": round(summary["load_s"], 1), "predict_s": round(summary["predict_s"], 1),
                "shared_stages": summary["shared_stages"], "stock_parameters": stock}

    def _predict(self, log_file: Path, trainer: str) -> dict:
        rs = self.rs
        output = rs.predictions / trainer
        staging = rs.predictions / f".{trainer}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)  # the sequential predictor writes its arguments there first
        model = rs.model_folder(TARGET_NAME, trainer, TARGET_PLANS)
        images = rs.test_images if rs.test_images.is_dir() else self._test_images()
        with self._in_process(log_file, f"predict with {trainer}"):
            predict_folder(model, images, staging, rs.device)
        shutil.rmtree(output, ignore_errors=True)
        staging.rename(output)
        return {}

    def _scores(self, predictions: Path) -> tuple[list[float], list[float]]:
        """Dice on the target's held-out cases and on the source's (the class both label blood)."""
        rs = self.rs
        label = shared_label(rs.raw / SOURCE_NAME, rs.raw / TARGET_NAME)
        return (dice_scores(rs.raw / TARGET_NAME / "labelsTs", predictions, label),
                dice_scores(rs.raw / SOURCE_NAME / "labelsTs", predictions, label))

    def _collect(self, method: str, train_seconds: float | None, served: dict) -> MethodResult:
        rs = self.rs
        trainer = rs.finetune_trainer(method)
        if method == "NoFinetune":  # the checkpoint as it is: exactly the served base
            summary = {"trainable_parameters": 0, "total_parameters": served.get("stock_parameters"),
                       "adapter_bytes": 0}
            dice, source_dice = self._scores(rs.served / "base")
            return MethodResult(method, trainer, dice, 0.0, summary, source_dice)
        summary_file = rs.model_folder(TARGET_NAME, trainer, TARGET_PLANS) / f"fold_{FOLD}" / SUMMARY_NAME
        summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else None
        dice, source_dice = self._scores(rs.served / method if method in rs.adapter_methods
                                         else rs.predictions / trainer)
        return MethodResult(method, trainer, dice, train_seconds, summary, source_dice)

    def _collect_base(self) -> MethodResult:
        """The base's task served by the base itself: its Dice is the base's, nothing forgotten."""
        _, source_dice = self._scores(self.rs.served / "base")
        return MethodResult(BASE_ROW, self.rs.pretrain_trainer, [], None, None, source_dice)


def predict_folder(model_folder: Path, images: Path, output: Path, device: str) -> None:
    """nnU-Net's predictor (as nnUNetv2_predict) run in this process, sequentially.

    A subprocess per method would re-import torch and nnU-Net and spawn preprocessing and export
    workers that do the same: on a 2-core machine that cost minutes per method for six small volumes.
    Test-time mirroring (8 forward passes per window in 3-D) is nnU-Net's default on a GPU; on a CPU
    it made prediction the demo's slowest step, so there it is off (as nnUNetv2_predict --disable_tta).
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    on_gpu = device == "cuda"
    predictor = nnUNetPredictor(device=torch.device(device), perform_everything_on_device=on_gpu,
                                use_mirroring=on_gpu, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(FOLD,))
    predictor.predict_from_files_sequential(str(images), str(output))


@contextlib.contextmanager
def _patched_environ(env: dict[str, str]):
    """nnU-Net reads nnUNet_extTrainer from os.environ when it looks a trainer up by name."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def write_split(raw_dataset: Path, preprocessed_dataset: Path, num_val: int) -> Path:
    """Fold 0 of ``splits_final.json``: the last ``num_val`` training cases validate, the rest train.

    An existing split file is kept (nnU-Net's rule: splits are never silently replaced).
    """
    path = preprocessed_dataset / "splits_final.json"
    if not path.is_file():
        cases = sorted(p.name[: -len(".nii.gz")] for p in (raw_dataset / "labelsTr").glob("*.nii.gz"))
        if len(cases) <= num_val:
            raise ValueError(f"{raw_dataset / 'labelsTr'} holds {len(cases)} cases; need more than {num_val}")
        path.write_text(json.dumps([{"train": cases[:-num_val], "val": cases[-num_val:]}], indent=2), encoding="utf-8")
    return path


def shared_label(source: Path, target: Path) -> int:
    """The label value of the one class the source and the target share: blood.

    A model fine-tuned on the target predicts the target's classes; on source cases what it calls
    blood is compared with the source's blood. Both synthetic datasets have exactly one foreground
    class, blood, as 1 (source: haemorrhage, target: subarachnoid haemorrhage); anything else is refused.
    """
    values = []
    for folder in (source, target):
        labels = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["labels"]
        foreground = sorted(int(v) for k, v in labels.items() if k != "background")
        if labels.get("background") != 0 or foreground != [1]:
            raise ValueError(f"{folder / 'dataset.json'} labels {labels}; the demo expects background 0 and one "
                             f"foreground class (blood) 1")
        values.append(foreground[0])
    return values[0]


def dice_scores(reference_folder: Path, prediction_folder: Path, label: int = 1) -> list[float]:
    """Per-case Dice of ``label`` with nnU-Net's own metric code, one value per reference case."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    references = sorted(reference_folder.glob("*.nii.gz"))
    if not references:
        raise FileNotFoundError(f"no reference labels (*.nii.gz) in {reference_folder}")
    scores = []
    for ref in references:
        pred = prediction_folder / ref.name
        if not pred.is_file():
            raise FileNotFoundError(f"prediction {pred} is missing for reference {ref}; rerun the demo")
        scores.append(float(compute_metrics(str(ref), str(pred), SimpleITKIO(), [label])["metrics"][label]["Dice"]))
    return scores


# --------------------------------------------------------------------------- the table

COLUMNS = ("method", "Dice", "base's task Dice", "trainable parameters (% of Finetune's)", "adapter file",
           "training time")


def finetune_parameters(results: Sequence[MethodResult]) -> int | None:
    """What Finetune trains, the one base of every percentage: its own count, else the stock network's
    (NoFinetune's total, the network without adapters)."""
    by_method = {r.method: r.summary or {} for r in results}
    return by_method.get("Finetune", {}).get("trainable_parameters") or \
        by_method.get("NoFinetune", {}).get("total_parameters")


def table_rows(results: Sequence[MethodResult]) -> list[tuple[str, ...]]:
    rows = []
    reference = finetune_parameters(results)
    for r in results:
        if r.method == BASE_ROW:  # serves the base's task only; on the new task it is NoFinetune
            rows.append((r.method, "-", _dice_text(r.source_dice), "-", "-", "-"))
            continue
        s = r.summary or {}
        trainable = s.get("trainable_parameters")
        params_text = "n/a" if trainable is None else f"{trainable:,}" + (
            f" ({100.0 * trainable / reference:.1f}%)" if reference else "")
        size = s.get("adapter_bytes")
        rows.append((r.method, _dice_text(r.dice), _dice_text(r.source_dice), params_text,
                     "n/a" if size is None else format_bytes(size),
                     "n/a" if r.train_seconds is None else _duration(r.train_seconds)))
    return rows


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v == v]  # nnU-Net gives NaN when both masks are empty
    return sum(values) / len(values) if values else None


def _dice_text(dice: Sequence[float]) -> str:
    """Mean ± sd over the cases (sd with two or more)."""
    dice = [d for d in dice if d == d]
    if not dice:
        return "n/a"
    mean = sum(dice) / len(dice)
    text = f"{mean:.3f}"
    if len(dice) > 1:
        text += f" ± {(sum((d - mean) ** 2 for d in dice) / (len(dice) - 1)) ** 0.5:.3f}"
    return text


def format_table(results: Sequence[MethodResult]) -> str:
    """A plain-text table for the terminal, columns aligned."""
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_tables(results: Sequence[MethodResult], folder: Path) -> None:
    rows = table_rows(results)
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    (folder / "results.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    with open(folder / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "trainer", "dice_mean", "dice_per_case", "base_task_dice_mean",
                         "base_task_dice_per_case", "trainable_parameters", "total_parameters", "adapter_bytes",
                         "training_seconds"])
        for r in results:
            s = r.summary or {}
            means = [_mean(r.dice), _mean(r.source_dice)]
            writer.writerow([r.method, r.trainer, *[
                cell for mean, dice in zip(means, (r.dice, r.source_dice))
                for cell in ("" if mean is None else f"{mean:.4f}", " ".join(f"{d:.4f}" for d in dice))],
                s.get("trainable_parameters", ""), s.get("total_parameters", ""), s.get("adapter_bytes", ""),
                "" if r.train_seconds is None else r.train_seconds])


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d} min" if seconds >= 60 else f"{seconds} s"


def run_demo(settings: DemoSettings, out: Callable[[str], None] = print) -> list[MethodResult]:
    return Demo(settings, out).run()
