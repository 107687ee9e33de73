"""The in-trainer epoch benchmark: its hooks time the parts of nnU-Net's own loop, its rounds alternate and
resume, its ratios are taken within a round (no timing is asserted: the parts are checked on a fake trainer
whose steps take known shares of a fake clock)."""
import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from nnunet_peft.benchmarks import trainer_epochs as te


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Advancing(nn.Module):
    """A module whose forward advances the fake clock by ``cost`` seconds."""

    def __init__(self, clock: FakeClock, cost: float):
        super().__init__()
        self.clock, self.cost = clock, cost
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, *args):
        self.clock.now += self.cost
        return self.w * 1.0


class ClockSGD(torch.optim.SGD):
    def __init__(self, params, clock: FakeClock):
        super().__init__(params, lr=0.1)
        self.clock = clock

    def step(self, closure=None):
        self.clock.now += 0.2


class FakeTrainer:
    """nnU-Net's loop (nnUNetTrainer.run_training) over modules that take known times."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.network = Advancing(clock, 2.0)
        self.loss = Advancing(clock, 0.5)
        self.optimizer = ClockSGD(self.network.parameters(), clock)
        self.num_iterations_per_epoch, self.num_val_iterations_per_epoch, self.num_epochs = 3, 2, 2
        self.chosen = False

    def get_dataloaders(self):
        clock = self.clock

        def loader(cost):
            while True:
                clock.now += cost
                yield {"data": 0}
        return loader(0.25), loader(0.1)

    def _choose_forward_modes(self):
        self.clock.now += 7.0
        self.chosen = True

    def on_train_start(self):
        self.dataloader_train, self.dataloader_val = self.get_dataloaders()
        self._choose_forward_modes()

    def on_epoch_start(self):
        self.clock.now += 0.05

    def on_train_epoch_start(self):
        self.network.train()

    def train_step(self, batch):
        out = self.network(batch["data"])
        loss = self.loss(out)
        self.clock.now += 3.0  # backward
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def on_train_epoch_end(self, outputs):
        pass

    def on_validation_epoch_start(self):
        self.network.eval()

    def validation_step(self, batch):
        self.network(batch["data"])  # eval mode: counted as validation, not forward
        return {}

    def on_validation_epoch_end(self, outputs):
        pass

    def on_epoch_end(self):
        self.clock.now += 1.0  # a checkpoint

    def on_train_end(self):
        pass

    def run_training(self):  # nnUNetTrainer.run_training, verbatim in structure
        self.on_train_start()
        for epoch in range(self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            outs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                vals = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(vals)
            self.on_epoch_end()
        self.on_train_end()


def test_hooks_put_each_second_of_an_epoch_in_its_part(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(te.time, "perf_counter", clock)
    trainer = FakeTrainer(clock)
    timers = te.StepTimers()
    once = te.instrument(trainer, timers)
    epochs = []
    start, end = trainer.on_epoch_start, trainer.on_epoch_end

    def epoch_start():
        timers.parts.clear()
        timers.start("epoch")
        start()

    def epoch_end():
        end()
        timers.stop("epoch")
        epochs.append(te.split_epoch(dict(timers.parts)))

    trainer.on_epoch_start, trainer.on_epoch_end = epoch_start, epoch_end
    trainer.run_training()
    assert trainer.chosen and once["auto"] == pytest.approx(7.0) and once["train_start"] == pytest.approx(7.0)
    assert len(epochs) == 2
    e = epochs[1]
    assert e["data"] == pytest.approx(3 * 0.25)
    assert e["forward"] == pytest.approx(3 * 2.0)
    assert e["loss"] == pytest.approx(3 * 0.5)
    assert e["backward"] == pytest.approx(3 * 3.0)
    assert e["validation"] == pytest.approx(2 * (0.1 + 2.0))
    assert e["other"] == pytest.approx(0.05 + 1.0)
    assert e["optimizer"] == pytest.approx(3 * 0.2)
    assert sum(e[p] for p in te.PARTS) == pytest.approx(e["total"])


def _run(method, r, seq, totals, rss=1000.0, mode="auto", auto=0.0):
    return {"method": method, "round": r, "seq": seq, "forward_mode": mode, "peak_rss_mib": rss, "modes": {},
            "trainable": 1, "auto": auto,
            "epochs": [{"total": t, **{p: t / len(te.PARTS) for p in te.PARTS}} for t in totals]}


def test_each_ratio_is_to_the_reference_runs_on_either_side_after_the_skipped_epochs():
    # the machine slows down during round 1 (Finetune 10 -> 14 -> 18): the brackets cancel the drift
    results = [_run("Finetune", 0, 0, [99, 10, 10]), _run("CPLoRA", 0, 1, [99, 8, 8], rss=900, auto=5.0),
               _run("Finetune", 0, 2, [99, 10, 10]), _run("CPLoRA", 0, 3, [1, 12, 12], mode="chain"),
               _run("Finetune", 0, 4, [99, 10, 10]),
               _run("Finetune", 1, 0, [99, 10, 10]), _run("CPLoRA", 1, 1, [99, 18, 18], mode="chain"),
               _run("Finetune", 1, 2, [99, 14, 14]), _run("CPLoRA", 1, 3, [99, 14.4, 14.4], rss=850),
               _run("Finetune", 1, 4, [99, 18, 18])]
    rows = {(r["method"], r["forward_mode"]): r for r in te.summarise(results, skip=1)}
    assert rows[("Finetune", "auto")]["ratio"] == 1.0
    cp = rows[("CPLoRA", "auto")]
    # round ratios 8 / 10 and 14.4 / 16: the median of the runs' ratios
    assert cp["ratio"] == pytest.approx(0.85) and (cp["ratio_min"], cp["ratio_max"]) == pytest.approx((0.8, 0.9))
    assert cp["total"] == pytest.approx(11.2) and cp["auto_s"] == pytest.approx(2.5)
    assert cp["rss_ratio"] == pytest.approx(0.9)
    assert rows[("CPLoRA", "chain")]["ratio"] == pytest.approx(1.2 * 0.5 + 1.5 * 0.5)
    assert list(rows)[0] == ("Finetune", "auto")
    text = te.format_report(te.summarise(results, 1), [{**results[0], "batch_size": 2, "patch_size": [8, 8, 8],
                                                        "iterations": 3}],
                            argparse.Namespace(reference="Finetune", dataset="1", configuration="3d_fullres",
                                               plans="p", fold=0, epochs=3, skip_epochs=1, rounds=2, device="cpu"))
    assert "| CPLoRA | auto | 11.20 | 0.85 [0.80, 0.90] |" in text


def test_rounds_bracket_every_setting_rotate_the_order_and_resume_from_the_raw_file(tmp_path, monkeypatch):
    order = []

    def fake_run(command, env, quiet):
        out = Path(command[command.index("--worker") + 1])
        name, mode = command[command.index("--methods") + 1], command[command.index("--forward-mode") + 1]
        order.append((name.split("_")[0][13:], mode))
        assert env["nnUNet_results"] != "untouched" and "nnUNet_extTrainer" in env
        out.write_text(json.dumps(_run("x", 0, 0, [1, 1]) | {"trainer": name}), encoding="utf-8")
        return 0

    monkeypatch.setattr(te, "run_worker", fake_run)
    monkeypatch.setenv("nnUNet_results", "untouched")
    args = te.parser().parse_args(["-d", "7", "--methods", "Finetune", "CPLoRA", "--fixed-methods", "CPLoRA",
                                   "--fixed-modes", "chain", "--rounds", "2", "--epochs", "3", "--iterations", "5",
                                   "--out", str(tmp_path / "r.md")])
    args.raw = tmp_path / "r.jsonl"
    first = te.run_rounds(args, log=lambda s: None)
    ft, cp, chain = ("Finetune", "auto"), ("CPLoRA", "auto"), ("CPLoRA", "chain")
    assert order == [ft, cp, ft, chain, ft,  ft, chain, ft, cp, ft]
    assert [(r["round"], r["seq"], r["method"]) for r in first][:2] == [(0, 0, "Finetune"), (0, 1, "CPLoRA")]
    order.clear()
    assert len(te.run_rounds(args, log=lambda s: None)) == 10 and order == []  # all found in the raw file
    args.rounds = 3
    te.run_rounds(args, log=lambda s: None)
    assert order == [ft, cp, ft, chain, ft]


def test_a_failed_run_stops_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(te, "run_worker", lambda *a, **k: 3)
    args = te.parser().parse_args(["-d", "7", "--methods", "Finetune", "--rounds", "1", "--quiet"])
    args.raw = tmp_path / "r.jsonl"
    with pytest.raises(SystemExit, match="Finetune .auto. failed with exit code 3; rerun without --quiet"):
        te.run_rounds(args, log=lambda s: None)
    assert not args.raw.exists()


def test_a_missing_plans_file_is_named_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    (tmp_path / "Dataset023_Steps").mkdir()
    with pytest.raises(SystemExit, match=r"Dataset023_Steps.nnUNetPlans_pretrained\.json.*-p"):
        te.main(["-d", "Dataset023_Steps", "--out", str(tmp_path / "x.md")])


def test_arguments_are_checked_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match="must exceed --skip-epochs"):
        te.main(["-d", "7", "--epochs", "1", "--out", str(tmp_path / "a.md")])
    with pytest.raises(SystemExit, match="must include the reference Finetune"):
        te.main(["-d", "7", "--methods", "CPLoRA", "--out", str(tmp_path / "a.md")])


def test_timed_loader_passes_everything_else_through():
    class Loader:
        def __init__(self):
            self.finished = False

        def __next__(self):
            return 5

        def _finish(self):
            self.finished = True

    inner, timers = Loader(), te.StepTimers()
    loader = te.TimedLoader(inner, timers, "data")
    assert next(loader) == 5 and "data" in timers.parts
    loader._finish()
    assert inner.finished


def test_a_workers_leftover_processes_are_ended_with_its_session(tmp_path):
    import sys
    import time as clock

    # a worker that leaves a child behind, as nnU-Net's augmenter processes were left by os._exit
    script = ("import subprocess, sys, os; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(tmp_path / 'child')!r}, 'w').write(str(p.pid)); os._exit(0)")
    assert te.run_worker([sys.executable, "-c", script], dict(os.environ), quiet=True) == 0
    child = int((tmp_path / "child").read_text())
    def alive(pid):  # a killed orphan may stay a zombie until init reaps it: that is not running
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        return "\tZ" not in next(line for line in status.splitlines() if line.startswith("State:"))

    if not Path("/proc").is_dir():
        pytest.skip("needs /proc to see whether a process runs")
    for _ in range(50):
        if not alive(child):
            break
        clock.sleep(0.1)
    else:
        pytest.fail("the worker's child outlived kill_group")


# --------------------------------------------------------------------------------------------- network steps
class FakeStepped:
    def __init__(self, name, calls):
        self.name, self.mode, self.modes, self.trainable, self.calls = name, "auto", {}, 1, calls
        self.batch = torch.zeros(1)

    def step(self):
        self.calls.append(self.name)


def test_network_steps_interleave_rotated_and_take_each_ratio_within_its_repeat(monkeypatch):
    from nnunet_peft.benchmarks import network_steps

    calls = []
    # the reference slows down 1 -> 2 -> 4 s over the repeats; "half" takes half of it in every repeat,
    # "same" its time: per-repeat ratios cancel the drift, a ratio of medians would too only by luck
    cost = {"ref": iter([1.0, 2.0, 4.0]), "half": iter([0.5, 1.0, 2.0]), "same": iter([1.0, 2.0, 4.0])}

    def fake_seconds(fn, device):
        fn()
        return next(cost[calls[-1]])

    monkeypatch.setattr(network_steps, "seconds", fake_seconds)
    rows = network_steps.step_rounds([FakeStepped(n, calls) for n in ("ref", "half", "same")], repeats=3, warmup=0)
    assert calls == ["ref", "half", "same", "half", "same", "ref", "same", "ref", "half"]
    assert [(r["method"], r["ratio"], r["step_s"]) for r in rows] == [("ref", 1.0, 2.0), ("half", 0.5, 1.0),
                                                                       ("same", 1.0, 2.0)]
    with pytest.raises(ValueError, match="repeats >= 1"):
        network_steps.step_rounds([FakeStepped("ref", calls)], repeats=0)


@pytest.mark.slow
def test_network_steps_build_each_trainers_network_as_training_does(tmp_path):
    """On a tiny planned dataset: the networks are the trainers' (adapters where the name puts them, a forced
    mode on every layer), and the trainers' logs go to a temporary folder, not the user's results."""
    from nnunet_tiny import make_dataset, nnunet_env, run

    env = nnunet_env(tmp_path)
    make_dataset(Path(env["nnUNet_raw"]), 23, "Steps", 4, shape=(16, 20, 20))
    run(["nnUNetv2_plan_and_preprocess", "-d", "23", "-c", "3d_fullres", "-np", "1"], env)
    out = tmp_path / "steps.md"
    run([os.sys.executable, "-m", "nnunet_peft.benchmarks.trainer_epochs", "-d", "23", "-f", "0", "-p", "nnUNetPlans",
         "--methods",
         "Finetune", "CPLoRA", "CPLoRA_dec", "--fixed-methods", "CPLoRA", "--fixed-modes", "chain",
         "--network-steps", "2", "--out", str(out)], env)
    rows = {tuple(cells[:2]): cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
             if line.startswith("| nnUNetTrainer"))}
    trainable = {key: int(cells[-1].replace(",", "")) for key, cells in rows.items()}
    assert set(rows) == {("nnUNetTrainerFinetune", "auto"), ("nnUNetTrainerCPLoRA", "auto"),
                         ("nnUNetTrainerCPLoRA_dec", "auto"), ("nnUNetTrainerCPLoRA", "chain")}
    assert rows[("nnUNetTrainerFinetune", "auto")][3].startswith("1.00")
    assert rows[("nnUNetTrainerFinetune", "auto")][4] == "-"  # no adapter layers
    assert rows[("nnUNetTrainerCPLoRA", "chain")][4].startswith("chain ") and "," not in rows[("nnUNetTrainerCPLoRA", "chain")][4]
    assert (trainable[("nnUNetTrainerCPLoRA_dec", "auto")] < trainable[("nnUNetTrainerCPLoRA", "auto")]
            < trainable[("nnUNetTrainerFinetune", "auto")])
    assert not any(Path(env["nnUNet_results"]).iterdir())
