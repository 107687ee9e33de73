"""forward_mode="auto": each layer shape timed once in its method's modes, every layer of that shape set to
the fastest, nothing else changed (issue 15: "measure per layer shape and choose, once")."""
from __future__ import annotations

import pytest
import torch

from adapter_helpers import moved_adapter_network
from networks import NET_SPECS, outputs, random_input
from nnunet_peft import METHODS, PeftConfig, adapter_layers
from nnunet_peft import mode_tuning
from nnunet_peft.mode_tuning import choose_forward_modes, format_mode_choices, time_forward_modes

SPEC = NET_SPECS[3]  # 3-D residual encoder: strided, transposed, 1x1 and repeated same-shape convolutions


def adapted(method: str, mode: str | None, seed: int = 0) -> torch.nn.Module:
    return moved_adapter_network(SPEC, method, mode, seed=seed)


def loss_and_grads(net, x):
    loss = sum(o.square().mean() for o in outputs(net, x))
    trainable = [p for p in net.parameters() if p.requires_grad]
    return [loss.detach(), *torch.autograd.grad(loss, trainable)]


def test_config_accepts_auto_only_where_there_is_a_choice():
    assert PeftConfig("cp_lora", forward_mode="auto").forward_mode == "auto"
    assert PeftConfig("lora_pt", forward_mode="auto").forward_mode == "reconstruct"  # one mode: nothing to tune
    with pytest.raises(ValueError, match="auto"):
        PeftConfig("lora_c", forward_mode="fastest")


def test_auto_is_the_default_where_there_is_a_choice():
    assert PeftConfig("cp_dora").forward_mode == "auto"
    assert PeftConfig("conv_lora").forward_mode == "reconstruct"


def test_until_tuned_an_auto_layer_runs_its_methods_untuned_mode():
    for layer in adapter_layers(adapted("dora_c", "auto")):
        assert layer.forward_mode == METHODS["dora_c"].untuned_mode
        assert layer.tunable_modes == METHODS["dora_c"].forward_modes
    assert all(not layer.tunable_modes for layer in adapter_layers(adapted("dora_c", "projected")))


@pytest.mark.parametrize("method", ["cp_dora", "hyps"])
def test_tuning_sets_one_mode_per_shape_and_changes_nothing_else(method):
    net, reference = adapted(method, "auto"), adapted(method, "reconstruct")
    x = random_input(SPEC)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    choices = choose_forward_modes(net, x, warmup=0, repeats=1)

    layers = dict(net.named_modules())
    named = {name for c in choices for name in c.layers}
    assert named == {name for name, m in layers.items() if m in adapter_layers(net)}  # every layer, once
    assert len(choices) < len(named)  # layers of one shape share one measurement
    for c in choices:
        assert set(c.times_ms) == set(METHODS[method].forward_modes)
        assert c.chosen == min(c.times_ms, key=c.times_ms.get)
        assert {layers[name].forward_mode for name in c.layers} == {c.chosen}
    assert net.training
    for k, v in net.state_dict().items():  # no weight, buffer or statistic moved
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())
    for a, b in zip(loss_and_grads(net, x), loss_and_grads(reference, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert "chosen" in format_mode_choices(choices)


def test_the_choice_follows_the_times_and_the_image_layer_is_timed_without_an_input_gradient(monkeypatch):
    net = adapted("lora_c", "auto")
    calls = []

    def fake_times(layer, shape, modes, *, input_gradient=True, **kwargs):
        calls.append((layer, input_gradient))
        # wide layers: projected fastest; narrow ones: chain (a rule the real timings need not follow)
        wide = layer.out_channels >= 8
        return {"chain": 2.0 if wide else 0.5, "reconstruct": 1.5, "projected": 1.0 if wide else 3.0}

    monkeypatch.setattr(mode_tuning, "time_forward_modes", fake_times)
    choose_forward_modes(net, random_input(SPEC))
    for layer in adapter_layers(net):
        assert layer.forward_mode == ("projected" if layer.out_channels >= 8 else "chain")
    first = adapter_layers(net)[0]  # the stem's convolution sees the image
    assert [grad for layer, grad in calls if layer is first] == [False]
    assert sum(not grad for _, grad in calls) == 1


def test_no_auto_layer_means_no_timing(monkeypatch):
    monkeypatch.setattr(mode_tuning, "time_forward_modes", lambda *a, **k: pytest.fail("timed a fixed-mode layer"))
    assert choose_forward_modes(adapted("lora_c", "chain"), random_input(SPEC)) == []


def test_timing_leaves_the_layer_as_it_found_it():
    layer = adapter_layers(adapted("cp_lora", "auto"))[3].eval()
    before = layer.forward_mode
    times = time_forward_modes(layer, (1, layer.in_channels, 4, 8, 8), ("chain", "projected"), warmup=0, repeats=2)
    assert set(times) == {"chain", "projected"} and all(t > 0 for t in times.values())
    assert layer.forward_mode == before and not layer.training
    assert all(p.grad is None for p in layer.parameters())
    with pytest.raises(ValueError, match="repeats"):
        time_forward_modes(layer, (1, layer.in_channels, 4, 8, 8), ("chain",), repeats=0)
