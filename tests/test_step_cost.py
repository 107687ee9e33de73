"""What one training step of an adapted network computes (issue 15): no adapted layer's full weight
gradient in the projected mode, the same gradients compiled as eager, and one build of each tensor
group's update per step, with gradients unchanged by that sharing.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adapter_helpers import moved_adapter_network
from networks import NET_SPECS, outputs, random_input
from nnunet_peft import adapter_layers
from nnunet_peft.injection import GROUPS_ATTR

PLAIN3D = NET_SPECS[1]


def adapted(method: str, mode: str | None, rank: int = 2, seed: int = 0, spec=PLAIN3D):
    return moved_adapter_network(spec, method, mode, rank=rank, seed=seed)


def loss_of(net, x) -> torch.Tensor:
    return sum(o.square().mean() for o in outputs(net, x))


class WeightGradientShapes(TorchDispatchMode):
    """The weight shape of every convolution backward that computes a weight gradient."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default and args[-1][1]:
            self.shapes.append(tuple(args[2].shape))
        return func(*args, **(kwargs or {}))


def weight_gradient_shapes(net) -> list[tuple[int, ...]]:
    x = random_input(PLAIN3D)
    with WeightGradientShapes() as log:
        loss_of(net, x).backward()
    return log.shapes


@pytest.mark.parametrize("method", ["lora_c", "cp_dora", "hyps"])
def test_projected_mode_never_computes_an_adapted_layers_full_weight_gradient(method):
    net = adapted(method, "projected")
    frozen_shapes = {tuple(layer.base_layer.weight.shape) for layer in adapter_layers(net)}
    shapes = weight_gradient_shapes(net)
    assert shapes and not frozen_shapes & set(shapes)
    # the check can fail: the reconstruct mode computes every one of them
    assert frozen_shapes <= set(weight_gradient_shapes(adapted(method, "reconstruct")))


@pytest.mark.parametrize(("method", "mode"), [("cp_dora", "projected"), ("lora_pt", None)])
def test_compiled_network_gradients_equal_eager(method, mode):
    net = adapted(method, mode, spec=NET_SPECS[0])
    x = random_input(NET_SPECS[0])
    trainable = [p for p in net.parameters() if p.requires_grad]

    def grads(model):
        return torch.autograd.grad(loss_of(model, x), trainable)

    eager = grads(net)
    compiled = grads(torch.compile(net, backend="aot_eager"))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def groups_of(net):
    return list(getattr(net, GROUPS_ATTR).values())


@pytest.mark.parametrize("method", ["lora_pt", "tcur_lora"])
def test_tensor_groups_build_their_update_once_per_step_with_unchanged_gradients(method):
    spec = NET_SPECS[2]  # a residual encoder: groups of two and three same-shape convolutions
    shared, separate = adapted(method, None, spec=spec), adapted(method, None, spec=spec)
    for group in groups_of(separate):
        group.share_updates = False
    assert any(g.num_layers > 1 for g in groups_of(shared))
    x = random_input(spec)
    opts = [torch.optim.SGD([p for p in n.parameters() if p.requires_grad], lr=0.1) for n in (shared, separate)]
    for step in range(2):
        builds = [g.builds for g in groups_of(shared)]
        for net, opt in zip((shared, separate), opts):
            opt.zero_grad()
            loss_of(net, x).backward()
        assert [g.builds - b for g, b in zip(groups_of(shared), builds)] == [1] * len(builds), step
        assert all(g.builds == 0 for g in groups_of(separate))
        for a, b in zip(shared.parameters(), separate.parameters()):
            if a.requires_grad:
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
        for opt in opts:
            opt.step()  # changes the factors: the next step must build again
    # two forward/backward passes without a step (gradient accumulation) each build their own update
    builds = [g.builds for g in groups_of(shared)]
    loss_of(shared, x).backward()
    loss_of(shared, x).backward()
    assert [g.builds - b for g, b in zip(groups_of(shared), builds)] == [2] * len(builds)
    # without gradients (validation) nothing is kept
    with torch.no_grad():
        loss_of(shared, x)
    assert all(g._shared is None for g in groups_of(shared))
