"""The strong-base study's own logic: disjoint subject split, nested folds per draw, the summary (no training)."""
import argparse
import json
from pathlib import Path

import pytest

from script_helpers import fake_lpba40 as _fake_lpba40, load_script


@pytest.fixture(scope="module")
def script():
    return load_script("lpba40_strong_base")


def _args(script, root: Path, *argv: str) -> argparse.Namespace:
    return script.parser().parse_args(["--work", "w", "--phase", "grid", "--lpba40", str(root), *argv])


def test_subjects_are_disjoint_seeded_and_overridable(script, tmp_path):
    root = _fake_lpba40(tmp_path / "lpba40", 30)
    base, pool, test = script.split_subjects(_args(script, root))
    assert (len(base), len(pool), len(test)) == (18, 6, 6)
    assert len(set(base) | set(pool) | set(test)) == 30
    assert (base, pool, test) == script.split_subjects(_args(script, root))
    assert script.split_subjects(_args(script, root, "--seed", "1"))[0] != base
    chosen = _args(script, root, "--test-subjects", "S05", "S03", "--base-count", "10")
    b, p, t = script.split_subjects(chosen)
    assert t == ["S03", "S05"] and len(b) == 10 and len(p) == 18 and not {"S03", "S05"} & set(b + p)
    with pytest.raises(SystemExit, match="disjoint"):
        script.split_subjects(_args(script, root, "--base-subjects", "S02", "--test-subjects", "S02"))
    with pytest.raises(SystemExit, match="more than 5 subjects"):
        script.split_subjects(_args(script, root, "--base-count", "20", "--test-count", "5"))


def test_folds_nest_within_a_draw_and_keep_sides_together(script):
    pool = [f"S{i:02d}" for i in range(10, 16)]
    folds = script.target_splits(pool, draws=3, seed=0)
    assert len(folds) == 9
    for draw in range(3):
        subsets = [folds[script.fold_of(draw, size)] for size in script.SIZES]
        for size, fold in zip(script.SIZES, subsets):
            subjects = {c[:-1] for c in fold["train"]}
            assert len(subjects) == size and {c[:-1] for c in fold["val"]} == set(pool) - subjects
            assert sorted(fold["train"]) == sorted(f"{s}{side}" for s in subjects for side in "LR")
        train_sets = [set(f["train"]) for f in subsets]
        assert train_sets[0] < train_sets[1] < train_sets[2]  # 1 within 2 within 5 subjects
    singles = [folds[script.fold_of(d, 1)]["train"][0][:-1] for d in range(3)]
    assert len(set(singles)) == 3  # each draw trains its one-subject model on another subject
    assert script.fold_of(0, 2) == script.SELECT_FOLD


def test_summary_measures_learning_on_the_new_class_and_forgetting_against_the_base(script, tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    rows = []
    for method, new, old in (("Finetune_15ep_20it", 0.8, 0.70), ("CPLoRA_15ep_20it", 0.7, 0.75)):
        for fold in range(6):  # two draws
            for case, jitter in (("S20L", 0.0), ("S20R", 0.02)):
                rows.append({"method": method, "trainer": "x", "fold": str(fold), "split": "test", "case": case,
                             "label": "hippocampus", "dice": new + jitter + 0.01 * fold})
                for structure in script.OLD_STRUCTURES:
                    rows.append({"method": method, "trainer": "x", "fold": str(fold), "split": "test",
                                 "case": case, "label": structure, "dice": old})
    report = tmp_path / "grid" / "report"
    report.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(report / "cases.csv", index=False)
    monkeypatch.setattr(script, "base_old_task",
                        lambda work: pd.DataFrame([{"case": c, "label": s, "dice": 0.8}
                                                   for c in ("S20L", "S20R") for s in script.OLD_STRUCTURES]))
    script.summarise(argparse.Namespace(), tmp_path)
    table = pd.read_csv(tmp_path / "summary.csv").set_index(["method", "size"])
    assert table.loc[("Finetune", 1), "runs"] == 2
    # size 1 is folds 0 and 3: hippocampus 0.8 + 0.01 + 0.01 * fold on average over both crops
    assert table.loc[("Finetune", 1), "new"] == pytest.approx(0.81 + 0.015)
    assert table.loc[("CPLoRA", 5), "forgetting"] == pytest.approx(0.75 - 0.8)
    assert table.loc[("Finetune", 2), "forgetting"] == pytest.approx(0.70 - 0.8)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| CPLoRA | 1 | 2 |" in text and "-0.100" in text and (tmp_path / "gain_forgetting.png").is_file()


def test_forgetting_counts_the_structures_the_base_segments(script, tmp_path):
    assert script.segmented_structures(tmp_path) == list(script.OLD_STRUCTURES)  # no base yet: all of them
    folder = tmp_path / "results" / script.BASE / "Trainer__Plans__3d_fullres" / "fold_0" / "validation"
    folder.mkdir(parents=True)
    dice = [0.73, 0.73, 0.47, 0.58, 0.07, 0.53, 0.0]
    (folder / "summary.json").write_text(json.dumps({"mean": {str(i): {"Dice": d} for i, d in enumerate(dice, 1)}}))
    assert script.segmented_structures(tmp_path) == [s for s, d in zip(script.OLD_STRUCTURES, dice) if d >= 0.3]


def test_grid_runs_cells_size_by_size_and_leaves_scratch_out_of_later_draws(script, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(script, "benchmark", lambda args, env, work, ckpt, trainers, folds, out, reference=None,
                        collect_only=False: calls.append((tuple(t.split("_15ep")[0][13:] for t in trainers),
                                                          tuple(folds), collect_only)))
    monkeypatch.setattr(script, "summarise", lambda args, work: None)
    (tmp_path / "best_adapter.txt").write_text("ConvLoRA\n", encoding="utf-8")
    args = _args(script, tmp_path, "--scratch-draws", "1")
    script.grid_phase(args, {}, tmp_path, tmp_path / "base.pth")
    trained = [c for c in calls if not c[2]]
    assert [c[1] for c in trained] == [(script.fold_of(d, s),) for s in script.SIZES for d in range(3)]
    assert trained[0][0] == ("Finetune", "Finetune_scratch", "ConvLoRA", "CPLoRA", "CPLoRA_ftdec")
    assert all("Finetune_scratch" not in t for t, folds, _ in trained if folds[0] // len(script.SIZES) > 0)
    collected = [c for c in calls if c[2]]
    assert len(collected) == 9 and len(collected[-1][1]) == 9 and "Finetune_scratch" in collected[-1][0]
