"""The demo pipeline without nnU-Net runs: arguments, names, step skipping, logs, the results table."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from nnunet_peft.cli import build_parser
from nnunet_peft.demo import pipeline
from nnunet_peft.commands.demo import settings_from_args
from nnunet_peft.demo.pipeline import (Demo, DemoSettings, DemoStepFailed, MethodResult, format_bytes,
                                       format_table, resolve, run_logged, write_tables)


def test_arguments_become_settings(tmp_path):
    args = build_parser().parse_args(["demo", "--quick", "--workdir", str(tmp_path / "w"), "--device", "cpu",
                                      "--methods", "LoRAC", "NoFinetune", "--seed", "3"])
    s = settings_from_args(args)
    assert (s.quick, s.device, s.methods, s.seed, s.workdir) == (True, "cpu", ("LoRAC", "NoFinetune"), 3, tmp_path / "w")
    defaults = settings_from_args(build_parser().parse_args(["demo"]))
    assert defaults.methods == pipeline.METHODS and not defaults.quick and defaults.device == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--methods", "LoRA"])


@pytest.mark.parametrize("bad", [dict(device="tpu"), dict(num_processes=0), dict(base_features=2), dict(methods=()),
                                 dict(methods=("CPLoRA", "Magic"))])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        DemoSettings(**bad)


def test_resolved_names_follow_the_trainer_grammar(tmp_path):
    from nnunet_peft.name_grammar import parse_trainer_name

    rs = resolve(DemoSettings(workdir=tmp_path, device="cpu"))
    assert rs.base_features == 16 and rs.source_plans == "nnUNetPlans_demo16"
    s = pipeline.SCHEDULES[("cpu", False)]
    assert rs.pretrain_trainer == f"nnUNetTrainerFinetune_scratch_{s.pretrain_epochs}ep_{s.pretrain_iterations}it"
    assert parse_trainer_name(rs.pretrain_trainer).scratch
    assert rs.finetune_trainer("CPLoRA") == f"nnUNetTrainerCPLoRA_{s.finetune_epochs}ep_{s.finetune_iterations}it"
    assert rs.finetune_trainer("NoFinetune") == "nnUNetTrainerNoFinetune"
    for name in [rs.pretrain_trainer] + [rs.finetune_trainer(m) for m in pipeline.METHODS]:
        spec = parse_trainer_name(name)
        if "NoFinetune" not in name:
            assert (spec.epochs, spec.iterations) in {(s.pretrain_epochs, s.pretrain_iterations),
                                                      (s.finetune_epochs, s.finetune_iterations)}
    quick = resolve(DemoSettings(workdir=tmp_path, device="cpu", quick=True))
    assert quick.schedule.finetune_epochs * quick.schedule.finetune_iterations < s.finetune_epochs * s.finetune_iterations
    assert resolve(DemoSettings(workdir=tmp_path, device="cuda")).source_plans == "nnUNetPlans"  # nnU-Net's width
    assert rs.source_checkpoint == (tmp_path / "nnUNet_results" / pipeline.SOURCE_NAME /
                                    f"{rs.pretrain_trainer}__nnUNetPlans_demo16__3d_fullres" / "fold_0" /
                                    "checkpoint_final.pth")


def test_environment_points_nnunet_into_the_work_folder(tmp_path):
    from nnunet_peft.trainer_folder import trainer_dir

    rs = resolve(DemoSettings(workdir=tmp_path, device="cpu"))
    env = pipeline.nnunet_environment(rs, base={"nnUNet_extTrainer": "/elsewhere", "nnUNet_raw": "/real/raw"})
    assert env["nnUNet_raw"] == str(tmp_path / "nnUNet_raw")
    assert env["nnUNet_results"] == str(tmp_path / "nnUNet_results")
    assert env["nnUNet_extTrainer"].split(":") == [str(trainer_dir()), "/elsewhere"]


def test_run_logged_reports_epochs_and_failures(tmp_path):
    seen = []
    script = "import sys; print('2026-01-01 10:00:00.0: Epoch 0'); print('2026: Epoch 1'); print('boom'); sys.exit(3)"
    with pytest.raises(DemoStepFailed) as e:
        run_logged([sys.executable, "-c", script], tmp_path / "logs" / "x.log", env=None, step="train X",
                   progress=seen.append)
    assert seen == ["0", "1"]
    msg = str(e.value)
    assert "train X" in msg and "exit code 3" in msg and str(tmp_path / "logs" / "x.log") in msg
    assert msg.rstrip().endswith("boom")
    assert "boom" in (tmp_path / "logs" / "x.log").read_text(encoding="utf-8")


def test_training_skips_validation_and_mode_timing_for_every_demo_trainer(tmp_path):
    """demo/train.py replaces the two steps where every trainer the demo runs inherits them from, and then
    a trainer's own steps print that they were skipped instead of running."""
    import subprocess
    import types

    rs = resolve(DemoSettings(workdir=tmp_path, device="cpu"))
    trainers = [rs.pretrain_trainer] + [rs.finetune_trainer(m) for m in pipeline.METHODS if m != "NoFinetune"]
    code = ("import types; from nnunet_peft.demo import train; from nnunet_peft.training.trainer import trainer_class; "
            "train.patch_trainers(); "
            f"classes = [trainer_class(t) for t in {trainers!r}]; "
            "fake = types.SimpleNamespace(print_to_log_file=print); "
            "[(c.perform_actual_validation(fake, True), c._choose_forward_modes(fake)) for c in classes]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr
    from nnunet_peft.demo.train import MODES_UNTUNED, VALIDATION_SKIPPED
    assert done.stdout.splitlines() == [VALIDATION_SKIPPED, MODES_UNTUNED] * len(trainers)


def test_steps_run_once_and_failed_steps_rerun(tmp_path):
    demo = Demo(DemoSettings(workdir=tmp_path, device="cpu"), out=lambda s: None)
    calls = []
    demo._step("a", "step a", lambda log: calls.append(log) or {"x": 1})
    record = demo._step("a", "step a", lambda log: calls.append(log))
    assert len(calls) == 1 and record["x"] == 1 and "seconds" in record
    assert calls[0] == tmp_path / "logs" / "a.log"

    def fails(log):
        raise DemoStepFailed("no")
    with pytest.raises(DemoStepFailed):
        demo._step("b", "step b", fails)
    assert not (tmp_path / "state" / "b.json").exists()


def _write_label(path, array):
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def _write_dataset_json(folder, label_name):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, label_name: 1}}))


def test_rerun_after_all_steps_only_prints_the_table(tmp_path):
    """With every step marked done, the demo reads predictions and summaries and writes its table: adapters
    from the served folders, Finetune from its own, NoFinetune and the base kept aside from the served base."""
    settings = DemoSettings(workdir=tmp_path, device="cpu", methods=("LoRAC", "Finetune", "NoFinetune"))
    rs = resolve(settings)
    _write_dataset_json(rs.raw / pipeline.SOURCE_NAME, "haemorrhage")
    _write_dataset_json(rs.raw / pipeline.TARGET_NAME, "subarachnoid haemorrhage")
    ref = np.zeros((4, 6, 6), np.uint8)
    ref[1:3, 1:4, 1:4] = 1  # 18 voxels
    _write_label(rs.raw / pipeline.TARGET_NAME / "labelsTs" / "sah_024.nii.gz", ref)
    _write_label(rs.raw / pipeline.SOURCE_NAME / "labelsTs" / "tbi_030.nii.gz", ref)
    half = ref.copy()
    half[2] = 0  # 9 of 18 voxels found: Dice 2*9/(9+18) = 2/3
    none = np.zeros_like(ref)
    served, finetune = rs.predictions / "served", rs.predictions / rs.finetune_trainer("Finetune")
    for folder, target, source in ((served / "LoRAC", half, ref), (served / "base", ref, ref),
                                   (finetune, ref, none)):
        _write_label(folder / "sah_024.nii.gz", target)
        _write_label(folder / "tbi_030.nii.gz", source)
    for method, summary in (("LoRAC", {"trainable_parameters": 12345, "total_parameters": 123450,
                                       "adapter_bytes": 49380}),
                            ("Finetune", {"trainable_parameters": 100_000, "total_parameters": 100_000,
                                          "adapter_bytes": 400_000})):
        fold = rs.model_folder(pipeline.TARGET_NAME, rs.finetune_trainer(method), pipeline.TARGET_PLANS) / "fold_0"
        fold.mkdir(parents=True)
        (fold / "peft_summary.json").write_text(json.dumps({"trainer_name": rs.finetune_trainer(method),
                                                            "method": method, **summary}))
    keys = ["generate_data", "plan_source", f"pretrain__{rs.pretrain_trainer}__{rs.source_plans}",
            f"plan_target__{rs.pretrain_trainer}__{rs.source_plans}",
            f"finetune__{rs.finetune_trainer('LoRAC')}", f"finetune__{rs.finetune_trainer('Finetune')}",
            f"serve__{rs.pretrain_trainer}__{rs.source_plans}__{rs.finetune_trainer('LoRAC')}",
            f"predict__{rs.finetune_trainer('Finetune')}__target_and_source"]
    rs.state.mkdir(parents=True)
    for k in keys:
        (rs.state / f"{k}.json").write_text(json.dumps({"seconds": 75.0, "stock_parameters": 100_000}))

    lines = []
    results = pipeline.run_demo(settings, out=lines.append)
    assert sum("skipped" in line for line in lines) == len(keys)
    assert sum("/8 " in line for line in lines) == len(keys)  # the step count is right
    assert [r.method for r in results] == ["LoRAC", "Finetune", "NoFinetune", pipeline.BASE_ROW]
    lorac, ft, nofinetune, base = results
    assert lorac.dice == pytest.approx([2 / 3]) and lorac.source_dice == pytest.approx([1.0])
    assert ft.dice == pytest.approx([1.0]) and ft.source_dice == pytest.approx([0.0])
    assert nofinetune.dice == pytest.approx([1.0]) and nofinetune.source_dice == base.source_dice == pytest.approx([1.0])
    table = "\n".join(lines)
    assert "12,345 (12.3%)" in table and "48.2 KiB" in table and "1:15 min" in table
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "| base's task Dice |" in md.splitlines()[0]
    assert "| LoRAC | 0.667 | 1.000 | 12,345 (12.3%) | 48.2 KiB | 1:15 min |" in md
    assert "| Finetune | 1.000 | 0.000 | 100,000 (100.0%) | 390.6 KiB | 1:15 min |" in md
    assert "| NoFinetune | 1.000 | 1.000 | 0 (0.0%) | 0 B | 0 s |" in md
    assert "| base (kept aside) | - | 1.000 | - | - | - |" in md
    csv_text = (tmp_path / "results.csv").read_text(encoding="utf-8")
    assert "NoFinetune,nnUNetTrainerNoFinetune,1.0000,1.0000,1.0000,1.0000,0,100000,0,0.0" in csv_text
    assert "LoRAC," + rs.finetune_trainer("LoRAC") + ",0.6667,0.6667,1.0000,1.0000," in csv_text


def test_without_finetune_the_stock_network_is_the_reference(tmp_path):
    """NoFinetune's 'trainable parameters' share is of the stock network, counted from the base."""
    rows = pipeline.table_rows([
        MethodResult("CPLoRA", "t", [0.5], 1.0, {"trainable_parameters": 250}, [0.25]),
        MethodResult("NoFinetune", "n", [0.5], 0.0, {"trainable_parameters": 0, "total_parameters": 1000,
                                                      "adapter_bytes": 0}, [0.5])])
    assert rows[0][3] == "250 (25.0%)" and rows[1][3] == "0 (0.0%)"


def test_the_shared_class_must_be_blood_one(tmp_path):
    _write_dataset_json(tmp_path / "s", "haemorrhage")
    _write_dataset_json(tmp_path / "t", "subarachnoid haemorrhage")
    assert pipeline.shared_label(tmp_path / "s", tmp_path / "t") == 1
    (tmp_path / "t" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "sah": 1, "ivh": 2}}))
    with pytest.raises(ValueError, match="one foreground class"):
        pipeline.shared_label(tmp_path / "s", tmp_path / "t")


def test_table_formatting():
    results = [MethodResult("CPLoRA", "t1", [0.5, 0.7], 30.0, {"trainable_parameters": 1000,
                                                              "total_parameters": 1_000_000,
                                                              "adapter_bytes": 5 * 1024 * 1024}),
               MethodResult("Finetune", "t2", [float("nan"), 0.25], None, {"trainable_parameters": 500_000},
                            [0.125, 0.375])]
    lines = format_table(results).splitlines()
    assert "(% of Finetune's)" in lines[0]
    assert lines[0].split()[:5] == ["method", "Dice", "base's", "task", "Dice"]
    assert set(lines[1]) <= {"-", " "}
    assert "0.600 ± 0.141" in lines[2] and "1,000 (0.2%)" in lines[2] and "5.0 MiB" in lines[2] and "30 s" in lines[2]
    assert "0.250" in lines[3] and "0.250 ± 0.177" in lines[3] and "500,000 (100.0%)" in lines[3]
    assert lines[2].count("n/a") == 1 and lines[3].count("n/a") == 2  # CPLoRA's base's task Dice was not measured
    assert len({len(line) for line in lines}) == 1  # aligned
    assert format_bytes(512) == "512 B" and format_bytes(1536) == "1.5 KiB"


def test_tables_are_written(tmp_path):
    write_tables([MethodResult("LoRAC", "t", [0.5], 10.0, None)], tmp_path)
    assert (tmp_path / "results.md").read_text(encoding="utf-8").splitlines()[2] == "| LoRAC | 0.500 | n/a | n/a | n/a | 10 s |"


def test_split_validates_on_the_last_cases_and_is_kept(tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    (raw / "labelsTr").mkdir(parents=True)
    pre.mkdir()
    for i in (3, 1, 0, 2):
        (raw / "labelsTr" / f"sah_{i:03d}.nii.gz").touch()
    path = pipeline.write_split(raw, pre, 2)
    assert json.loads(path.read_text(encoding="utf-8")) == [{"train": ["sah_000", "sah_001"], "val": ["sah_002", "sah_003"]}]
    path.write_text("[]")
    pipeline.write_split(raw, pre, 1)
    assert path.read_text(encoding="utf-8") == "[]"
    with pytest.raises(ValueError, match="holds 4 cases"):
        pipeline.write_split(raw, tmp_path, 4)
