"""scripts/benchmark_serving.py on a tiny network: it runs end to end, both sides predict the same, and its
report holds every row, the shared stages and the storage it says. No timing is checked."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_serving.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_serving", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_run_reports_every_row_with_identical_predictions(tmp_path, capsys, monkeypatch):
    bench = load_script()
    monkeypatch.setattr(sys, "argv", ["benchmark_serving.py"])
    assert bench.main(["--ks", "2", "--kinds", "dec", "all", "--cases", "1", "--image", "12", "24", "24",
                       "--patch", "8", "16", "16", "--stages", "3", "--features", "4", "--max-features", "16",
                       "--work", str(tmp_path / "work"), "--out", str(tmp_path / "report.md")]) == 0
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1:-1] for line in report.splitlines() if re.match(r"\| (dec|all) \| \d \| \d", line)]
    timing = [r for r in rows if len(r) == 14]
    assert [(r[0].strip(), r[1].strip()) for r in timing] == [("dec", "2"), ("all", "2")]
    assert all(r[-1].strip() == "yes" for r in timing)  # every task predicted the same on both sides
    shared = {(r[0].strip(), r[1].strip()): r[-2].strip() for r in timing}
    assert shared == {("dec", "2"): "3 of 3", ("all", "2"): "0 of 3"}
    unshared = {(r[0].strip(), r[1].strip()): r[5].strip() for r in timing}
    assert unshared[("dec", "2")] != "-" and unshared[("all", "2")] == "-"
    storage = [r for r in rows if len(r) == 5]
    assert len(storage) == 2
    for kind, k, ours, theirs, ratio in storage:  # the base once plus K adapters, against K bases
        base, adapter = map(float, re.search(r"base ([\d.]+) \+ \d x ([\d.]+)", ours).groups())
        assert float(theirs) == pytest.approx(int(k) * base, abs=0.011) and 0 < adapter < base
    assert "interpreter start and imports excluded" in report and "Command:" in report
