"""The speed harness's per-layer table: forward + backward of each distinct layer of a network alone, in
every forward mode of each method, against the same layer without an adapter.

The layers are grouped and timed as ``forward_mode="auto"`` does when training starts
(``nnunet_peft.mode_tuning``: one timing per layer shape, the shapes recorded at the benchmark's batch and
patch, the candidates interleaved per repeat), so that the table shows what that choice is made on; the
reference columns time the base layer itself, trained (full fine-tuning) and frozen.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from nnunet_peft.config import METHODS, PLACEMENTS, PeftConfig
from nnunet_peft.injection import LAYER_CLASSES
from nnunet_peft.layers.kinds import LINEAR_TYPES, TRANSPOSED_TYPES
from nnunet_peft.mode_tuning import TimedLayer, shape_groups, time_layers
from nnunet_peft.placement import target_convolutions

MODE_ORDER = ("reconstruct", "chain", "projected")
FULL, FROZEN = ("full",), ("frozen",)


def adaptable_layers(network: nn.Module) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Every layer an adapter goes on with every stage placed, by module name in the network's order, and
    the name the table shows for it (``stage/module``, which need not be unique: a stage of several blocks
    names their layers alike)."""
    shown = {id(layer): name.rstrip("/") for name, layer in target_convolutions(network, PLACEMENTS)}
    layers = {name: m for name, m in network.named_modules() if id(m) in shown}
    return layers, {name: shown[id(m)] for name, m in layers.items()}


def geometry(layer: nn.Module) -> str:
    if isinstance(layer, LINEAR_TYPES):
        return f"linear {layer.in_features}->{layer.out_features}"
    transposed = isinstance(layer, TRANSPOSED_TYPES)
    kernel = "x".join(map(str, layer.kernel_size))
    return (f"{'convT' if transposed else 'conv'} {layer.in_channels}->{layer.out_channels}, k{kernel}, "
            f"s{'x'.join(map(str, layer.stride))}")


def candidates(layer: nn.Module, methods: list[str], ranks: list[int], on_image: bool) -> dict[tuple, TimedLayer]:
    """What is timed on one layer shape: the layer itself trained (weight and input gradients) and frozen
    (input gradient only), and an adapter of every method and rank on a copy of it in each forward mode.
    The layer that sees the image passes no gradient on, except the frozen one, which has nothing else to
    differentiate."""
    device = layer.weight.device
    out = {FULL: TimedLayer(copy.deepcopy(layer).requires_grad_(True), input_gradient=not on_image),
           FROZEN: TimedLayer(copy.deepcopy(layer).requires_grad_(False))}
    for method in methods:
        spec = METHODS[method]
        for rank in ranks:
            config = PeftConfig(method, rank=rank, forward_mode=spec.forward_modes[0])
            adapter = LAYER_CLASSES[method](copy.deepcopy(layer), config).to(device)
            for mode in spec.forward_modes:
                out[(method, rank, mode)] = TimedLayer(adapter, mode, input_gradient=not on_image)
    return out


def per_layer_report(network: nn.Module, example: torch.Tensor, methods: list[str], ranks: list[int], *,
                     warmup: int, repeats: int) -> str:
    """The markdown table: one row per layer shape, method and rank; a mode's cell is its time over the
    trained layer's. ``example`` is a batch as the benchmark feeds the network (its device is the one
    timed, under float16 autocast on CUDA as nnU-Net trains); ``methods`` without a per-layer class are
    left out."""
    methods = [m for m in methods if m in LAYER_CLASSES]
    layers, shown = adaptable_layers(network)
    cuda = example.device.type == "cuda"
    lines = [
        "### per layer: forward + backward of one layer, ms (median), and / full fine-tuning of that layer",
        "",
        f"Rank {', '.join(map(str, ranks))}; {warmup} warm-up + {repeats} timed calls per entry, "
        "interleaved per layer shape; full = weight and input gradients, frozen = input gradient only. "
        "'count' is how many layers of the network have that shape and input.",
        "",
        "| layer (first of its shape) | count | kernel | input | full ms | frozen | method | rank | "
        + " | ".join(MODE_ORDER) + " | fastest |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(MODE_ORDER) + "---|",
    ]
    for group in shape_groups(network, example, layers):
        layer = layers[group.layers[0]]
        med = time_layers(candidates(layer, methods, ranks, group.on_image), group.input_shape,
                          autocast_dtype=torch.float16 if cuda else None, warmup=warmup, repeats=repeats)
        base = med[FULL]
        for method in methods:
            for rank in ranks:
                present = {mode: med[(method, rank, mode)] for mode in MODE_ORDER if (method, rank, mode) in med}
                cells = [f"{present[mode] / base:.2f}" if mode in present else "-" for mode in MODE_ORDER]
                lines.append(f"| {shown[group.layers[0]]} | {len(group.layers)} | {geometry(layer)} "
                             f"| {'x'.join(map(str, group.input_shape))} | {base:.1f} | {med[FROZEN] / base:.2f} "
                             f"| {method} | {rank} | " + " | ".join(cells) + f" | {min(present, key=present.get)} |")
    return "\n".join(lines)
