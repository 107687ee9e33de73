"""`nnunet-peft benchmark` on a fake nnU-Net results tree: run planning, job list, collection, report.

Nothing here trains: nnUNetv2_train/-predict are replaced by recording fakes.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from nnunet_peft.commands import benchmark as command
from nnunet_peft.evaluation import runs
from nnunet_peft.evaluation.collect import count_parameters, mean_epoch_time, run_costs
from nnunet_peft.evaluation.trainer_names import choose_reference, classify_trainer_name

DATASET = "Dataset042_Toy"
CONFIG, PLANS = "3d_fullres", "nnUNetPlans_pretrained"  # the default -p: what plan-from-checkpoint writes
FINETUNE, LORA, STOCK = "nnUNetTrainerFinetune", "nnUNetTrainerCPLoRA_dec_r4_a4", "nnUNetTrainer"
NO_FINETUNE = "nnUNetTrainerNoFinetune"
SPACING_XYZ = (0.5, 1.0, 2.0)  # SimpleITK order; numpy (z, y, x) spacing is (2, 1, 0.5)
VOXEL_ML = 1.0 / 1000
FOLD_CASES = {0: ["c0", "c1", "c2"], 1: ["c3", "c4", "c5"]}
CUBE_SIZES = {"c0": 2, "c1": 3, "c2": 4, "c3": 5, "c4": 6, "c5": 7}
# x-shift of each trainer's predicted cube: Finetune exact, CP-LoRA one voxel off, stock two.
SHIFTS = {FINETUNE: 0, LORA: 1, STOCK: 2}
# nnU-Net's per-epoch pseudo-Dice of every trainer's run on each fold. Smoothed over the last 3 epochs:
# fold 0 0.2, 0.55, 0.667 -> 95% of 0.667 = 0.633 first reached at epoch 3;
# fold 1 0.6, 0.65, 0.65 -> 95% of 0.65 = 0.6175 reached at epoch 2. (nnU-Net's EMA, see _ema, would
# put fold 1 at epoch 1: 0.6, 0.61, 0.614.)
PSEUDO_DICE = {0: [0.2, 0.9, 0.9], 1: [0.6, 0.7, 0.65]}
# MetaLogger's nested checkpoint["logging"]["local"] for these, nnU-Net's flat LocalLogger dict for Finetune
NESTED_LOG = {LORA, STOCK}


def _ema(values: list[float]) -> list[float]:
    """nnU-Net's ema_fg_dice: the first value, then 0.9 x previous + 0.1 x new."""
    out = []
    for v in values:
        out.append(v if not out else 0.9 * out[-1] + 0.1 * v)
    return out


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(SPACING_XYZ)
    return image


def _cube(size: int, shift: int = 0) -> np.ndarray:
    array = np.zeros((10, 10, 14), np.uint8)
    array[1:1 + size, 1:1 + size, 1 + shift:1 + size + shift] = 1
    return array


def _checkpoint(path: Path, pseudo_dice: list[float], epoch_seconds: float, nested: bool = False) -> None:
    """A checkpoint_final.pth with nnU-Net's training log of ``len(pseudo_dice)`` epochs."""
    shared = torch.zeros(4, 3)
    weights = {"encoder.w": shared, "decoder.encoder.w": shared, "decoder.seg.w": torch.zeros(5),
               "norm.num_batches_tracked": torch.tensor(3)}
    epochs = len(pseudo_dice)
    starts = [100.0 + i * 50 for i in range(epochs)]
    log = {"mean_fg_dice": [np.float64(d) for d in pseudo_dice],  # numpy scalars, as nnU-Net logs them
           "ema_fg_dice": [np.float64(d) for d in _ema(pseudo_dice)],
           "dice_per_class_or_region": [[d] for d in pseudo_dice],
           "train_losses": [np.float64(-0.1 * (i + 1)) for i in range(epochs)],
           "val_losses": [np.float64(-0.05 * (i + 1)) for i in range(epochs)],
           "lrs": [0.01 * (1 - i / max(epochs, 1)) ** 0.9 for i in range(epochs)],
           "epoch_start_timestamps": starts, "epoch_end_timestamps": [s + epoch_seconds for s in starts]}
    torch.save({"network_weights": weights, "trainer_name": path.parent.parent.name.split("__")[0],
                "logging": {"local": log} if nested else log}, path)


def _finished_run(results: Path, trainer: str, fold: int, shift: int, pseudo_dice: list[float],
                  nested: bool = False) -> None:
    """What nnUNetv2_train leaves in fold_K: validation predictions, their summary, the final checkpoint."""
    folder = results / DATASET / f"{trainer}__{PLANS}__{CONFIG}" / f"fold_{fold}"
    (folder / "validation").mkdir(parents=True)
    for case in FOLD_CASES[fold]:
        sitk.WriteImage(_image(_cube(CUBE_SIZES[case], shift)), str(folder / "validation" / f"{case}.nii.gz"))
    (folder / "validation" / "summary.json").write_text("{}")
    _checkpoint(folder / "checkpoint_final.pth", pseudo_dice, epoch_seconds=10.0 + fold, nested=nested)
    if trainer != STOCK:
        (folder / "peft_summary.json").write_text(json.dumps({
            "trainer_name": trainer, "method": trainer[len("nnUNetTrainer"):].split("_")[0],
            "trainable_parameters": 1000 if trainer == LORA else 50000,
            "total_parameters": 50000, "adapter_bytes": 4096 if trainer == LORA else 200000,
            "mean_epoch_time_s": 7.5, "peak_gpu_memory_bytes": None}))


@pytest.fixture()
def tree(tmp_path: Path, monkeypatch) -> Path:
    """nnUNet_preprocessed with references; nnUNet_results with two finished folds per trainer."""
    pre = tmp_path / "preprocessed" / DATASET
    (pre / "gt_segmentations").mkdir(parents=True)
    (pre / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "blood": 1},
                                                  "file_ending": ".nii.gz", "channel_names": {"0": "CT"},
                                                  "numTraining": 6}))
    for case, size in CUBE_SIZES.items():
        sitk.WriteImage(_image(_cube(size)), str(pre / "gt_segmentations" / f"{case}.nii.gz"))
    for trainer, shift in SHIFTS.items():
        for fold in FOLD_CASES:
            _finished_run(tmp_path / "results", trainer, fold, shift, PSEUDO_DICE[fold], trainer in NESTED_LOG)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    return tmp_path


def _benchmark(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["benchmark", *argv])
    return args.func(args)


class Recorder:
    """Stands in for subprocess.run; ``effect`` may write what the real command would."""

    def __init__(self, effect=None, returncode: int = 0):
        self.calls: list[tuple[list[str], dict]] = []
        self.effect, self.returncode = effect, returncode

    def __call__(self, cmd, env=None, check=False):
        self.calls.append((list(cmd), env))
        if self.effect is not None:
            self.effect(cmd)
        return subprocess.CompletedProcess(cmd, self.returncode)


def test_report_from_finished_runs(tree: Path, tmp_path: Path):
    out = tmp_path / "bench"
    rc = _benchmark(["-d", "42", "-c", CONFIG, "--trainers", FINETUNE, LORA, STOCK, "--folds", "0", "1",
                     "--collect-only", "--out", str(out), "-np", "1"])
    assert rc == 0
    report = out / "report"
    cases = pd.read_csv(report / "cases.csv")
    assert len(cases) == 3 * 6 and set(cases["split"]) == {"val"}
    # Dice of a cube of side s shifted by k voxels along x: 2 * s*s*(s-k) / (2 s^3) = (s - k) / s
    lora = cases[cases["trainer"] == LORA].set_index("case")
    for case, size in CUBE_SIZES.items():
        assert lora.at[case, "dice"] == pytest.approx((size - 1) / size)
        assert lora.at[case, "ref_volume_ml"] == pytest.approx(size ** 3 * VOXEL_ML)
    methods = pd.read_csv(report / "methods.csv").set_index("method")
    expected = [(s - 1) / s for s in CUBE_SIZES.values()]
    assert methods.at["CPLoRA_dec_r4_a4", "dice_mean"] == pytest.approx(np.mean(expected))
    assert methods.at["CPLoRA_dec_r4_a4", "dice_sd"] == pytest.approx(np.std(expected, ddof=1))
    assert methods.at["Finetune", "dice_mean"] == 1.0 and math.isnan(methods.at["Finetune", "wilcoxon_p"])
    assert methods.at["CPLoRA_dec_r4_a4", "volume_bias_ml"] == pytest.approx(0.0)  # shifted, same size
    # every CP-LoRA case is worse than Finetune: the exact two-sided p for n=6 is 2/2^6
    assert methods.at["CPLoRA_dec_r4_a4", "wilcoxon_p"] == pytest.approx(2 / 64)
    costs = pd.read_csv(report / "costs.csv").set_index("method")
    assert costs.at["CPLoRA_dec_r4_a4", "trainable_parameters"] == 1000
    assert costs.at["CPLoRA_dec_r4_a4", "mean_epoch_time_s"] == 7.5
    # the stock trainer has no peft_summary.json: 12 + 5 parameters (shared tensor once), 10 s / 11 s
    assert costs.at[STOCK, "trainable_parameters"] == 17
    assert costs.at[STOCK, "mean_epoch_time_s"] == pytest.approx(10.5)
    assert math.isnan(costs.at[STOCK, "adapter_bytes"]) and costs.at[STOCK, "cost_source"] == "checkpoint"
    bins = pd.read_csv(report / "volume_bins.csv")
    assert set(bins["volume_bin"]) == {"< 0.0517 mL", "0.0517-0.155 mL", ">= 0.155 mL"}  # terciles by hand
    assert (bins["n"] == 2).all()
    markdown = (report / "report.md").read_text(encoding="utf-8")
    assert "p vs Finetune" in markdown and "| CPLoRA_dec_r4_a4 | 6 | 0.735 +- 0.133" in markdown
    assert "4.0 KiB" in markdown and "Dice by reference volume" in markdown
    for png in ("dice_box_val.png", "dice_vs_volume_val.png", "dice_vs_params_val.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in markdown


def test_explicit_volume_bins_and_rerun_replaces_report(tree: Path, tmp_path: Path):
    out = tmp_path / "bench"
    argv = ["-d", DATASET, "-c", CONFIG, "--trainers", LORA, STOCK, "--folds", "0", "1", "--collect-only",
            "--out", str(out), "-np", "1", "--volume-bins", "0.05"]
    assert _benchmark(argv) == 0
    bins = pd.read_csv(out / "report" / "volume_bins.csv")
    # reference volumes 0.008, 0.027 | 0.064, 0.125, 0.216, 0.343 mL
    assert bins.groupby("volume_bin")["n"].first().to_dict() == {"< 0.05 mL": 2, ">= 0.05 mL": 4}
    assert "No paired test" in (out / "report" / "report.md").read_text(encoding="utf-8")
    (out / "report" / "stale.txt").write_text("from an earlier run")
    assert _benchmark(argv) == 0
    assert not (out / "report" / "stale.txt").exists()
    assert [p.name for p in out.iterdir()] == ["report"]  # no staging folder left behind


def test_jobs_only_lists_what_each_run_still_needs(tree: Path, tmp_path: Path, capsys):
    ckpt = tmp_path / "pretrained.pth"
    ckpt.write_bytes(b"x")
    results = tree / "results" / DATASET
    lora_fold1 = results / f"{LORA}__{PLANS}__{CONFIG}" / "fold_1"
    (lora_fold1 / "validation" / "summary.json").unlink()  # trained, validation interrupted
    stock_fold1 = results / f"{STOCK}__{PLANS}__{CONFIG}" / "fold_1"
    (stock_fold1 / "checkpoint_final.pth").rename(stock_fold1 / "checkpoint_latest.pth")  # interrupted
    rc = _benchmark(["-d", DATASET, "-c", CONFIG, "--trainers", LORA, STOCK, "--folds", "0", "1", "2",
                     "--pretrained", str(ckpt), "--device", "cpu", "--jobs-only"])
    assert rc == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    trainer_dir = runs.trainer_environment({})["nnUNet_extTrainer"]
    prefix = f"nnUNet_extTrainer={trainer_dir} nnUNetv2_train {DATASET} {CONFIG}"
    assert lines == [
        f"{prefix} 1 -p {PLANS} -tr {LORA} --val -device cpu",
        f"{prefix} 2 -p {PLANS} -tr {LORA} -pretrained_weights {ckpt.resolve()} -device cpu",
        f"{prefix} 1 -p {PLANS} -tr {STOCK} --c -device cpu",
        f"{prefix} 2 -p {PLANS} -tr {STOCK} -device cpu",  # from scratch: no pretrained weights
    ]
    assert "4 of 6 runs to do" in captured.err


def test_execute_skips_finished_runs_and_reports_failures(tree: Path, tmp_path: Path):
    ckpt = tmp_path / "pretrained.pth"
    ckpt.write_bytes(b"x")
    experiment = runs.Experiment(DATASET, CONFIG, PLANS, tree / "results", pretrained=ckpt)
    planned = [runs.Run(classify_trainer_name(t), f) for t in (LORA, STOCK) for f in (0, 3)]
    recorder = Recorder(returncode=1)
    env = runs.trainer_environment({"nnUNet_extTrainer": "/elsewhere"})
    outcomes = runs.execute(experiment, planned, env, runner=recorder, log=lambda _: None)
    assert [(o.run.fold, o.returncode) for o in outcomes] == [(0, None), (3, 1), (0, None), (3, 1)]
    commands = [c for c, _ in recorder.calls]
    assert commands[0][-2:] == ["-pretrained_weights", str(ckpt)] and "-pretrained_weights" not in commands[1]
    # the plugin's folder comes first; the user's own trainer folder is kept
    assert recorder.calls[0][1]["nnUNet_extTrainer"].split(":") == [str(runs.trainer_environment({})
                                                                         ["nnUNet_extTrainer"]), "/elsewhere"]


def _one_case_test_set(tmp_path: Path) -> tuple[Path, Path]:
    """A test set of one case, t0, in nnU-Net's input layout, and its reference label."""
    images, labels = tmp_path / "ti", tmp_path / "tl"
    images.mkdir()
    labels.mkdir()
    sitk.WriteImage(_image(_cube(3)), str(images / "t0_0000.nii.gz"))
    sitk.WriteImage(_image(_cube(3)), str(labels / "t0.nii.gz"))
    return images, labels


def test_test_set_is_predicted_per_fold_and_tagged(tree: Path, tmp_path: Path, monkeypatch):
    images, labels = tmp_path / "test_images", tmp_path / "test_labels"
    images.mkdir()
    labels.mkdir()
    for case in ("t0", "t1"):
        sitk.WriteImage(_image(_cube(3)), str(images / f"{case}_0000.nii.gz"))
        sitk.WriteImage(_image(_cube(3)), str(labels / f"{case}.nii.gz"))

    def predict(cmd):  # what nnUNetv2_predict would leave: one segmentation per input case
        out = Path(cmd[cmd.index("-o") + 1])
        out.mkdir(parents=True)
        for case in ("t0", "t1"):
            sitk.WriteImage(_image(_cube(3, shift=1)), str(out / f"{case}.nii.gz"))

    recorder = Recorder(effect=predict)
    monkeypatch.setattr(subprocess, "run", recorder)
    out = tmp_path / "bench"
    rc = _benchmark(["-d", DATASET, "-c", CONFIG, "--trainers", FINETUNE, LORA, "--folds", "0", "1",
                     "--collect-only", "--out", str(out), "-np", "1",
                     "--test-images", str(images), "--test-labels", str(labels)])
    assert rc == 0
    assert len(recorder.calls) == 4 and all(c[0] == "nnUNetv2_predict" for c, _ in recorder.calls)
    first = recorder.calls[0][0]
    assert first[first.index("-f") + 1] == "0" and first[first.index("-npp"):] == ["-npp", "1", "-nps", "1"]
    assert "--disable_tta" not in first  # nnU-Net's mirroring unless asked otherwise
    assert (out / "test_predictions" / LORA / "fold_1" / "t1.nii.gz").is_file()
    cases = pd.read_csv(out / "report" / "cases.csv")
    test = cases[cases["split"] == "test"]
    assert len(test) == 2 * 2 * 2 and test["dice"].to_numpy() == pytest.approx(2 / 3)
    assert "## Held-out test set" in (out / "report" / "report.md").read_text(encoding="utf-8")
    # a second collection reuses the complete prediction folders
    recorder.calls.clear()
    assert _benchmark(["-d", DATASET, "-c", CONFIG, "--trainers", FINETUNE, LORA, "--folds", "0", "1",
                       "--collect-only", "--out", str(out), "-np", "1",
                       "--test-images", str(images), "--test-labels", str(labels)]) == 0
    assert recorder.calls == []


def test_test_folds_limit_which_models_predict_the_test_set(tree: Path, tmp_path: Path, monkeypatch):
    images, labels = _one_case_test_set(tmp_path)

    def predict(cmd):
        out = Path(cmd[cmd.index("-o") + 1])
        out.mkdir(parents=True)
        sitk.WriteImage(_image(_cube(3)), str(out / "t0.nii.gz"))

    recorder = Recorder(effect=predict)
    monkeypatch.setattr(subprocess, "run", recorder)
    common = ["-d", DATASET, "-c", CONFIG, "--trainers", FINETUNE, LORA, "--folds", "0", "1", "--collect-only",
              "-np", "1", "--test-images", str(images), "--test-labels", str(labels)]
    out = tmp_path / "bench"
    assert _benchmark(common + ["--out", str(out), "--test-folds", "1", "--disable-tta"]) == 0
    folds = [c[c.index("-f") + 1] for c, _ in recorder.calls]
    assert folds == ["1", "1"] and all("--disable_tta" in c for c, _ in recorder.calls)
    test = pd.read_csv(out / "report" / "cases.csv").query("split == 'test'")
    assert sorted(set(test["fold"].astype(str))) == ["1"] and len(test) == 2
    assert "fold(s) 1 of each method, without test-time mirroring" in (out / "report" / "report.md").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="--test-folds 2 must be among --folds 0 1"):
        _benchmark(common + ["--out", str(tmp_path / "b2"), "--test-folds", "2"])


def test_disable_tta_reaches_nnunet_predict_only():
    trainer = classify_trainer_name(LORA)
    experiment = runs.Experiment(DATASET, CONFIG, PLANS, Path("/results"), device="cpu", test_time_mirroring=False)
    run = runs.Run(trainer, 0)
    predict = runs.predict_command(experiment, run, Path("/in"), Path("/out"))
    assert predict[0] == "nnUNetv2_predict" and "--disable_tta" in predict and "-npp" not in predict
    train = runs.train_command(experiment, run, runs.RunState.NEEDS_VALIDATION)
    assert "--disable_tta" not in train  # nnU-Net's own validation keeps its mirroring


def test_failed_test_prediction_is_left_out_not_half_kept(tree: Path, tmp_path: Path, monkeypatch):
    images, labels = _one_case_test_set(tmp_path)
    monkeypatch.setattr(subprocess, "run", Recorder(effect=lambda cmd: Path(cmd[cmd.index("-o") + 1]).mkdir(
        parents=True), returncode=1))
    out = tmp_path / "bench"
    assert _benchmark(["-d", DATASET, "-c", CONFIG, "--trainers", LORA, "--folds", "0", "--collect-only",
                       "--out", str(out), "-np", "1", "--test-images", str(images),
                       "--test-labels", str(labels)]) == 0
    assert not (out / "test_predictions" / LORA / "fold_0").exists()
    assert set(pd.read_csv(out / "report" / "cases.csv")["split"]) == {"val"}


@pytest.mark.parametrize("argv,message", [
    (["--trainers", FINETUNE, "nnUNetTrainerFinetune_enc"], "--reference"),
    (["--trainers", "nnUNetTrainerCpLoRA_r4"], "spelled differently"),
    (["--trainers", LORA], "--pretrained"),
    (["--trainers", LORA, LORA, "--collect-only"], "listed twice"),
    (["--trainers", STOCK, "--folds", "x"], "fold 'x'"),
    (["--trainers", STOCK, "--reference", FINETUNE], "not among the trainers"),
    (["--trainers", STOCK, "--test-images", "/x"], "go together"),
    (["--trainers", STOCK, "--volume-bins", "3", "1"], "strictly increasing"),
])
def test_bad_arguments_fail_before_any_work(tree: Path, argv, message):
    with pytest.raises(ValueError, match=message):
        _benchmark(["-d", DATASET, "-c", CONFIG, *argv])


def test_missing_results_are_noted_in_the_report(tree: Path, tmp_path: Path):
    out = tmp_path / "bench"
    assert _benchmark(["-d", DATASET, "-c", CONFIG, "--trainers", FINETUNE, STOCK, "--folds", "0", "4",
                       "--collect-only", "--out", str(out), "-np", "1"]) == 0
    markdown = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert f"{STOCK} fold 4: not finished" in markdown


def test_reference_choice_and_trainer_grammar():
    names = [classify_trainer_name(n) for n in (LORA, FINETUNE, STOCK, "nnUNetTrainer_5epochs")]
    assert [n.method for n in names] == ["CPLoRA", "Finetune", None, None]
    assert [n.display for n in names] == ["CPLoRA_dec_r4_a4", "Finetune", STOCK, "nnUNetTrainer_5epochs"]
    assert choose_reference(names, None)[0] == FINETUNE
    assert choose_reference(names, LORA)[0] == LORA
    reference, note = choose_reference(names[2:], None)
    assert reference is None and "No paired test" in note
    with pytest.raises(ValueError, match="empty token"):
        classify_trainer_name("nnUNetTrainerLoRAC__r4")


def test_cost_helpers_on_their_own(tmp_path: Path):
    shared = torch.ones(2, 2)
    assert count_parameters({"a": shared, "b": shared, "c": torch.ones(3), "n": torch.tensor(1)}) == 7
    assert mean_epoch_time({"epoch_start_timestamps": [0, 10], "epoch_end_timestamps": [4, 16]}) == 5.0
    assert math.isnan(mean_epoch_time({}))
    (tmp_path / "peft_summary.json").write_text(json.dumps({"trainable_parameters": "many"}))
    with pytest.raises(ValueError, match="trainable_parameters"):
        run_costs(tmp_path)


def test_scratch_trainers_get_no_pretrained_weights(tmp_path: Path):
    experiment = runs.Experiment(DATASET, CONFIG, PLANS, tmp_path, pretrained=tmp_path / "src.pth")
    scratch = classify_trainer_name("nnUNetTrainerFinetune_scratch_5ep")
    tuned = classify_trainer_name("nnUNetTrainerFinetune_5ep")
    assert "-pretrained_weights" not in runs.train_command(experiment, runs.Run(scratch, 0), runs.RunState.NEW)
    assert "-pretrained_weights" in runs.train_command(experiment, runs.Run(tuned, 0), runs.RunState.NEW)
    # the from-scratch Finetune is not the reference for the paired tests
    assert choose_reference([scratch, tuned], None)[0] == tuned.name


def test_report_shows_convergence_from_the_training_log(tree: Path, tmp_path: Path, monkeypatch):
    from nnunet_peft.evaluation import collect

    for fold in FOLD_CASES:  # NoFinetune: validated after 0 epochs, so its log is empty
        _finished_run(tree / "results", NO_FINETUNE, fold, 0, [])
    loads = []
    real_load = collect._load_checkpoint
    monkeypatch.setattr(collect, "_load_checkpoint", lambda path: loads.append(path) or real_load(path))
    out = tmp_path / "bench"
    assert _benchmark(["-d", DATASET, "-c", CONFIG, "--trainers", FINETUNE, LORA, STOCK, NO_FINETUNE,
                       "--folds", "0", "1", "--collect-only", "--out", str(out), "-np", "1"]) == 0
    assert len(loads) == len(set(loads)) == 4 * 2  # each run's checkpoint once, for costs and curve alike
    report = out / "report"

    converged = pd.read_csv(report / "convergence.csv")
    assert list(converged["method"]) == ["Finetune"] * 2 + ["CPLoRA_dec_r4_a4"] * 2 + [STOCK] * 2 + ["NoFinetune"] * 2
    lora = converged[converged["trainer"] == LORA].set_index("fold")
    assert list(lora["epochs"]) == [3, 3] and list(lora["epoch_95"]) == [3, 2]
    assert lora.at[0, "final_pseudo_dice"] == pytest.approx(2 / 3)
    assert lora.at[1, "final_pseudo_dice"] == pytest.approx(0.65)
    assert list(lora["schedule_share_95"]) == pytest.approx([1.0, 2 / 3])
    none = converged[converged["trainer"] == NO_FINETUNE]
    assert list(none["epochs"]) == [0, 0]
    assert none[["final_pseudo_dice", "epoch_95", "schedule_share_95"]].isna().all().all()

    curves = pd.read_csv(report / "curves.csv")
    assert list(curves.columns) == ["method", "trainer", "fold", "epoch", "pseudo_dice", "ema_pseudo_dice",
                                    "train_loss", "val_loss", "lr", "smoothed_pseudo_dice"]
    assert len(curves) == 3 * 2 * 3 and NO_FINETUNE not in set(curves["trainer"])
    stock = curves[(curves["trainer"] == STOCK) & (curves["fold"] == 0)]  # nested log, read all the same
    assert list(stock["epoch"]) == [1, 2, 3]
    assert list(stock["pseudo_dice"]) == pytest.approx([0.2, 0.9, 0.9])
    assert list(stock["ema_pseudo_dice"]) == pytest.approx([0.2, 0.27, 0.333])
    assert list(stock["smoothed_pseudo_dice"]) == pytest.approx([0.2, 0.55, 2 / 3])
    assert list(stock["train_loss"]) == pytest.approx([-0.1, -0.2, -0.3])
    assert list(stock["val_loss"]) == pytest.approx([-0.05, -0.1, -0.15])
    assert list(stock["lr"]) == pytest.approx([0.01, 0.01 * (2 / 3) ** 0.9, 0.01 * (1 / 3) ** 0.9])

    markdown = (report / "report.md").read_text(encoding="utf-8")
    section = markdown[markdown.index("## Convergence"):]
    finals = [np.mean(d) for d in PSEUDO_DICE.values()]
    final = f"{np.mean(finals):.3f} +- {np.std(finals, ddof=1):.3f}"
    # epoch_95 3 of 3 on fold 0 and 2 of 3 on fold 1: mean 2.5, mean share (100% + 67%) / 2
    assert f"| CPLoRA_dec_r4_a4 | 2 | 3 | {final} | 0: 3, 1: 2 | 2.5 | 83% |" in section
    assert "| NoFinetune | 2 | 0 | n/a | 0: n/a, 1: n/a | n/a | n/a |" in section
    assert "counted from 1" in section and "](curves.png)" in section
    assert (report / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_defaults_are_what_plan_from_checkpoint_writes_and_five_folds():
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["benchmark", "-d", "5", "-c", CONFIG, "--trainers", LORA])
    assert args.plans == "nnUNetPlans_pretrained" and args.folds == ["0", "1", "2", "3", "4"]
    text = parser._subparsers._group_actions[0].choices["benchmark"].format_help()
    assert "not the fold ensemble" in text and "train from scratch" in text
