"""Choosing each adapter layer's forward mode by timing it: ``PeftConfig(forward_mode="auto")``.

The chain, reconstruct and projected modes compute the same function and gradients; which one is
fastest depends on the layer (``r / Cout``, resolution, kernel) and on the device
(docs/results/speed_and_memory.md). Like cuDNN's benchmark mode, the choice is measured where the
training runs, once, before the first step: every distinct layer shape (layer type, weights, geometry,
input shape) is timed alone in each of its method's modes, forward and backward as in training (the adapter's gradients,
and the input gradient that every layer but the network's first passes on), and every layer of that
shape takes the fastest. Inputs are random tensors of the recorded shapes, one shape at a time, so
the search needs no more memory than one layer's training step.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from nnunet_peft.layers.base import AdapterLayer


@dataclass(frozen=True)
class ModeChoice:
    """The forward mode chosen for every layer of one shape, and the times it was chosen on."""

    layers: tuple[str, ...]
    input_shape: tuple[int, ...]
    times_ms: dict[str, float]  # median forward + backward per mode
    chosen: str


def _signature(layer: AdapterLayer, shape: tuple[int, ...]) -> tuple:
    base = layer.base_layer
    geometry = tuple(getattr(base, a, None) for a in ("stride", "padding", "dilation", "output_padding"))
    return type(layer).__name__, type(base).__name__, tuple(base.weight.shape), geometry, shape


def _input_shapes(network: nn.Module, example: torch.Tensor,
                  layers: dict[str, AdapterLayer]) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Each layer's input shape at ``example``, and the layers that receive ``example`` itself (the image,
    which needs no gradient: they pass none on)."""
    shapes: dict[str, tuple[int, ...]] = {}
    on_image: set[str] = set()

    def record(name: str, args: tuple) -> None:
        shapes.setdefault(name, tuple(args[0].shape))
        if args[0] is example:
            on_image.add(name)

    hooks = [layer.register_forward_hook(lambda m, args, out, name=name: record(name, args))
             for name, layer in layers.items()]
    was_training = network.training
    try:
        network.eval()  # no BatchNorm statistics updated by the probe
        with torch.no_grad():
            network(example)
    finally:
        network.train(was_training)
        for h in hooks:
            h.remove()
    return shapes, on_image


def time_forward_modes(layer: AdapterLayer, shape: tuple[int, ...], modes: tuple[str, ...], *,
                       input_gradient: bool = True, autocast_dtype: torch.dtype | None = None,
                       warmup: int = 1, repeats: int = 3) -> dict[str, float]:
    """Median milliseconds of one forward + backward of ``layer`` in training mode, per forward mode.

    The modes are interleaved per repeat, so that drift in the machine's load hits them alike. The
    gradients are returned by ``torch.autograd.grad``, never accumulated into ``.grad``.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"expected warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    weight = layer.base_layer.weight
    device = weight.device
    params = [p for p in layer.adapter_parameters() if p.requires_grad]
    x = torch.randn(shape, device=device, dtype=weight.dtype).requires_grad_(input_gradient)
    wrt = params + ([x] if input_gradient else [])
    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()

    mode_before, was_training = layer.forward_mode, layer.training
    times: dict[str, list[float]] = {m: [] for m in modes}
    try:
        layer.train()
        with autocast():
            g = torch.randn_like(layer(x))
        for repeat in range(warmup + repeats):
            for mode in modes:
                layer.forward_mode = mode
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                with autocast():
                    y = layer(x)
                torch.autograd.grad(y, wrt, g.to(y.dtype), allow_unused=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if repeat >= warmup:
                    times[mode].append(time.perf_counter() - start)
    finally:
        layer.forward_mode = mode_before
        layer.train(was_training)
    return {m: statistics.median(t) * 1e3 for m, t in times.items()}


def choose_forward_modes(network: nn.Module, example: torch.Tensor, *, autocast_dtype: torch.dtype | None = None,
                         warmup: int = 1, repeats: int = 3) -> list[ModeChoice]:
    """Time the ``"auto"`` adapter layers of ``network`` per shape at ``example``'s input size and set each
    layer's ``forward_mode`` to the fastest of its method's modes. Returns one ``ModeChoice`` per shape
    (none when no layer is ``"auto"``). ``example`` is a batch as training feeds it (batch and patch size);
    ``autocast_dtype`` the dtype training autocasts to (nnU-Net: float16 on CUDA), ``None`` for none."""
    tunable = {name: m for name, m in network.named_modules() if isinstance(m, AdapterLayer) and m.tunable_modes}
    if not tunable:
        return []
    shapes, on_image = _input_shapes(network, example, tunable)
    groups: dict[tuple, list[str]] = {}
    for name, layer in tunable.items():
        if name in shapes:  # a layer the forward pass never reached keeps its default
            groups.setdefault((*_signature(layer, shapes[name]), name in on_image), []).append(name)
    choices = []
    for names in groups.values():
        layer, shape = tunable[names[0]], shapes[names[0]]
        times = time_forward_modes(layer, shape, layer.tunable_modes, input_gradient=names[0] not in on_image,
                                   autocast_dtype=autocast_dtype, warmup=warmup, repeats=repeats)
        chosen = min(times, key=times.get)
        for name in names:
            tunable[name].forward_mode = chosen
        choices.append(ModeChoice(tuple(names), shape, times, chosen))
    return choices


def format_mode_choices(choices: list[ModeChoice]) -> str:
    """A table for the training log: per layer shape, its layers, the modes' times and the choice."""
    if not choices:
        return "no adapter layer with forward_mode='auto'"
    modes = sorted({m for c in choices for m in c.times_ms})
    lines = ["forward mode per layer shape (ms per forward + backward of one layer, median)",
             f"{'first layer':<48} {'layers':>6} {'input':<22} " + " ".join(f"{m:>12}" for m in modes) + "  chosen"]
    for c in choices:
        cells = " ".join(f"{c.times_ms[m]:>12.2f}" if m in c.times_ms else f"{'-':>12}" for m in modes)
        lines.append(f"{c.layers[0][-48:]:<48} {len(c.layers):>6} {'x'.join(map(str, c.input_shape)):<22} {cells}  "
                     f"{c.chosen}")
    return "\n".join(lines)
