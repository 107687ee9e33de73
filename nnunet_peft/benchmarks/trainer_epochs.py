"""What a user waits for: seconds per epoch of nnU-Net's own trainer, every method against ``Finetune``.

The isolated step of ``scripts/benchmark_adapters.py`` leaves out what an epoch of ``nnUNetv2_train``
holds besides the network: the data loader and its augmentation workers (on a CPU they share the cores
with the step), the loss over the deep-supervision outputs, gradient clipping over every parameter,
the optimiser, the validation iterations and the checkpoint written when the moving Dice improves,
and once per training the timing that ``forward_mode="auto"`` does before the first step.

Each run is one process that does what ``nnUNetv2_train -pretrained_weights`` does (nnU-Net's
``get_trainer_from_args``, ``maybe_load_checkpoint``, ``run_training``), on the same preprocessed data,
plans, batch and patch for every method, with timers hooked around the parts of a step (nothing of the
trainer is replaced). Runs alternate: every round trains every method once, in an order rotated per
round, each between two runs of ``Finetune``, and a method's ratio is to the mean of those two: a
shared machine's speed drifts by tens of percent over minutes (measured: 6.0 s to 8.0 s for the same
``Finetune`` epoch within 12 minutes), which a ratio to one reference run per round does not cancel. The peak resident memory (VmHWM) is the training process's own, since each run is a process.

    python scripts/benchmark_trainer_epochs.py -d 612 -p nnUNetPlans_pretrained -f 2 \\
        --pretrained base.pth --methods Finetune CPLoRA ConvLoRA --rounds 2 --out epochs.md

With ``--network-steps REPEATS`` it steps the same trainers' networks alone instead, side by side in one
process (``nnunet_peft.benchmarks.network_steps``): what each network costs without the rest of an epoch,
at a spread of a few percent.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from nnunet_peft.benchmarks.network_steps import FIXED_MODE_NONE, fix_forward_modes, forward_modes_used, rotated
from nnunet_peft.config import METHODS
from nnunet_peft.planning.from_checkpoint import DEFAULT_PLANS_NAME

PARTS = ("data", "forward", "loss", "backward", "optimizer", "validation", "other")
PART_TEXT = {
    "data": "waiting for the next training batch (loader and augmentation)",
    "forward": "network forward (adapters included)",
    "loss": "loss over the deep-supervision outputs",
    "backward": "backward, gradient clipping and the rest of train_step",
    "optimizer": "optimizer.step",
    "validation": "validation iterations",
    "other": "epoch start/end: logging, the EMA Dice, checkpoint_best.pth when it improves",
}


# --------------------------------------------------------------------------------------------- one run
@dataclass
class StepTimers:
    """Seconds per part of the current epoch, filled by hooks around nnU-Net's own calls. ``sync`` waits
    for the device (CUDA runs asynchronously: without it a part would be timed by its launch)."""

    sync: Callable[[], None] = lambda: None
    parts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _open: dict[str, float] = field(default_factory=dict)

    def start(self, part: str) -> None:
        self.sync()
        self._open[part] = time.perf_counter()

    def stop(self, part: str) -> None:
        self.sync()
        self.parts[part] += time.perf_counter() - self._open.pop(part)

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        self.start(part)
        try:
            yield
        finally:
            self.stop(part)


class TimedLoader:
    """An nnU-Net data loader whose ``next`` is timed; everything else passes through (``_finish``...)."""

    def __init__(self, loader, timers: StepTimers, part: str | None) -> None:
        self._loader, self._timers, self._part = loader, timers, part

    def __iter__(self):
        return self

    def __next__(self):
        if self._part is None:
            return next(self._loader)
        with self._timers.timing(self._part):
            return next(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def instrument(trainer, timers: StepTimers) -> dict[str, float]:
    """Hook timers around the parts of ``trainer``'s epoch; returns a dict that receives the one-off costs
    (``train_start``: on_train_start as a whole, ``auto``: the forward-mode timing inside it)."""
    once: dict[str, float] = {}
    get_dataloaders = trainer.get_dataloaders

    def timed_dataloaders():
        train, val = get_dataloaders()
        return TimedLoader(train, timers, "data"), TimedLoader(val, timers, None)

    trainer.get_dataloaders = timed_dataloaders

    on_train_start = trainer.on_train_start

    def timed_on_train_start():
        start = time.perf_counter()
        on_train_start()
        once["train_start"] = time.perf_counter() - start
        _hook_network(trainer, timers)
        _hook_optimizer(trainer, timers)

    trainer.on_train_start = timed_on_train_start
    if hasattr(trainer, "_choose_forward_modes"):
        choose = trainer._choose_forward_modes

        def timed_choose():
            start = time.perf_counter()
            choose()
            once["auto"] = time.perf_counter() - start

        trainer._choose_forward_modes = timed_choose

    train_step = trainer.train_step

    def timed_train_step(batch):
        with timers.timing("step"):
            return train_step(batch)

    trainer.train_step = timed_train_step

    start_val, end_val = trainer.on_validation_epoch_start, trainer.on_validation_epoch_end

    def timed_start_val():
        timers.start("validation")
        start_val()

    def timed_end_val(outputs):
        end_val(outputs)
        timers.stop("validation")

    trainer.on_validation_epoch_start, trainer.on_validation_epoch_end = timed_start_val, timed_end_val
    return once


def _hook_network(trainer, timers: StepTimers) -> None:
    # training-mode calls only: validation_step calls the same modules in eval mode, counted as validation
    def pre(part):
        return lambda module, args: timers.start(part) if module.training else None

    def post(part):
        return lambda module, args, out: timers.stop(part) if module.training else None

    trainer.network.register_forward_pre_hook(pre("forward"))
    trainer.network.register_forward_hook(post("forward"))
    trainer.loss.register_forward_pre_hook(pre("loss"))
    trainer.loss.register_forward_hook(post("loss"))


def _hook_optimizer(trainer, timers: StepTimers) -> None:
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: timers.start("optimizer"))
    trainer.optimizer.register_step_post_hook(lambda opt, args, kwargs: timers.stop("optimizer"))


def peak_rss_mib() -> float:
    """The peak resident set of this process (VmHWM), MiB; NaN where /proc is absent."""
    from nnunet_peft.benchmarks.step_memory import proc_status_kib

    try:
        return proc_status_kib("VmHWM") / 1024
    except (OSError, RuntimeError):
        return float("nan")


def run_one(dataset: str, configuration: str, fold: int, trainer_name: str, plans: str, pretrained: Path | None,
            device: str, forward_mode: str = FIXED_MODE_NONE) -> dict:
    """Train ``trainer_name`` as ``nnUNetv2_train`` would (into a temporary results folder) and return the
    per-epoch times, their breakdown, the one-off costs, the peak memory and the forward modes used."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    timers = StepTimers(sync=torch.cuda.synchronize if device.startswith("cuda") else lambda: None)
    trainer = get_trainer_from_args(dataset, configuration, fold, trainer_name, plans, device=torch.device(device))
    once = instrument(trainer, timers)
    if forward_mode != FIXED_MODE_NONE:
        fix_forward_modes(trainer, forward_mode)
    if pretrained is not None:
        maybe_load_checkpoint(trainer, False, False, str(pretrained))
    epochs: list[dict[str, float]] = []
    on_epoch_start, on_epoch_end = trainer.on_epoch_start, trainer.on_epoch_end

    def timed_epoch_start():
        timers.parts.clear()
        timers.start("epoch")
        on_epoch_start()

    def timed_epoch_end():
        on_epoch_end()
        timers.stop("epoch")
        epochs.append(split_epoch(dict(timers.parts)))

    trainer.on_epoch_start, trainer.on_epoch_end = timed_epoch_start, timed_epoch_end
    trainer.run_training()
    return {"trainer": trainer_name, "forward_mode": forward_mode, "epochs": epochs, **once,
            "peak_rss_mib": peak_rss_mib(), "modes": forward_modes_used(trainer),
            "iterations": trainer.num_iterations_per_epoch, "batch_size": trainer.batch_size,
            "patch_size": list(trainer.configuration_manager.patch_size),
            "trainable": sum(p.numel() for p in trainer.network.parameters() if p.requires_grad)}


def split_epoch(parts: dict[str, float]) -> dict[str, float]:
    """The raw timers of one epoch as ``PARTS`` (each second counted once) and ``total``."""
    step = parts.get("step", 0.0)
    out = {"total": parts.get("epoch", 0.0), "data": parts.get("data", 0.0), "forward": parts.get("forward", 0.0),
           "loss": parts.get("loss", 0.0), "optimizer": parts.get("optimizer", 0.0),
           "validation": parts.get("validation", 0.0)}
    out["backward"] = step - out["forward"] - out["loss"] - out["optimizer"]
    out["other"] = out["total"] - step - out["data"] - out["validation"]
    return out


# --------------------------------------------------------------------------------------------- the rounds
def worker_command(args: argparse.Namespace, name: str, mode: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "nnunet_peft.benchmarks.trainer_epochs", "--worker", str(out),
            "-d", args.dataset, "-c", args.configuration, "-f", str(args.fold), "-p", args.plans,
            "--device", args.device, "--methods", name, "--forward-mode", mode,
            *(["--pretrained", str(args.pretrained)] if args.pretrained else [])]


def trainer_name(method: str, args: argparse.Namespace) -> str:
    return f"nnUNetTrainer{method}_{args.epochs}ep_{args.iterations}it"


def schedule(settings: Sequence[tuple[str, str]], reference: tuple[str, str], round_: int) -> list[tuple[str, str]]:
    """One round: every setting once, in an order rotated per round, each between two runs of the reference
    (R s1 R s2 R ... R), so that each ratio is taken against the reference runs on either side of it."""
    others = [s for s in settings if s != reference]
    order = [reference]
    for setting in rotated(others, round_) if others else []:
        order += [setting, reference]
    return order


def settings_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(method, forward mode) of every setting: each method with its own ``auto``, then the forced modes."""
    return [(m, FIXED_MODE_NONE) for m in args.methods] + [(m, mode) for m in args.fixed_methods
                                                           for mode in args.fixed_modes]


def run_rounds(args: argparse.Namespace, log=print) -> list[dict]:
    """The rounds of ``schedule``, each run in its own process. Results are appended to ``args.raw`` as they
    come, keyed by round and position, and runs found there are not repeated (resumable)."""
    from nnunet_peft.trainer_folder import trainer_environment

    settings = settings_of(args)
    done = read_raw(args.raw)
    finished = {(d["round"], d["seq"]) for d in done}
    for r in range(args.rounds):
        for seq, (method, mode) in enumerate(schedule(settings, (args.reference, FIXED_MODE_NONE), r)):
            if (r, seq) in finished:
                continue
            log(f"[{time.strftime('%H:%M:%S')}] round {r}, run {seq}: {method} ({mode})")
            with tempfile.TemporaryDirectory() as tmp:
                env = trainer_environment({**os.environ, "nnUNet_results": tmp})
                out = Path(tmp) / "run.json"
                returncode = run_worker(worker_command(args, trainer_name(method, args), mode, out), env, args.quiet)
                if returncode != 0 or not out.is_file():
                    raise SystemExit(f"the run of {method} ({mode}) failed with exit code {returncode}; "
                                     f"rerun without --quiet to see nnU-Net's output")
                result = {**json.loads(out.read_text(encoding="utf-8")), "round": r, "seq": seq, "method": method,
                          "forward_mode": mode}
            done.append(result)
            with open(args.raw, "a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
    return done


def run_worker(command: list[str], env: dict[str, str], quiet: bool) -> int:
    """Run one worker in a session of its own and end whatever is left in that session when it returns:
    nnU-Net's augmentation processes, which a worker leaving by ``os._exit`` does not stop. Left running,
    they load the machine for every later run (measured: the same Finetune epoch 6.6 s -> 9.5 s over 30
    runs)."""
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL if quiet else None,
                          start_new_session=True) as worker:
        returncode = worker.wait()
    kill_group(worker.pid)
    return returncode


def kill_group(pid: int) -> None:
    """End every process left in the session (process group) that ``pid`` led."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # none left


def read_raw(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- report
def epoch_stats(run: dict, skip: int) -> dict[str, float]:
    """Median over the epochs after the first ``skip`` of each part and of the total."""
    epochs = run["epochs"][skip:] or run["epochs"]
    return {k: statistics.median(e[k] for e in epochs) for k in ("total", *PARTS)}


def summarise(results: list[dict], skip: int, reference: str = "Finetune") -> list[dict]:
    """One row per (method, mode): median epoch and parts over its runs, and the median over its runs of
    the ratio to the mean of the reference runs just before and after it (the schedule's brackets), which
    cancels a drift of the machine's speed that is linear over the three runs."""
    def is_ref(r):
        return r["method"] == reference and r["forward_mode"] == FIXED_MODE_NONE

    ref_at = {(r["round"], r["seq"]): epoch_stats(r, skip)["total"] for r in results if is_ref(r)}
    rss_ref = [r["peak_rss_mib"] for r in results if is_ref(r)]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["method"], r["forward_mode"])].append(r)
    rows = []
    for (method, mode), runs in groups.items():
        stats = [epoch_stats(r, skip) for r in runs]
        ratios = []
        for st, r in zip(stats, runs):
            brackets = [ref_at[k] for k in ((r["round"], r["seq"] - 1), (r["round"], r["seq"] + 1)) if k in ref_at]
            if is_ref(r):
                ratios.append(1.0)
            elif brackets:
                ratios.append(st["total"] / statistics.mean(brackets))
        row = {"method": method, "forward_mode": mode, "rounds": len(runs),
               **{k: statistics.median(s[k] for s in stats) for k in ("total", *PARTS)},
               "ratio": statistics.median(ratios) if ratios else float("nan"),
               "ratio_min": min(ratios, default=float("nan")), "ratio_max": max(ratios, default=float("nan")),
               "auto_s": statistics.median(r.get("auto", 0.0) for r in runs),
               "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
               "rss_ratio": max(r["peak_rss_mib"] for r in runs) / max(rss_ref) if rss_ref else float("nan"),
               "modes": runs[-1]["modes"], "trainable": runs[-1]["trainable"]}
        rows.append(row)
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in results))}
    return sorted(rows, key=lambda row: (row["method"] != reference, order[row["method"]], row["forward_mode"]))


def format_report(rows: list[dict], results: list[dict], args: argparse.Namespace) -> str:
    first = results[0]
    lines = [f"# Seconds per epoch in nnU-Net's trainer: every method against {args.reference}", "",
             f"Dataset {args.dataset}, {args.configuration}, plans {args.plans}, fold {args.fold}; batch "
             f"{first['batch_size']}, patch {'x'.join(map(str, first['patch_size']))}, {first['iterations']} training "
             f"iterations per epoch, {args.epochs} epochs per run, medians over epochs after the first "
             f"{args.skip_epochs} and then over {args.rounds} rounds; device {args.device}, torch threads "
             f"{os.environ.get('OMP_NUM_THREADS', 'default')}. Each run is its own process doing what "
             "nnUNetv2_train -pretrained_weights does; every round trains every setting once, the order rotated "
             f"per round, each setting between two {args.reference} runs; ratio = epoch / the mean of those two "
             f"{args.reference} epochs (median over rounds, [min, max]).", "",
             "| method | forward mode | epoch s | ratio to Finetune | " + " | ".join(PARTS) +
             " | auto timing s (once) | peak RSS MiB (ratio) | modes used | trainable |",
             "|---|---|---:|---|" + "---:|" * len(PARTS) + "---:|---:|---|---:|"]
    for r in rows:
        modes = ", ".join(f"{m} {n}" for m, n in sorted(r["modes"].items())) or "-"
        lines.append(f"| {r['method']} | {r['forward_mode']} | {r['total']:.2f} | {r['ratio']:.2f} "
                     f"[{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] | "
                     + " | ".join(f"{r[p]:.2f}" for p in PARTS)
                     + f" | {r['auto_s']:.1f} | {r['peak_rss_mib']:.0f} ({r['rss_ratio']:.2f}) | {modes} | "
                       f"{r['trainable']:,} |")
    lines += ["", "Parts (seconds per epoch, medians): " + "; ".join(f"{p}: {PART_TEXT[p]}" for p in PARTS) + "."]
    return "\n".join(lines) + "\n"


def check_plans(dataset: str, plans: str) -> None:
    """Name the plans file every run needs before the first run starts (else each worker fails alike)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise SystemExit("nnUNet_preprocessed is not set: point it at the preprocessed data the runs train on")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"dataset {dataset}: {e}") from e
    path = Path(root) / name / f"{plans}.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: preprocess the dataset with these plans, or name others with -p "
                         f"(nnUNetPlans for nnU-Net's own)")


def network_step_report(args: argparse.Namespace) -> str:
    """``--network-steps``: the settings' networks stepped alone, side by side in this process. The trainers
    are built with nnUNet_results pointing at a temporary folder, so that their logs stay out of the user's
    results (nnU-Net reads the variable when a trainer is made)."""
    from unittest import mock

    from nnunet_peft.benchmarks import network_steps
    from nnunet_peft.trainer_folder import trainer_environment

    reference = (args.reference, FIXED_MODE_NONE)
    settings = [reference] + [setting for setting in settings_of(args) if setting != reference]
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.dict(os.environ, trainer_environment({**os.environ, "nnUNet_results": tmp})):
        networks = [network_steps.build(args.dataset, args.configuration, args.fold, f"nnUNetTrainer{method}",
                                        args.plans, args.device, mode) for method, mode in settings]
    rows = network_steps.step_rounds(networks, args.network_steps)
    first = networks[0]
    header = (f"# One training step of each trainer's network alone, against {args.reference}\n\n"
              f"Dataset {args.dataset}, {args.configuration}, plans {args.plans}, fold {args.fold}; batch "
              f"{first.batch.shape[0]}, patch {'x'.join(map(str, first.batch.shape[2:]))}; device {args.device}; "
              f"forward, deep-supervision loss, backward; median of {args.network_steps} interleaved repeats "
              f"after one warm-up; ratio: median over repeats of step / {args.reference}'s step in that repeat.")
    return network_steps.format_report(rows, header)


# --------------------------------------------------------------------------------------------- command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="preprocessed dataset name or id (nnUNet_preprocessed)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS_NAME, help="plans identifier")
    p.add_argument("--pretrained", type=Path, help="checkpoint the methods start from (-pretrained_weights)")
    p.add_argument("--methods", nargs="+", default=["Finetune", *(spec.token for spec in METHODS.values())],
                   help="trainer-name methods with their tokens (e.g. CPLoRA_dec), timed with the default 'auto'")
    p.add_argument("--fixed-methods", nargs="*", default=[], help="methods also timed with every --fixed-modes")
    p.add_argument("--fixed-modes", nargs="*", default=["reconstruct", "projected", "chain"],
                   help="forward modes set on every layer that has them, instead of 'auto'")
    p.add_argument("--reference", default="Finetune")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--skip-epochs", type=int, default=1, help="epochs left out of the median (start-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("trainer_epochs.md"))
    p.add_argument("--quiet", action="store_true", help="hide nnU-Net's output of the runs")
    p.add_argument("--network-steps", type=int, metavar="REPEATS",
                   help="instead of epochs: step every setting's network alone (no loader, no validation), "
                        "REPEATS times interleaved in this process (nnunet_peft.benchmarks.network_steps)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--forward-mode", default=FIXED_MODE_NONE, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker is not None:
        result = run_one(args.dataset, args.configuration, args.fold, args.methods[0], args.plans, args.pretrained,
                         args.device, args.forward_mode)
        args.worker.write_text(json.dumps(result), encoding="utf-8")
        # nnU-Net's augmenter threads can outlive their worker processes and block the interpreter's exit
        # for good (seen once in 26 runs); the result is written, so leave without waiting for them (the
        # parent ends the augmentation processes with this process's session)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if args.epochs <= args.skip_epochs:
        raise SystemExit(f"--epochs ({args.epochs}) must exceed --skip-epochs ({args.skip_epochs})")
    if args.reference not in args.methods:
        raise SystemExit(f"--methods must include the reference {args.reference}")
    check_plans(args.dataset, args.plans)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.network_steps is not None:
        report = network_step_report(args)
        args.out.write_text(report, encoding="utf-8")
        print(report)
        return 0
    args.raw = args.out.with_suffix(".jsonl")
    results = run_rounds(args)
    report = format_report(summarise(results, args.skip_epochs, args.reference), results, args)
    args.out.write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
