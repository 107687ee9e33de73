"""The hybrid of adapters and a fully trained decoder (``PeftConfig.train_fully``, the ``ftdec`` token).

Every method, on a plain and a residual 3-D U-Net and on a transformer backbone: the network is the
pretrained one at initialisation, exactly the decoder's weights and the adapters train (no adapter
sits in the decoder), the adapter file carries the trained decoder so that a fresh base reproduces
the model, and merging folds the adapters while keeping the decoder.
"""
from __future__ import annotations

import pytest
import torch

from adapter_helpers import perturb_
from networks import BACKBONE_SPECS, NET_SPECS, outputs, pretrained_network, random_input
from nnunet_peft import (METHODS, PeftConfig, adapter_layers, adapter_state_dict, base_fingerprint, inject_adapters,
                         load_adapter, merge_adapters, save_adapter)
from nnunet_peft.placement import network_stages
from nnunet_peft.name_grammar import DEFAULT_LEARNING_RATES, TrainerNameError, parse_trainer_name
from nnunet_peft.training.trainer import GroupPolyLRScheduler

SPECS = [s for s in NET_SPECS if s.ndim == 3] + [s for s in BACKBONE_SPECS if s.arch == "unetr"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def hybrid(spec, method: str) -> torch.nn.Module:
    config = PeftConfig(method, rank=2, placement=("encoder", "bottleneck"), train_fully=("decoder",))
    return inject_adapters(pretrained_network(spec), config)


def stage_parameters(network, placement: str) -> set[int]:
    return {id(p) for s in network_stages(network) if s.placement == placement for m in s.modules
            for p in m.parameters()}


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
@pytest.mark.parametrize("method", list(METHODS))
def test_decoder_trains_fully_beside_identity_adapters(method, spec):
    net = hybrid(spec, method)
    x = random_input(spec)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(outputs(net, x), outputs(pretrained_network(spec), x)))
    decoder = stage_parameters(net, "decoder")
    assert decoder and all(p.requires_grad for p in net.parameters() if id(p) in decoder)
    assert not [layer for layer in adapter_layers(net) if any(id(p) in decoder for p in layer.parameters())]
    heads = stage_parameters(net, "seg_layers")
    adapters = {id(p) for p in adapter_state_dict(net).values()}
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable - decoder - heads, "the encoder and bottleneck adapters train"
    frozen_encoder = stage_parameters(net, "encoder") - trainable
    assert frozen_encoder and not (frozen_encoder & adapters)


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
@pytest.mark.parametrize("method", list(METHODS))
def test_adapter_file_carries_the_decoder_and_rebuilds_the_model(method, spec, tmp_path):
    net = hybrid(spec, method)
    perturb_([p for p in net.parameters() if p.requires_grad], scale=0.05)
    decoder_keys = [k for k, v in net.state_dict(keep_vars=True).items()
                    if id(v) in stage_parameters(net, "decoder")]
    save_adapter(net, tmp_path / "adapter")
    saved = adapter_state_dict(net)
    assert set(decoder_keys) & set(saved), "the trained decoder is in the adapter file"
    fresh = pretrained_network(spec)
    # the decoder is carried by the file, not part of the base the file is checked against
    assert base_fingerprint(fresh, carried=saved) == base_fingerprint(net)
    loaded = load_adapter(fresh, tmp_path / "adapter")
    x = random_input(spec)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(outputs(loaded, x), outputs(net, x)))
        if METHODS[method].mergeable:
            expected = outputs(net, x)
            merged = merge_adapters(loaded)
            got = outputs(merged, x)
            assert max((a - b).abs().max().item() for a, b in zip(got, expected)) < 1e-4


@pytest.mark.parametrize("kwargs, message", [
    ({"placement": ("encoder", "decoder"), "train_fully": ("decoder",)}, "decoder cannot both take adapters"),
    ({"train_fully": ("middle",)}, "train_fully must be distinct values from"),
])
def test_train_fully_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PeftConfig("cp_lora", **kwargs)


def test_train_fully_survives_the_saved_config():
    config = PeftConfig("cp_lora", placement=("encoder",), train_fully="decoder")
    assert config.train_fully == ("decoder",)
    assert PeftConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    del old["train_fully"]  # adapters saved before the field existed
    assert PeftConfig.from_dict(old).train_fully == ()


@pytest.mark.parametrize("name, placement", [
    ("nnUNetTrainerCPLoRA_ftdec", ("encoder", "bottleneck")),
    ("nnUNetTrainerConvLoRA_enc_ftdec_r4", ("encoder",)),
])
def test_ftdec_token(name, placement):
    spec = parse_trainer_name(name)
    config = spec.peft_config()
    assert spec.train_decoder and config.placement == placement and config.train_fully == ("decoder",)
    assert spec.initial_lr == DEFAULT_LEARNING_RATES["adapter"] and spec.full_lr == DEFAULT_LEARNING_RATES["finetune"]


@pytest.mark.parametrize("name, why", [
    ("nnUNetTrainerCPLoRA_dec_ftdec", "the decoder cannot take adapters too"),
    ("nnUNetTrainerFinetune_ftdec", "adapter-method token"),
    ("nnUNetTrainerCPLoRA_ftdec_ftdec", "appears at most once"),
    ("nnUNetTrainerCPLoRA_0ep", "epochs must be >= 1"),
    ("nnUNetTrainerFinetune_0it", "iterations must be >= 1"),
])
def test_ftdec_and_zero_schedules_are_refused(name, why):
    with pytest.raises(TrainerNameError, match=why):
        parse_trainer_name(name)


def test_group_poly_schedule_keeps_each_groups_rate():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 3e-2}, {"params": [b], "lr": 1e-2}], 3e-2)
    scheduler = GroupPolyLRScheduler(optimizer, 3e-2, 10)
    scheduler.step(5)
    factor = 0.5 ** 0.9
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([3e-2 * factor, 1e-2 * factor])
    one = torch.optim.SGD([a], 3e-2)
    GroupPolyLRScheduler(one, 3e-2, 10).step(5)  # one group: nnU-Net's schedule
    assert one.param_groups[0]["lr"] == pytest.approx(3e-2 * factor)
