"""`nnunet-peft benchmark --views`: one run per view and trainer, writing probabilities; names and references."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from nnunet_peft.commands import benchmark as command
from nnunet_peft.evaluation import runs, view_ensembles
from nnunet_peft.evaluation.trainer_names import classify_trainer_name

DATASET = "Dataset043_Views"
VIEW_PLANS = [f"nnUNetPlans_pretrained_{v}" for v in ("axial", "coronal", "sagittal")]
LORA, FINETUNE = "nnUNetTrainerCPLoRA_r4", "nnUNetTrainerFinetune"


def _benchmark(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    return (args := parser.parse_args(["benchmark", *argv])).func(args)


def _finished(results: Path, trainer: str, plans: str, fold: int, npz: bool) -> None:
    validation = results / DATASET / f"{trainer}__{plans}__2d" / f"fold_{fold}" / "validation"
    validation.mkdir(parents=True)
    (validation.parent / "checkpoint_final.pth").write_bytes(b"x")
    (validation / "summary.json").write_text("{}")
    if npz:
        (validation / "c0.npz").write_bytes(b"x")


def test_jobs_only_runs_every_trainer_on_every_view_with_its_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    ckpts = [tmp_path / f"{v}.pth" for v in ("ax", "cor", "sag")]
    for c in ckpts:
        c.write_bytes(b"x")
    _finished(tmp_path / "results", LORA, VIEW_PLANS[0], 0, npz=True)  # done, probabilities written
    _finished(tmp_path / "results", LORA, VIEW_PLANS[1], 0, npz=False)  # done before --npz: validate again
    rc = _benchmark(["-d", DATASET, "-c", "2d", "--views", *VIEW_PLANS, "--pretrained", *map(str, ckpts),
                     "--trainers", LORA, "--folds", "0", "--device", "cpu", "--jobs-only"])
    assert rc == 0
    lines = [line.split(" nnUNetv2_train ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        f"{DATASET} 2d 0 -p {VIEW_PLANS[1]} -tr {LORA} --val --npz -device cpu",
        f"{DATASET} 2d 0 -p {VIEW_PLANS[2]} -tr {LORA} -pretrained_weights {ckpts[2].resolve()} --npz -device cpu",
    ]


@pytest.mark.parametrize("argv, message", [
    (["--views", *VIEW_PLANS, "--pretrained", "a.pth"], "takes 3 checkpoint"),
    (["--views", VIEW_PLANS[0], "--pretrained", "a.pth"], "at least two different plans"),
    (["--views", VIEW_PLANS[0], VIEW_PLANS[0], "--pretrained", "a.pth", "b.pth"], "at least two different plans"),
    (["--pretrained", "a.pth", "b.pth"], r"takes 1 checkpoint\(s\) \(one\)"),
])
def test_view_arguments_say_what_was_expected(tmp_path, monkeypatch, argv, message):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for name in ("a.pth", "b.pth"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ValueError, match=message):
        _benchmark(["-d", DATASET, "-c", "2d", "--trainers", LORA, "--jobs-only", *argv])


def test_view_runs_write_probabilities_for_the_ensemble(tmp_path):
    base = runs.Experiment(DATASET, "2d", "unused", tmp_path)
    experiments = view_ensembles.view_experiments(base, VIEW_PLANS, [None] * 3)
    assert [view_ensembles.view_label(e.plans) for e in experiments] == ["axial", "coronal", "sagittal"]
    assert all(e.save_probabilities for e in experiments) and not base.save_probabilities
    assert runs.prediction_options(experiments[0])[-1] == "--save_probabilities"
    assert "--save_probabilities" not in runs.prediction_options(base)
    assert view_ensembles.view_label("myPlans") == "myPlans"


def test_the_default_reference_is_an_ensemble():
    trainers = [classify_trainer_name(n) for n in (LORA, FINETUNE)]
    assert view_ensembles.default_reference(trainers, None) == "Finetune [ensemble]"
    assert view_ensembles.default_reference(trainers[:1], None) == "CPLoRA_r4 [ensemble]"
    assert view_ensembles.default_reference(trainers, LORA) == "CPLoRA_r4 [ensemble]"
    assert view_ensembles.default_reference(trainers, "CPLoRA_r4 [axial]") == "CPLoRA_r4 [axial]"


def test_ensemble_costs_add_up_the_views():
    run = runs.Run(classify_trainer_name(LORA), 0)
    costs = [{"method": f"CPLoRA_r4 [{v}]", "trainer": LORA, "fold": "0", "trainable_parameters": 10 * (i + 1),
              "total_parameters": 100, "adapter_bytes": 40, "mean_epoch_time_s": 2.0,
              "peak_gpu_memory_bytes": 5 + i} for i, v in enumerate(("axial", "coronal", "sagittal"))]
    (row,) = view_ensembles.ensemble_costs(costs, [run])
    assert row["method"] == "CPLoRA_r4 [ensemble]"
    assert (row["trainable_parameters"], row["total_parameters"], row["adapter_bytes"]) == (60, 300, 120)
    assert row["mean_epoch_time_s"] == 6.0 and row["peak_gpu_memory_bytes"] == 7
