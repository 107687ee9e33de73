"""A checkpoint with classes {a, b} fine-tuned on a target with {a, b, c}, through nnU-Net's own commands.

A stock nnU-Net trainer pretrains on the source; ``plan-from-checkpoint`` plans the target from
the checkpoint alone; ``nnunet-peft benchmark`` fine-tunes (CP-LoRA, short schedule) and runs the
NoFinetune baseline with nnUNetv2_train, then predicts a held-out *source* test set with each
model and with the checkpoint itself, and scores a and b. On CPU, a few minutes.
"""
from __future__ import annotations

import csv
import json
import os

import pytest

from nnunet_tiny import make_dataset, nnunet_env, run, stock_trainer_folder, training_env

pytestmark = pytest.mark.slow

PEFT = "nnUNetTrainerCPLoRA_r4_2ep_4it"
BASELINE = "nnUNetTrainerNoFinetune"
STOCK = "nnUNetTrainerTinyStockAB"


def test_new_class_next_to_the_old_ones_and_the_old_task_after_fine_tuning(tmp_path):
    root = tmp_path
    stock_dir = stock_trainer_folder(root, STOCK, epochs=2, iterations=10)
    env = nnunet_env(root)
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(stock_dir)])
    train_env = training_env(env)
    make_dataset(root / "raw", 31, "SourceAB", 6, n_labels=2, label_names=["a", "b"], seed=0)
    make_dataset(root / "raw", 32, "TargetABC", 6, n_labels=3, label_names=["a", "b", "c"], seed=1)
    source_test = make_dataset(root / "source_test", 33, "SourceABTest", 2, n_labels=2, label_names=["a", "b"], seed=2)

    run(["nnUNetv2_plan_and_preprocess", "-d", "31", "-c", "3d_fullres", "-np", "1"], env)
    run(["nnUNetv2_train", "31", "3d_fullres", "0", "-tr", STOCK, "-device", "cpu"], train_env)
    checkpoint = (root / "results" / "Dataset031_SourceAB" / f"{STOCK}__nnUNetPlans__3d_fullres" / "fold_0"
                  / "checkpoint_final.pth")
    planned = run(["nnunet-peft", "plan-from-checkpoint", "-d", "32", "--checkpoint", str(checkpoint), "-np", "1"], env)
    assert "checkpoint has 3 (background, a, b), target 4 (background, a, b, c)" in planned.stdout

    out = root / "benchmark"
    run(["nnunet-peft", "benchmark", "-d", "32", "-c", "3d_fullres", "-p", "nnUNetPlans_pretrained",
         "--pretrained", str(checkpoint), "--trainers", PEFT, BASELINE, "--folds", "0", "--device", "cpu",
         "--disable-tta", "-np", "1", "--out", str(out),
         "--source-test-images", str(source_test / "imagesTr"), "--source-test-labels", str(source_test / "labelsTr")],
        train_env)

    # the load report: at the start of the training log and in peft_summary.json
    fold = root / "results" / "Dataset032_TargetABC" / f"{PEFT}__nnUNetPlans_pretrained__3d_fullres" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text(encoding="utf-8")
    assert log.index("load report: -pretrained_weights") < log.index("Epoch 0")
    assert "classes: background <- background, a <- a, b <- b, c (new)" in log
    report = json.loads((fold / "peft_summary.json").read_text(encoding="utf-8"))["load_report"]
    heads = [t for t in report["tensors"] if ".seg_layers." in t["name"]]
    assert heads and all(t["status"] == "mapped" and t["trainable"] for t in heads)
    assert report["counts"]["mapped"]["tensors"] == len(heads)
    assert report["counts"]["re-initialised"]["tensors"] == 0
    assert report["counts"]["loaded"]["tensors"] > 0 and report["counts"]["adapter"]["tensors"] > 0

    # the old task: a and b on the source test set, for every model next to the base
    with (out / "old_task" / "old_task.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    dice = {(r["method"], r["case"], r["label"]): float(r["dice"]) for r in rows}
    methods = {r["method"] for r in rows}
    assert {r["label"] for r in rows} == {"a", "b"}
    assert len(methods) == 3 and "base (pretrained checkpoint)" in methods
    assert len(rows) == 3 * 2 * 2  # models x cases x shared classes
    # NoFinetune on the extended label set segments exactly as the base: c never wins, a and b are the base's
    baseline = next(m for m in methods if "NoFinetune" in m)
    for case in ("case000", "case001"):
        for label in ("a", "b"):
            assert dice[(baseline, case, label)] == dice[("base (pretrained checkpoint)", case, label)]
    table = (out / "old_task" / "old_task.md").read_text(encoding="utf-8")
    assert "| model | Dice a | Dice b |" in table and "| base (pretrained checkpoint) |" in table
    assert "Old task (2 source test case(s)" in (out / "report" / "report.md").read_text(encoding="utf-8")
