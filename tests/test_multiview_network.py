"""The SAH laboratory's Multiview 2-D network: its blocks, nnU-Net's deep supervision, placement, frozen BatchNorm."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from adapter_helpers import adapter_tensors, perturb_
from nnunet_peft import METHODS, PeftConfig, base_fingerprint, configure_finetuning, inject_adapters, merge_adapters
from nnunet_peft.architectures.multiview import FrozenStatsBatchNorm2d, MultiviewUNet, multiview_architecture
from nnunet_peft.placement import input_convolution, network_stages, target_convolutions, unique_modules

STRIDES = [[1, 1], [2, 2], [2, 2], [1, 2]]  # the last level pools only the fine axis, as for thick slices
PATCH = (8, 32)


def build(deep_supervision: bool = True, classes: int = 3, seed: int = 0) -> MultiviewUNet:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    torch.manual_seed(seed)
    arch = multiview_architecture(STRIDES)
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  1, classes, deep_supervision=deep_supervision)


def batch(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 1, *PATCH, generator=torch.Generator().manual_seed(seed))


def test_outputs_match_nnunets_deep_supervision_scales():
    net = build(deep_supervision=True)
    outputs = net(batch())
    # nnUNetTrainer._get_deep_supervision_scales, from the same strides
    scales = list(1 / np.cumprod(np.vstack(STRIDES), axis=0))[:-1]
    assert len(outputs) == len(scales) == 3
    for out, scale in zip(outputs, scales):
        assert out.shape == (2, 3, *[round(p * s) for p, s in zip(PATCH, scale)])
    net.decoder.deep_supervision = False  # what nnU-Net's trainer sets for validation, and prediction builds
    single = net(batch())
    assert torch.equal(single, outputs[0])


def test_blocks_are_the_laboratorys():
    net = build()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # stem 2, per level 2 + 3 dilated, bottom 3, per up level 2, output block 2, heads 1 per level
    assert len(convs) == 2 + 3 * 5 + 3 + 3 * 2 + 2 + 3
    assert all(c.out_channels == 32 for c in convs if c.kernel_size == (3, 3))
    for skip in [*[level.skip for level in net.encoder.levels], net.encoder.bottleneck]:
        dilated = [m for m in skip.modules() if isinstance(m, nn.Conv2d)]
        assert [c.dilation for c in dilated] == [(1, 1), (2, 2), (4, 4)]
        assert [c.padding for c in dilated] == [(1, 1), (2, 2), (4, 4)]  # "same", written out for the adapters
        assert skip(torch.zeros(1, 32, 8, 8)).shape[1] == 64  # concatenated with its input
    assert [up[0].in_channels for up in net.decoder.up_convs] == [64, 96, 96]
    assert [type(level.pool) for level in net.encoder.levels] == [nn.MaxPool2d] * 3
    assert net.encoder.levels[2].pool.kernel_size == (1, 2)
    assert all(isinstance(m, FrozenStatsBatchNorm2d) for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_bad_strides_say_what_was_expected():
    with pytest.raises(ValueError, match=r"must be \[1, 1\]"):
        MultiviewUNet(1, 2, [[2, 2], [2, 2]])
    with pytest.raises(ValueError, match="2-D per-stage strides"):
        MultiviewUNet(1, 2, [[1, 1, 1], [2, 2, 2]])


def test_every_convolution_is_in_exactly_one_stage():
    net = build()
    stages = network_stages(net)
    assert [s.name for s in stages] == ["encoder.0", "encoder.1", "encoder.2", "bottleneck", "decoder.0",
                                        "decoder.1", "decoder.2", "decoder.3", "seg_layers"]
    placed = [id(c) for s in stages for _, c in unique_modules(s.modules, nn.Conv2d)]
    assert sorted(placed) == sorted(id(m) for m in net.modules() if isinstance(m, nn.Conv2d))
    assert input_convolution(net) is net.encoder.stem[0]
    counts = {p: len(target_convolutions(net, (p,))) for p in ("encoder", "bottleneck", "decoder")}
    assert counts == {"encoder": 2 + 3 * 5, "bottleneck": 3, "decoder": 3 * 2 + 2}
    heads = next(s for s in stages if s.placement == "seg_layers").modules[0]
    assert heads is net.decoder.seg_layers and all(h.kernel_size == (1, 1) for h in heads)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_adapters_start_at_the_base_and_the_frozen_base_keeps_its_statistics(method):
    net = build()
    net.train()
    with torch.no_grad():  # running statistics that differ from BatchNorm's initial ones
        net(batch(5))
    net.eval()
    reference = net(batch())
    fingerprint = base_fingerprint(net)
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k or "num_batches" in k}

    inject_adapters(net, PeftConfig(method=method, rank=4))
    net.eval()
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(net(batch()), reference))
    net.train()
    optimiser = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        loss = sum(o.square().mean() for o in net(batch(10 + step)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    state = net.state_dict()
    for key, value in stats.items():  # stored without the adapters' base_layer names, BatchNorms are not wrapped
        assert torch.equal(state[key], value), key
    assert base_fingerprint(net) == fingerprint  # an exported adapter still matches the checkpoint
    perturb_(adapter_tensors(net))
    net.eval()
    assert not torch.allclose(net(batch())[0], reference[0])  # the adapters are live


def test_full_finetuning_updates_the_statistics_and_merging_gives_a_stock_network():
    net = build()
    configure_finetuning(net, "finetune")
    before = net.encoder.stem[1].running_mean.clone()
    net.train()
    net(batch())
    assert not torch.equal(net.encoder.stem[1].running_mean, before)  # trainable BatchNorm: as nn.BatchNorm2d

    adapted = build(seed=2)
    inject_adapters(adapted, PeftConfig(method="lora_c", rank=4))
    perturb_(adapter_tensors(adapted))
    adapted.eval()
    expected = adapted(batch())
    merged = merge_adapters(adapted)
    fresh = build(seed=3)
    fresh.load_state_dict(merged.state_dict())
    fresh.eval()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fresh(batch()), expected))
    assert set(FrozenStatsBatchNorm2d(4).state_dict()) == set(nn.BatchNorm2d(4).state_dict())
