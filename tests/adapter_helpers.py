"""Shared helpers of the adapter tests: which tensors are the adapters', perturbing them, counts."""
from __future__ import annotations

import math

import torch
from torch import nn

from nnunet_peft import METHODS, PeftConfig
from nnunet_peft.injection import GROUPS_ATTR, adapter_layers, inject_adapters
from nnunet_peft.layers.tensor import TensorGroupAdapter

# every (method, forward mode) pair the library offers, with readable test ids
METHOD_MODES = [(m, mode) for m, spec in METHODS.items() for mode in spec.forward_modes]
METHOD_MODE_IDS = [f"{m}-{mode}" for m, mode in METHOD_MODES]
MERGEABLE_METHOD_MODES = [(m, mode) for m, mode in METHOD_MODES if METHODS[m].mergeable]
DORA_METHODS = [m for m in METHODS if PeftConfig(m).uses_dora]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def conv_layout_shape(conv: nn.Module) -> tuple[int, ...]:
    """``(Cout, Cin, k...)`` of a convolution (a transposed one stores ``(Cin, Cout, k...)``), ``(out, in)``
    of a Linear."""
    shape = tuple(conv.weight.shape)
    return (shape[1], shape[0], *shape[2:]) if isinstance(conv, _TRANSPOSED) else shape


def layer_tensors(layer: nn.Module) -> list[nn.Parameter]:
    """The trainable tensors of one adapter layer, including the tensor group it reads from."""
    if isinstance(layer, TensorGroupAdapter):
        return [p for group in layer.groups for p in group.parameters()]
    return list(layer.adapter_parameters())


def adapter_tensors(network: nn.Module) -> list[nn.Parameter]:
    """Every adapter tensor of ``network`` (layers and shared tensor groups), once each."""
    found: dict[int, nn.Parameter] = {}
    for layer in adapter_layers(network):
        for p in layer_tensors(layer):
            found[id(p)] = p
    if hasattr(network, GROUPS_ATTR):
        for p in getattr(network, GROUPS_ATTR).parameters():
            found[id(p)] = p
    return list(found.values())


@torch.no_grad()
def perturb_(tensors: list[torch.Tensor], seed: int = 0, scale: float = 0.1) -> None:
    """Add seeded Gaussian noise of size ``scale`` to every tensor, in place."""
    g = torch.Generator().manual_seed(seed)
    for t in tensors:
        t.add_(scale * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype))


def moved_adapter_network(spec, method: str, mode: str | None, rank: int = 2, seed: int = 0) -> nn.Module:
    """A tiny pretrained network (``tests/networks.py``) with adapters whose every trainable tensor was moved
    off its initialisation (LoRA's zero factor included), so that every gradient is non-trivial; in training
    mode, where the forward modes differ."""
    from networks import pretrained_network

    net = pretrained_network(spec, seed=seed)
    inject_adapters(net, PeftConfig(method, rank=rank, forward_mode=mode))
    with torch.no_grad():
        perturb_([p for p in net.parameters() if p.requires_grad], seed=seed + 1, scale=0.05)
    return net.train()


def expected_layer_count(method: str, shape: tuple[int, ...], rank: int, serial_width: int | None = None) -> int:
    """docs/METHODS.md's trainable-parameter formula for one low-rank / HyPS layer of conv-layout ``shape``
    (``(out, in)`` for a Linear)."""
    cout, cin, *kernel = shape
    k = math.prod(kernel)
    base = method.replace("dora", "lora")
    if base == "lora_c":
        n = rank * (cin * k + cout)
    elif base == "conv_lora":
        k1 = kernel[0] if kernel else 1  # a Linear has no kernel axis: LoRA-C's count
        n = rank * k1 * (cin * k1 + cout * math.prod(kernel[1:]))
    elif base == "cp_lora":
        n = rank * (cout + cin + sum(kernel))  # lam folded into the factors
    elif method == "hyps":
        d = serial_width or rank
        n = rank * (cout + cin * k) + 2 * d * cout
    else:
        raise ValueError(f"no per-layer formula for {method}")
    return n + (cout if "dora" in method else 0)


def expected_group_count(method: str, shape: tuple[int, ...], num_layers: int, rank: int) -> int:
    """docs/METHODS.md's count for a tensor group of ``num_layers`` kernels of conv-layout ``shape``."""
    cout, cin, *kernel = shape
    cols = cin * math.prod(kernel)
    r = min(rank, cout, cols)
    if method == "lora_pt":
        return num_layers * r * (cout + r + cols)
    if method == "tcur_lora":
        return r * r * num_layers
    raise ValueError(f"no group formula for {method}")
