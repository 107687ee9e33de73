"""Convergence from nnU-Net's training log: curve rows, smoothing, epoch_95, final value, the curve plot, on hand-made logs."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import pandas as pd
import pytest

from nnunet_peft.evaluation import collect, plots, report
from nnunet_peft.evaluation.collect import convergence, run_costs, run_curve, training_curve, training_log
from nnunet_peft.evaluation.runs import Run
from nnunet_peft.evaluation.trainer_names import classify_trainer_name

# Smoothed over 3 epochs: 0.1, 0.5, 0.65, 0.9, 0.8667; 95% of the final 0.8667 is 0.8233, so epoch_95 = 4.
# nnU-Net's EMA (second list) would say 4 as well here, but see the lag test below.
LOG = {"mean_fg_dice": [0.1, 0.9, 0.95, 0.85, 0.8], "ema_fg_dice": [0.1, 0.5, 0.75, 0.8, 0.8],
       "train_losses": [1.0, 0.5, 0.2, 0.1, 0.0], "val_losses": [1.1, 0.6, 0.3, 0.2, 0.1],
       "lrs": [0.01, 0.008, 0.006, 0.004, 0.002],
       "epoch_start_timestamps": [0, 10, 20, 30, 40], "epoch_end_timestamps": [4, 14, 24, 34, 44]}


def _curve(pseudo_dice: list[float]) -> list[dict]:
    return training_curve({"mean_fg_dice": pseudo_dice, "ema_fg_dice": pseudo_dice})


def _ema(values: list[float]) -> list[float]:
    out = []
    for v in values:
        out.append(v if not out else 0.9 * out[-1] + 0.1 * v)
    return out


def test_epoch_95_is_the_first_epoch_whose_smoothed_pseudo_dice_reaches_95_percent_of_the_final():
    rows = training_curve(LOG)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2] == pytest.approx({"epoch": 3, "pseudo_dice": 0.95, "ema_pseudo_dice": 0.75, "train_loss": 0.2,
                                     "val_loss": 0.3, "lr": 0.006, "smoothed_pseudo_dice": 0.65})
    assert [r["smoothed_pseudo_dice"] for r in rows] == pytest.approx([0.1, 0.5, 0.65, 0.9, 2.6 / 3])
    assert convergence(rows) == pytest.approx({"epochs": 5, "final_pseudo_dice": 2.6 / 3, "epoch_95": 4})
    # the first crossing counts, even when the curve overshoots and comes back
    assert convergence(_curve([0.8, 0.9, 0.7, 0.8]))["epoch_95"] == 1
    # the final value itself always qualifies: a curve still rising at the end converges at its last epoch
    assert convergence(_curve([0.1, 0.2, 0.4]))["epoch_95"] == 3


def test_a_curve_flat_from_the_start_converges_at_once_though_nnunets_ema_lags():
    # a run that starts at its level: nnU-Net's EMA seeded with a low first epoch would still be climbing
    # at epoch 15 (0.3 -> 0.686, far from 0.8), and 95% of its final value would be reached only at epoch 13
    raw = [0.3] + [0.8] * 14
    ema = _ema(raw)
    rows = training_curve({"mean_fg_dice": raw, "ema_fg_dice": ema})
    assert next(i + 1 for i, e in enumerate(ema) if e >= 0.95 * ema[-1]) == 13
    assert convergence(rows)["epoch_95"] == 4 and convergence(rows)["final_pseudo_dice"] == pytest.approx(0.8)


def test_meta_logger_nesting_is_unwrapped():
    assert training_log({"logging": {"local": LOG}}) is LOG
    assert training_log({"logging": LOG}) is LOG
    assert training_log({}) == {}
    run = Run(classify_trainer_name("nnUNetTrainerCPLoRA_dec_r4_a4"), 1)
    nested, flat = run_curve({"logging": {"local": LOG}}, run), run_curve({"logging": LOG}, run)
    assert nested == flat
    rows, figures = nested
    assert rows[0] == {"method": "CPLoRA_dec_r4_a4", "trainer": "nnUNetTrainerCPLoRA_dec_r4_a4", "fold": "1",
                       "epoch": 1, "pseudo_dice": 0.1, "ema_pseudo_dice": 0.1, "train_loss": 1.0,
                       "val_loss": 1.1, "lr": 0.01, "smoothed_pseudo_dice": 0.1}
    assert figures["epoch_95"] == 4


def test_zero_epochs_and_runs_that_learned_nothing_have_no_epoch_95():
    empty = {key: [] for key in LOG}
    assert training_curve(empty) == [] and training_curve({}) == []
    figures = convergence(training_curve(empty))
    assert figures["epochs"] == 0
    assert math.isnan(figures["final_pseudo_dice"]) and math.isnan(figures["epoch_95"])
    flat_zero = convergence(_curve([0.0, 0.0, 0.0]))
    assert flat_zero["final_pseudo_dice"] == 0.0 and math.isnan(flat_zero["epoch_95"])
    assert math.isnan(convergence(_curve([0.3, float("nan")]))["epoch_95"])


def test_epochs_are_counted_even_where_a_field_is_missing():
    rows = training_curve({"epoch_start_timestamps": [0, 1], "epoch_end_timestamps": [1, 2],
                           "mean_fg_dice": [0.5]})
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["pseudo_dice"] == 0.5 and math.isnan(rows[1]["pseudo_dice"])
    assert math.isnan(rows[0]["ema_pseudo_dice"]) and math.isnan(convergence(rows)["epoch_95"])


def test_run_costs_reads_a_checkpoint_it_is_given(tmp_path: Path, monkeypatch):
    def no_second_load(path):
        raise AssertionError(f"{path} loaded again")

    (tmp_path / "checkpoint_final.pth").write_bytes(b"")
    monkeypatch.setattr(collect, "_load_checkpoint", no_second_load)
    costs = run_costs(tmp_path, {"logging": {"local": LOG}})
    assert costs["mean_epoch_time_s"] == 4.0 and costs["cost_source"] == "checkpoint"


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_curve_plot_has_one_panel_per_method_with_a_curve(tmp_path: Path):
    methods = [f"M{i}" for i in range(13)] + ["NoFinetune"]
    curves = pd.DataFrame([{"method": m, "trainer": m, "fold": str(f), "epoch": e, "pseudo_dice": 0.5,
                            "ema_pseudo_dice": 0.1 * e, "smoothed_pseudo_dice": 0.5} for m in methods[:-1] for f in range(5)
                           for e in range(1, 9)])
    converged = pd.DataFrame({"method": methods[:-1], "epoch_95": [8] * 13})
    assert plots.write_curves(tmp_path, curves, converged, methods) == "curves.png"
    # 13 panels in 4 columns, 4 rows: (3.4 x 4) x (2.6 x 4 + 0.4) inches at 110 dpi; NoFinetune gets none
    assert _png_size(tmp_path / "curves.png") == (round(3.4 * 4 * 110), round(10.8 * 110))
    assert plots.write_curves(tmp_path / "none", curves.iloc[:0], converged, methods) is None


def test_report_without_training_logs_has_no_convergence_section(tmp_path: Path):
    rows = [{"method": "A", "case": "c", "label": "1", "dice": 0.5, "hd95_mm": 1.0, "ref_volume_ml": 1.0,
             "pred_volume_ml": 1.0}]
    path = report.write_report(tmp_path / "r", rows, [{"method": "A"}])
    assert "## Convergence" not in path.read_text(encoding="utf-8")
    assert not (tmp_path / "r" / "curves.csv").exists() and not (tmp_path / "r" / "convergence.csv").exists()
