"""The LPBA40 transfer script's own logic: subject split and learning-curve folds (no training)."""
import argparse
import json
import re
from pathlib import Path

import pytest

from script_helpers import fake_lpba40 as _fake_lpba40, load_script


@pytest.fixture(scope="module")
def script():
    return load_script("lpba40_transfer")


def test_subject_split_is_seeded_and_disjoint(script, tmp_path):
    root = _fake_lpba40(tmp_path / "lpba40", 30)
    args = argparse.Namespace(lpba40=root, train_subjects=None, test_subjects=None, seed=0)
    train, test = script.split_subjects(args)
    assert len(train) == script.N_TRAIN_SUBJECTS and len(test) == 20 and not set(train) & set(test)
    assert (train, test) == script.split_subjects(args)
    assert script.split_subjects(argparse.Namespace(**{**vars(args), "seed": 1}))[0] != train
    chosen = argparse.Namespace(**{**vars(args), "train_subjects": ["S05", "S03"], "test_subjects": ["S07"]})
    assert script.split_subjects(chosen) == (["S03", "S05"], ["S07"])
    with pytest.raises(SystemExit, match="S99"):
        script.split_subjects(argparse.Namespace(**{**vars(args), "train_subjects": ["S99"]}))


def test_curve_folds_are_nested_subsets_of_fold_0_with_its_validation(script, tmp_path):
    subjects = [f"S{i:02d}" for i in range(2, 12)]
    cases = [f"{s}{side}" for s in subjects for side in "LR"]
    splits = [{"train": [c for c in cases if c[:3] not in subjects[2 * k:2 * k + 2]],
               "val": [c for c in cases if c[:3] in subjects[2 * k:2 * k + 2]]} for k in range(5)]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(splits))
    script.add_curve_folds(path, seed=0)
    out = json.loads(path.read_text(encoding="utf-8"))
    assert out[:5] == splits and len(out) == 5 + len(script.CURVE_SIZES)
    previous: set[str] = set()
    for size, fold in zip(script.CURVE_SIZES, out[5:]):
        train = set(fold["train"])
        assert fold["val"] == splits[0]["val"] and train <= set(splits[0]["train"])
        assert len({c[:-1] for c in train}) == size and all(c[:-1] + s in train for c in train for s in "LR")
        assert previous <= train
        previous = train
    script.add_curve_folds(path, seed=0)  # a resumed run leaves the folds as they are
    assert json.loads(path.read_text(encoding="utf-8")) == out


def test_final_phase_links_the_sweeps_run_of_the_default_configuration(script, tmp_path):
    results = tmp_path / "results" / f"Dataset{script.TARGET_ID}_LPBA40Hippocampus"
    suffix = "__nnUNetPlans_pretrained__3d_fullres"
    for trainer in ("nnUNetTrainerCPLoRA_15ep_20it_lr0p03", "nnUNetTrainerCPLoRA_15ep_20it_lr0p01"):
        (results / f"{trainer}{suffix}" / "fold_0").mkdir(parents=True)
        (results / f"{trainer}{suffix}" / "fold_0" / "checkpoint_final.pth").write_bytes(trainer.encode())
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            (results / f"{trainer}{suffix}" / name).write_text("{}")
    (results / f"nnUNetTrainerCPLoRA_15ep_20it_lr0p03{suffix}" / "fold_1").mkdir()  # unfinished: not linked
    trainers = ["nnUNetTrainerCPLoRA_15ep_20it", "nnUNetTrainerHyPS_15ep_20it"]
    script.reuse_sweep_runs(tmp_path, trainers, [0, 1])
    plain = results / f"nnUNetTrainerCPLoRA_15ep_20it{suffix}"
    # the default rate is 3e-2, so the lr0p03 run is the plain name's, never the lr0p01 one
    assert (plain / "fold_0" / "checkpoint_final.pth").read_bytes() == b"nnUNetTrainerCPLoRA_15ep_20it_lr0p03"
    assert (plain / "plans.json").is_file() and not (plain / "fold_1").exists()
    assert not (results / f"nnUNetTrainerHyPS_15ep_20it{suffix}").exists()
    script.reuse_sweep_runs(tmp_path, trainers, [0, 1])  # a resumed run keeps the link
    assert (plain / "fold_0").is_symlink()


def _final_report(root: Path, scores: dict[str, float], params: dict[str, int]) -> Path:
    rows = ["split,method,trainer,fold,case,label,dice"]
    for method, dice in scores.items():
        rows += [f"val,{method},nnUNetTrainer{method},0,S04{s},hippocampus,{dice}" for s in "LR"]
        # test cases and other folds must not decide: they rank the adapters the other way round
        rows += [f"test,{method},nnUNetTrainer{method},0,S02L,hippocampus,{1 - dice}",
                 f"val,{method},nnUNetTrainer{method},1,S06L,hippocampus,{1 - dice}"]
    (root / "final" / "report").mkdir(parents=True)
    (root / "final" / "report" / "cases.csv").write_text("\n".join(rows) + "\n")
    (root / "final" / "report" / "costs.csv").write_text(
        "method,trainable_parameters\n" + "".join(f"{m},{n}\n" for m, n in params.items()))
    return root


def test_best_auto_is_the_best_adapter_and_the_best_under_5_percent_on_fold_0_validation(script, tmp_path):
    params = {"LoRAC_15ep_20it": 40_000, "CPLoRA_15ep_20it": 4_000, "TCURLoRA_15ep_20it": 100,
              "HyPS_15ep_20it": 50_000, "Finetune_15ep_20it": 100_000, "Finetune_scratch_15ep_20it": 100_000}
    scores = {"LoRAC_15ep_20it": 0.70, "CPLoRA_15ep_20it": 0.75, "TCURLoRA_15ep_20it": 0.72,
              "HyPS_15ep_20it": 0.80, "Finetune_15ep_20it": 0.90, "Finetune_scratch_15ep_20it": 0.95}
    work = _final_report(tmp_path / "a", scores, params)
    assert script.best_adapters(work, ["auto"]) == ["HyPS", "CPLoRA"]
    # when the best adapter is itself small, the runner-up is the second choice
    work = _final_report(tmp_path / "b", {**scores, "CPLoRA_15ep_20it": 0.85}, params)
    assert script.best_adapters(work, ["auto"]) == ["CPLoRA", "HyPS"]
    assert script.best_adapters(work, ["LoRAC"]) == ["LoRAC"]
    with pytest.raises(SystemExit, match="phase final"):
        script.best_adapters(tmp_path / "elsewhere", ["auto"])


def test_help_shows_the_defaults(script, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # a long default path is not wrapped
    text = script.parser().format_help()
    # each option's entry (its help may start on the next line), whitespace collapsed
    entries = {" ".join(e.split()).split()[0]: " ".join(e.split()) for e in re.split(r"\n(?=  -)", text)}
    assert "(default: 16)" in entries["--base-features"] and "(default: 0)" in entries["--seed"]
    assert f"(default: {script.MSD})" in entries["--msd"] and f"(default: {script.LPBA40})" in entries["--lpba40"]
    assert "(default: None)" not in text  # an unset option says in words what it means
    assert "    sweep   learning rate and rank" in text  # the docstring's layout is kept


def test_msd_is_an_option_used_for_the_source(script, tmp_path):
    assert script.parser().parse_args(["--work", "w", "--phase", "source"]).msd == script.MSD
    msd = tmp_path / "Task04_Hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (msd / sub).mkdir(parents=True)
        (msd / sub / "hippocampus_001.nii.gz").write_bytes(sub.encode())
    args = script.parser().parse_args(["--work", str(tmp_path / "w"), "--phase", "source", "--msd", str(msd)])
    assert args.msd == msd
    links = script.link_msd(tmp_path / "links" / "msd", args.msd)
    assert (links / "images" / "hippocampus_001.nii.gz").read_bytes() == b"imagesTr"
    assert (links / "masks" / "hippocampus_001.nii.gz").read_bytes() == b"labelsTr"
    with pytest.raises(SystemExit, match="no imagesTr/hippocampus_"):
        script.link_msd(tmp_path / "links" / "other", tmp_path)
    # a folder given explicitly must exist: an error, not the skip meant for absent shared data
    with pytest.raises(SystemExit, match="--msd .*missing is not a folder"):
        script.main(["--work", str(tmp_path / "w"), "--phase", "source", "--msd", str(tmp_path / "missing")])
    assert not (tmp_path / "w").exists()


def _source_dataset(script, work, val):
    name = f"Dataset{script.SOURCE_ID}_MSDHippocampus"
    raw = work / "raw" / name
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    for case in ("hippocampus_001", "hippocampus_002", "hippocampus_003"):
        (raw / "imagesTr" / f"{case}_0000.nii.gz").write_text(case)
        (raw / "labelsTr" / f"{case}.nii.gz").write_text(case)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    (work / "preprocessed" / name).mkdir(parents=True)
    (work / "preprocessed" / name / "splits_final.json").write_text(
        json.dumps([{"train": ["hippocampus_001"], "val": val}, {"train": val, "val": ["hippocampus_001"]}]))


def test_the_old_tasks_test_set_is_the_sources_fold_0_validation_and_reaches_the_benchmark(script, tmp_path, monkeypatch):
    work = tmp_path / "work"
    _source_dataset(script, work, ["hippocampus_002", "hippocampus_003"])
    holdout = script.source_holdout(work)
    assert sorted(p.name for p in (holdout / "images").iterdir()) == ["hippocampus_002_0000.nii.gz",
                                                                      "hippocampus_003_0000.nii.gz"]
    assert (holdout / "labels" / "hippocampus_003.nii.gz").read_text() == "hippocampus_003"
    assert not (holdout.parent / "source_holdout.partial").exists()
    calls = []
    monkeypatch.setattr(script.subprocess, "call", lambda command, env: calls.append(command) or 0)
    args = argparse.Namespace(device="cpu")
    script.benchmark(args, {}, work, tmp_path / "base.pth", ["nnUNetTrainerFinetune"], [0], "final", test_folds=[0],
                     source_test=holdout)
    command = calls[0]
    assert command[command.index("--source-test-images") + 1] == str(holdout / "images")
    assert command[command.index("--source-test-labels") + 1] == str(holdout / "labels")
    script.benchmark(args, {}, work, tmp_path / "base.pth", ["nnUNetTrainerFinetune"], [0, 1], "sweep")
    assert "--source-test-images" not in calls[1]


def test_a_missing_source_case_is_named_and_nothing_half_written(script, tmp_path):
    work = tmp_path / "work"
    _source_dataset(script, work, ["hippocampus_002", "hippocampus_009"])
    with pytest.raises(SystemExit, match="hippocampus_009"):
        script.source_holdout(work)
    assert not (work / "links" / "source_holdout").exists()
    with pytest.raises(SystemExit, match="--phase source"):
        script.source_holdout(tmp_path / "empty")


def test_final_methods_narrow_the_runs_and_the_base_is_always_scored(script, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(script, "benchmark", lambda args, env, work, checkpoint, trainers, folds, out, **kw:
                        calls.append((trainers, folds, out, kw)))
    monkeypatch.setattr(script, "source_holdout", lambda work: tmp_path / "holdout")
    args = script.parser().parse_args(["--work", str(tmp_path), "--phase", "final", "--methods", "Finetune", "CPLoRA"])
    script.final_phase(args, {}, tmp_path, tmp_path / "base.pth")
    assert calls == [(["nnUNetTrainerFinetune_15ep_20it", "nnUNetTrainerCPLoRA_15ep_20it", "nnUNetTrainerNoFinetune"],
                      [0], "final", {"test_folds": [0], "source_test": tmp_path / "holdout"})]

    every = script.parser().parse_args(["--work", str(tmp_path), "--phase", "final"]).methods
    assert {"Finetune", "Finetune_scratch", "SegHead", "ConvLoRA", "CPLoRA", "HyPS"} <= set(every)
    assert "NoFinetune" not in every  # scored anyway, never listed twice


def test_an_unknown_final_method_is_refused_with_the_choices(script, capsys):
    with pytest.raises(SystemExit):
        script.parser().parse_args(["--work", "w", "--phase", "final", "--methods", "CPLora"])
    err = capsys.readouterr().err
    assert "CPLora" in err and "CPLoRA" in err
