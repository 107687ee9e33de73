"""Several named adapters on one base (issue 25): switching, disabling, deleting, heads per adapter, and
refusing adapters of another base or other plans. Tiny networks, nothing trains: seconds on a CPU."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from adapter_helpers import perturb_
from networks import NET_SPECS, outputs, pretrained_network, random_input
from nnunet_peft import (METHODS, BaseFingerprintWarning, BaseMismatchError, PeftConfig, PlansMismatchError,
                         adapter_state_dict, base_fingerprint, delete_adapter, disable_adapters, inject_adapters,
                         load_adapter, merge_adapters, save_adapter, set_adapter)
from nnunet_peft.injection import GROUPS_ATTR, adapter_layers, get_config
from nnunet_peft.named_adapters import active_adapter, adapter_names, set_base_plans
from test_adapter_sharing import CONFIGURATION, tiny_plans

SPEC = NET_SPECS[1]  # PlainConvUNet 3-D, 2 input channels, 3 classes


def trained(method: str = "cp_lora", seed: int = 3, placement=("encoder", "bottleneck", "decoder"),
            classes: int | None = None) -> nn.Module:
    """The tiny base with adapters (and heads) moved off their initialisation, as training leaves them;
    ``classes``: heads rebuilt for another class count first (another task on the same base)."""
    net = pretrained_network(SPEC)
    if classes is not None:
        torch.manual_seed(seed)
        for i, head in enumerate(net.decoder.seg_layers):
            net.decoder.seg_layers[i] = nn.Conv3d(head.in_channels, classes, 1)
    inject_adapters(net, PeftConfig(method, rank=2, placement=placement))
    perturb_([p for p in net.parameters() if p.requires_grad], seed=seed)
    return net.eval()


def saved(net: nn.Module, folder: Path, plans: dict | None = None, configuration: str = CONFIGURATION) -> Path:
    """``save_adapter`` as export-adapter writes a fold: ``folder/fold_0`` with the plans beside it."""
    save_adapter(net, folder / "fold_0", {"configuration": configuration})
    (folder / "plans.json").write_text(json.dumps(plans or tiny_plans()), encoding="utf-8")
    return folder / "fold_0"


def run(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return outputs(net, x)


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


X = random_input(SPEC, batch=1, seed=7)


# --------------------------------------------------------------------------------- disabling
@pytest.mark.parametrize("method", list(METHODS))
def test_disable_adapters_is_bit_identical_to_the_base(method):
    base = run(pretrained_network(SPEC), X)
    net = trained(method)
    adapted = run(net, X)
    assert not same(adapted, base)
    with disable_adapters(net) as inside:
        assert inside is net and get_config(net) is None and not adapter_layers(net) and not hasattr(net, GROUPS_ATTR)
        assert same(run(net, X), base)
        assert base_fingerprint(net) == base_fingerprint(pretrained_network(SPEC))
        # the base's own heads, not the adapter's trained ones
        stock = pretrained_network(SPEC).state_dict()
        assert net.state_dict().keys() == stock.keys()
        assert all(torch.equal(v, stock[k]) for k, v in net.state_dict().items())
    assert same(run(net, X), adapted)  # the adapter is back, as it was


def test_disable_adapters_restores_the_adapter_after_an_exception():
    net = trained()
    adapted = run(net, X)
    with pytest.raises(RuntimeError, match="inside"):
        with disable_adapters(net):
            raise RuntimeError("inside")
    assert active_adapter(net) == "default" and same(run(net, X), adapted)


# --------------------------------------------------------------------------------- switching
def test_set_adapter_computes_what_the_adapter_computes_alone(tmp_path):
    sources = {"a": trained("cp_lora", seed=3), "b": trained("lora_pt", seed=4),  # tensor groups
               "c": trained("hyps", seed=5, placement=("decoder",)), "d": trained("dora_c", seed=6)}
    alone = {}
    for name, net in sources.items():
        folder = saved(net, tmp_path / name)
        only = load_adapter(pretrained_network(SPEC), folder).eval()  # new layers are built in training mode
        alone[name] = run(only, X)
        assert same(alone[name], run(net, X)), name
    net = pretrained_network(SPEC)
    for name in sources:
        load_adapter(net, tmp_path / name / "fold_0", name=name)
        assert active_adapter(net) == name  # the one loaded last is active
    assert adapter_names(net) == list(sources)
    base = run(pretrained_network(SPEC), X)
    for name in ["a", "c", "b", "a", "d", "b", "c", "d", "a"]:  # back and forth
        set_adapter(net, name)
        assert get_config(net) == get_config(sources[name])
        assert same(run(net, X), alone[name]), name
        with disable_adapters(net):
            assert same(run(net, X), base)
    # the state the network shows is the active adapter's, keyed as when it was alone
    set_adapter(net, "b")
    state = adapter_state_dict(net)
    expected = adapter_state_dict(sources["b"])
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


def test_named_injection_gives_each_adapter_its_own_tensors_and_keeps_the_base():
    net = pretrained_network(SPEC)
    base = run(net, X)
    base_heads = [h.weight.detach().clone() for h in net.decoder.seg_layers]
    inject_adapters(net, PeftConfig("lora_c", rank=2), name="first").eval()  # new layers come in training mode
    first_head = net.decoder.seg_layers[-1].weight
    perturb_([p for p in net.parameters() if p.requires_grad], seed=1)
    first = run(net, X)
    inject_adapters(net, PeftConfig("cp_lora", rank=4, placement=("decoder",)), name="second").eval()
    second_head = net.decoder.seg_layers[-1].weight
    assert second_head is not first_head and second_head.requires_grad
    # a new adapter starts from the base's heads and the base's function (a zero update)
    assert torch.equal(second_head, base_heads[-1]) and same(run(net, X), base)
    perturb_([p for p in net.parameters() if p.requires_grad], seed=2)
    second = run(net, X)
    # only the active adapter's tensors (and heads) train; the base's kernels stay frozen
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert all(id(layer.base_layer.weight) not in trainable for layer in adapter_layers(net))
    set_adapter(net, "first")
    assert net.decoder.seg_layers[-1].weight is first_head and same(run(net, X), first)
    set_adapter(net, "second")
    assert same(run(net, X), second)
    with disable_adapters(net):
        assert same(run(net, X), base)
        assert all(torch.equal(h.weight, w) for h, w in zip(net.decoder.seg_layers, base_heads))
    with pytest.raises(ValueError, match="already holds an adapter named 'first'"):
        inject_adapters(net, PeftConfig("lora_c", rank=2), name="first")
    with pytest.raises(ValueError, match="already holds adapters"):
        inject_adapters(net, PeftConfig("lora_c", rank=2))  # unnamed on an adapted network: refused as before


def test_delete_adapter(tmp_path):
    net = pretrained_network(SPEC)
    base = run(net, X)
    stock_keys = net.state_dict().keys()
    load_adapter(net, saved(trained("cp_lora", seed=3), tmp_path / "a"), name="a")
    load_adapter(net, saved(trained("lora_c", seed=4), tmp_path / "b"), name="b")
    a_alone = run(load_adapter(pretrained_network(SPEC), tmp_path / "a" / "fold_0").eval(), X)
    delete_adapter(net, "a")  # not the active one
    assert adapter_names(net) == ["b"] and active_adapter(net) == "b"
    with pytest.raises(ValueError, match="no adapter named 'a'"):
        set_adapter(net, "a")
    load_adapter(net, tmp_path / "a" / "fold_0", name="a")  # the name is free again
    assert same(run(net, X), a_alone)
    delete_adapter(net, "a")  # the active one: the base alone is left active
    assert active_adapter(net) is None and same(run(net, X), base)
    set_adapter(net, "b")
    delete_adapter(net, "b")  # the last one: the stock network, as before the first adapter
    assert adapter_names(net) == [] and get_config(net) is None and not adapter_layers(net)
    assert net.state_dict().keys() == stock_keys and same(run(net, X), base)
    inject_adapters(net, PeftConfig("lora_c", rank=2))  # and it takes an unnamed adapter again


def test_heads_follow_the_adapter_when_class_counts_differ(tmp_path):
    two = trained("cp_lora", seed=3, classes=2)
    five = trained("lora_c", seed=4, classes=5)
    assert base_fingerprint(two) == base_fingerprint(five) == base_fingerprint(pretrained_network(SPEC))
    net = pretrained_network(SPEC)
    load_adapter(net, saved(two, tmp_path / "two"), name="two")
    load_adapter(net, saved(five, tmp_path / "five"), name="five")
    assert run(net, X)[0].shape[1] == 5 and same(run(net, X), run(five, X))
    set_adapter(net, "two")
    assert run(net, X)[0].shape[1] == 2 and same(run(net, X), run(two, X))
    assert net.decoder.seg_layers[-1].out_channels == 2
    with disable_adapters(net):
        assert run(net, X)[0].shape[1] == 3 and same(run(net, X), run(pretrained_network(SPEC), X))


def test_merge_is_refused_while_other_adapters_are_registered(tmp_path):
    net = pretrained_network(SPEC)
    load_adapter(net, saved(trained("lora_c", seed=3), tmp_path / "a"), name="a")
    load_adapter(net, saved(trained("lora_c", seed=4), tmp_path / "b"), name="b")
    with pytest.raises(ValueError, match=r"delete_adapter them first"):
        merge_adapters(net)
    delete_adapter(net, "a")
    expected = run(net, X)
    merged = merge_adapters(net)
    assert adapter_names(merged) == [] and not adapter_layers(merged)
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(run(merged, X), expected))


# ---------------------------------------------------------------------------------- refusals
def test_an_adapter_of_another_base_is_refused_and_leaves_the_network_as_it_was(tmp_path):
    net = pretrained_network(SPEC)
    load_adapter(net, saved(trained("lora_c", seed=3), tmp_path / "a"), name="a")
    before = run(net, X)
    other = pretrained_network(SPEC, seed=1)
    inject_adapters(other, PeftConfig("cp_lora", rank=2))
    perturb_([p for p in other.parameters() if p.requires_grad], seed=4)
    folder = saved(other, tmp_path / "other")
    with pytest.raises(BaseMismatchError) as err:
        load_adapter(net, folder, name="other", base_name="base.pth")
    for text in (base_fingerprint(pretrained_network(SPEC)), base_fingerprint(pretrained_network(SPEC, seed=1)),
                 str(folder), "base.pth", "--allow-other-base"):
        assert text in str(err.value)
    assert adapter_names(net) == ["a"] and active_adapter(net) == "a" and same(run(net, X), before)
    with pytest.warns(BaseFingerprintWarning, match="allow_other_base=True"):
        load_adapter(net, folder, name="other", allow_other_base=True)
    assert active_adapter(net) == "other"


def _plans_with(change: str) -> dict:
    plans = tiny_plans()
    config = plans["configurations"][CONFIGURATION]
    if change == "spacing":
        config["spacing"] = [1.0, 1.0, 1.0]
    elif change == "normalization_schemes":
        config["normalization_schemes"] = ["ZScoreNormalization"] * 2
    elif change == "transpose_forward":
        plans["transpose_forward"], plans["transpose_backward"] = [0, 2, 1], [0, 2, 1]
    elif change == "patch_size":
        config["patch_size"] = [16, 16, 16]
    elif change == "architecture":
        config["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 12, 32]
    elif change == "foreground_intensity_properties_per_channel[0]":
        plans["foreground_intensity_properties_per_channel"] = {"0": {"mean": 40.0, "std": 10.0}}
    return plans


@pytest.mark.parametrize("change", ["spacing", "normalization_schemes", "transpose_forward", "patch_size",
                                    "architecture", "foreground_intensity_properties_per_channel[0]"])
def test_an_adapter_planned_differently_is_refused_naming_the_difference(change, tmp_path):
    net = pretrained_network(SPEC)
    set_base_plans(net, tiny_plans(), CONFIGURATION, "the base source.pth")
    load_adapter(net, saved(trained("lora_c", seed=3), tmp_path / "same"), name="same")  # same plans: accepted
    before = run(net, X)
    folder = saved(trained("lora_c", seed=4), tmp_path / "other", plans=_plans_with(change))
    with pytest.raises(PlansMismatchError) as err:
        load_adapter(net, folder, name="other")
    text = str(err.value)
    shown = [line.strip().split(":")[0].split(" (")[0] for line in text.splitlines()[1:-1]]
    assert shown == ([change, "transpose_backward"] if change == "transpose_forward" else [change]), text
    assert "the base source.pth" in text and str(folder) in text and "plan-from-checkpoint" in text
    assert adapter_names(net) == ["same"] and same(run(net, X), before)


def test_without_base_plans_the_first_adapters_plans_are_the_reference(tmp_path):
    net = pretrained_network(SPEC)
    load_adapter(net, saved(trained("lora_c", seed=3), tmp_path / "first"), name="first")
    with pytest.raises(PlansMismatchError, match="spacing"):
        load_adapter(net, saved(trained("lora_c", seed=4), tmp_path / "second", plans=_plans_with("spacing")),
                     name="second")


def test_single_adapter_use_is_unchanged(tmp_path):
    """No name: the adapter is 'default'; training, saving and loading see exactly what they saw before."""
    net = trained("cp_lora")
    assert adapter_names(net) == ["default"] and active_adapter(net) == "default"
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert any(p is net.decoder.seg_layers[-1].weight for p in trainable)  # the network's own heads train
    copied = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_adapter(net, tmp_path / "a")
        loaded = load_adapter(pretrained_network(SPEC), tmp_path / "a").eval()
    assert same(run(loaded, X), run(net, X)) and same(run(copied, X), run(net, X))
    with disable_adapters(copied):  # a deep copy keeps its own base
        assert same(run(copied, X), run(pretrained_network(SPEC), X))


def test_a_base_changed_in_place_is_fingerprinted_again(tmp_path):
    """Every fold of every adapter checks the base; its fingerprint is remembered only while no base tensor changes."""
    net = pretrained_network(SPEC)
    load_adapter(net, saved(trained("lora_c", seed=3), tmp_path / "a"), name="a")
    load_adapter(net, saved(trained("lora_c", seed=4), tmp_path / "b"), name="b")  # the remembered fingerprint
    with disable_adapters(net), torch.no_grad():
        kernel = net.encoder.stages[1][0].convs[0].conv.weight
        kernel.view(-1)[0] = torch.nextafter(kernel.view(-1)[0], torch.tensor(float("inf")))
    with pytest.raises(BaseMismatchError):
        load_adapter(net, saved(trained("lora_c", seed=5), tmp_path / "c"), name="c")
