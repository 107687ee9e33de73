"""The speed harness (nnunet_peft.benchmarks.adapter_step, run as scripts/benchmark_adapters.py) on a tiny
network: it runs, and its report says how it measured.

No timing is checked (a test cannot know the machine); the report's structure, its method text and
its bookkeeping (settings, ratios' denominators, trainable counts, per-layer shapes) are.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from nnunet_peft.benchmarks import adapter_step
from nnunet_peft.benchmarks.per_layer import FROZEN, FULL, candidates
from nnunet_peft.benchmarks.step_memory import subprocess_peak_bytes
from nnunet_peft.mode_tuning import TimedLayer, time_layers


@pytest.fixture(scope="module")
def bench():
    return adapter_step


TINY = ["--stages", "3", "--patch", "8", "--batch", "1", "--warmup", "0", "--repeats", "2", "--threads", "1"]


def test_setting_names_round_trip(bench):
    for setting in [bench.Setting("full"), bench.Setting("frozen"), bench.Setting("full", placement=("decoder",)),
                    bench.Setting("cp_lora", "chain", 32, ("decoder",)),
                    bench.Setting("lora_c", "reconstruct", 8, ("encoder", "bottleneck", "decoder"))]:
        assert bench.Setting.parse(setting.name) == setting
    assert bench.Setting("lora_c", "reconstruct", 8).name == "lora_c/reconstruct/r8@all"


def test_arguments_are_checked(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--placements", "middle"])
    assert "placement" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--stages", "2", "--patch", "8"])
    args = bench.parse_args(["--modes", "chain"])
    assert "conv_lora" not in args.methods and "cp_lora" in args.methods  # convLoRA has no chain
    assert bench.modes_of("cp_lora", ["default"]) == ["auto"]
    assert bench.modes_of("conv_lora", ["default"]) == ["reconstruct"]
    assert bench.modes_of("lora_pt", ["all"]) == ["reconstruct"]  # one mode: no "auto" to time
    assert bench.modes_of("lora_c", ["auto"]) == ["auto"]


def test_blocks_pair_every_rank_and_placement_with_its_own_baselines(bench):
    args = bench.parse_args(["--ranks", "8", "32", "--placements", "all", "decoder", "--methods", "lora_c"])
    blocks = bench.blocks(args)
    assert len(blocks) == 4
    for block in blocks:
        assert block[0] == bench.Setting("full") and block[1] == bench.Setting("frozen")
        methods = [s for s in block if s.method]
        assert {s.mode for s in methods} == {*bench.METHODS["lora_c"].forward_modes, "auto"}
        assert len({(s.rank, s.placement) for s in methods}) == 1
    decoder = [b for b in blocks if b[-1].placement == ("decoder",)]
    assert all(bench.Setting("full", placement=("decoder",)) in b for b in decoder)


def test_report_states_its_method_and_lists_every_setting(bench, tmp_path, capsys):
    out = tmp_path / "report.md"
    assert bench.main([*TINY, "--methods", "cp_lora", "--ranks", "2", "--placements", "all", "decoder",
                       "--no-memory", "--per-layer", "--per-layer-methods", "lora_c", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in ["0 warm-up + 2 timed per setting", "SGD (lr 1e-2, momentum 0.99", "trainable tensors only",
                   "torch threads", "float32, no autocast", "interleaved", "rotated every repeat"]:
        assert needle in text, needle
    rows = [line for line in text.splitlines() if line.startswith("| cp_lora |")]
    modes = len(bench.METHODS["cp_lora"].forward_modes) + 1  # and "auto", tuned when the network is built
    assert len(rows) == 2 * modes and sum("| auto (default) |" in r for r in rows) == 2
    assert sum("| decoder |" in r for r in rows) == modes
    full_rows = [line for line in text.splitlines() if line.startswith("| full fine-tuning |")]
    assert len(full_rows) == 2 and all("| 1.00 | 1.00 |" in r for r in full_rows)  # each block's own denominator
    # per layer: the 3-stage network has 8 distinct conv shapes and 2 upsamplers, one row per method and rank
    layer_rows = [line for line in text.splitlines() if "| lora_c | 2 |" in line]
    assert len(layer_rows) == 10 and sum("convT" in r for r in layer_rows) == 2
    assert out.read_text(encoding="utf-8").strip() == text.strip()


@pytest.mark.parametrize("name", ["lora_c/reconstruct/r2@decoder", "cp_dora/auto/r2@all"])
def test_memory_probe_builds_the_named_setting(bench, capsys, name):
    assert bench.main([*TINY, "--memory-probe", name]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["peak_bytes"] >= 0


TINY_UNETR = ["--network", "unetr", "--patch", "16", "--batch", "1", "--warmup", "0", "--repeats", "1",
              "--threads", "1", "--backbone-kwargs",
              json.dumps({"feature_size": 4, "hidden_size": 24, "mlp_dim": 48, "num_heads": 2})]


def test_unetr_report_has_every_method_against_its_full_fine_tuning(bench, capsys):
    assert bench.main([*TINY_UNETR, "--methods", "lora_pt", "hyps", "--modes", "default", "--ranks", "2",
                       "--no-memory", "--per-layer", "--per-layer-methods", "lora_c"]) == 0
    text = capsys.readouterr().out
    assert "Network: UNETR (MONAI) (--backbone-kwargs): dropout_rate=0.0, feature_size=4, hidden_size=24" in text
    assert "no deep supervision (one output), batch 1 x 16^3" in text
    full, = [line for line in text.splitlines() if line.startswith("| full fine-tuning |")]
    assert "| 1.00 | 1.00 |" in full
    net = bench.build_network(bench.parse_args(TINY_UNETR))
    assert f"| {sum(p.numel() for p in net.parameters()):,} (" in full  # full fine-tuning trains everything
    for method in ("lora_pt", "hyps"):
        row, = [line for line in text.splitlines() if line.startswith(f"| {method} |")]
        assert "(default)" in row
    assert "(serial kept)" in [line for line in text.splitlines() if line.startswith("| hyps |")][0]
    # per layer: the ViT's Linear layers (qkv 24->72, out_proj 24->24, MLP 24->48->24) among the convolutions
    layer_rows = [line for line in text.splitlines() if "| lora_c | 2 |" in line]
    for geometry in ("linear 24->72", "linear 24->24", "linear 24->48", "linear 48->24"):
        assert sum(geometry in r for r in layer_rows) == 1, geometry
    assert any("convT" in r for r in layer_rows)


def test_backbone_arguments_are_checked(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--network", "unetr", "--patch", "24"])
    assert "multiple of 16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--backbone-size", "small"])  # the U-Net has no backbone size
    assert "--network unetr, swinunetr or primus" in capsys.readouterr().err
    args = bench.parse_args(["--network", "primus", "--backbone-size", "small", "--backbone-kwargs", '{"eva_depth": 2}'])
    assert bench.backbone_kwargs(args) == {"embed_dim": 192, "eva_depth": 2, "eva_numheads": 4}


def test_unetr_memory_probe_builds_the_named_setting(bench, capsys):
    assert bench.main([*TINY_UNETR, "--memory-probe", "lora_pt/reconstruct/r2@decoder"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["peak_bytes"] >= 0


def test_cpu_memory_probe_runs_the_installed_module_in_a_fresh_process(bench):
    assert importlib.util.find_spec(bench.MODULE).origin == bench.__file__
    args = bench.parse_args(TINY)
    assert subprocess_peak_bytes(bench.MODULE, bench.probe_argv(bench.Setting("lora_c", "chain", 2), args)) > 0


def test_per_layer_candidates_time_the_image_layer_without_an_input_gradient_but_the_frozen_floor():
    layer = torch.nn.Conv3d(2, 4, 3, padding=1)
    for on_image in (False, True):
        entries = candidates(layer, ["cp_lora"], [2], on_image)
        assert entries[FULL].layer.weight.requires_grad and not entries[FROZEN].layer.weight.requires_grad
        assert entries[FROZEN].input_gradient and entries[FULL].input_gradient == (not on_image)
        modes = {key[2]: e for key, e in entries.items() if key[0] == "cp_lora"}
        assert set(modes) == set(adapter_step.METHODS["cp_lora"].forward_modes)
        assert len({id(e.layer) for e in modes.values()}) == 1  # one adapter, timed in each of its modes
        assert all(e.input_gradient == (not on_image) for e in modes.values())
    adapter = modes["chain"].layer.eval()
    before = adapter.forward_mode
    times = time_layers(entries, (1, 2, 4, 4, 4), warmup=0, repeats=1)
    assert set(times) == set(entries) and all(t > 0 for t in times.values())
    assert adapter.forward_mode == before and not adapter.training and entries[FULL].layer.training
    assert all(p.grad is None for e in entries.values() for p in e.layer.parameters())
    with pytest.raises(ValueError, match="nothing trainable"):
        time_layers({FROZEN: TimedLayer(entries[FROZEN].layer, input_gradient=False)}, (1, 2, 4, 4, 4))
