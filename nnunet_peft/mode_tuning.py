"""Choosing each adapter layer's forward mode by timing it: ``PeftConfig(forward_mode="auto")``.

The chain, reconstruct and projected modes compute the same function and gradients; which one is
fastest depends on the layer (``r / Cout``, resolution, kernel) and on the device
(docs/results/speed_and_memory.md). Like cuDNN's benchmark mode, the choice is measured where the
training runs, once, before the first step: every distinct layer shape (layer type, weights, geometry,
input shape) is timed alone in each of its method's modes, forward and backward as in training (the adapter's gradients,
and the input gradient that every layer but the network's first passes on), and every layer of that
shape takes the fastest. Inputs are random tensors of the recorded shapes, one shape at a time, so
the search needs no more memory than one layer's training step.

The grouping by shape (``shape_groups``) and the timer (``time_layers``) also make the speed harness's
per-layer table (``nnunet_peft.benchmarks.per_layer``), so that the table shows what the choice is made on.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, TypeVar

import torch
from torch import nn

from nnunet_peft.layers.base import AdapterLayer

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class ModeChoice:
    """The forward mode chosen for every layer of one shape, and the times it was chosen on."""

    layers: tuple[str, ...]
    input_shape: tuple[int, ...]
    times_ms: dict[str, float]  # median forward + backward per mode
    chosen: str


def _signature(layer: nn.Module, shape: tuple[int, ...]) -> tuple:
    base = getattr(layer, "base_layer", layer)  # an adapter layer: its frozen layer's weights and geometry
    geometry = tuple(getattr(base, a, None) for a in ("stride", "padding", "dilation", "output_padding"))
    return type(layer).__name__, type(base).__name__, tuple(base.weight.shape), geometry, shape


def _input_shapes(network: nn.Module, example: torch.Tensor,
                  layers: Mapping[str, nn.Module]) -> tuple[dict[str, tuple[int, ...]], set[str]]:
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


@dataclass(frozen=True)
class ShapeGroup:
    """Layers that one timing stands for: one signature (layer type, weights, geometry, input shape), and
    all of them seeing the image itself or none."""

    layers: tuple[str, ...]
    input_shape: tuple[int, ...]
    on_image: bool


def shape_groups(network: nn.Module, example: torch.Tensor, layers: Mapping[str, nn.Module]) -> list[ShapeGroup]:
    """The layers of ``network`` named in ``layers`` (adapter layers or plain ones), grouped by shape at
    ``example``'s input size, in the order of ``layers``; a layer the forward pass never reaches is in no group."""
    shapes, on_image = _input_shapes(network, example, layers)
    groups: dict[tuple, list[str]] = {}
    for name, layer in layers.items():
        if name in shapes:
            groups.setdefault((*_signature(layer, shapes[name]), name in on_image), []).append(name)
    return [ShapeGroup(tuple(names), shapes[names[0]], names[0] in on_image) for names in groups.values()]


@dataclass(frozen=True)
class TimedLayer:
    """One entry of ``time_layers``."""

    layer: nn.Module
    forward_mode: str | None = None  # set on the (adapter) layer before each of its calls; None: left as it is
    input_gradient: bool = True  # False for a layer that sees the image: it passes no gradient on


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``; on CUDA synchronised before and after, since kernels run asynchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _trainable(layer: nn.Module) -> list[torch.Tensor]:
    params = layer.adapter_parameters() if isinstance(layer, AdapterLayer) else layer.parameters()
    return [p for p in params if p.requires_grad]


def time_layers(entries: Mapping[K, TimedLayer], shape: tuple[int, ...], *,
                autocast_dtype: torch.dtype | None = None, warmup: int = 1, repeats: int = 3) -> dict[K, float]:
    """Median milliseconds of one forward + backward in training mode of each entry's layer, on one random
    input of ``shape``: the gradients of its trainable tensors (an adapter layer's: its adapter's), and of
    the input where the entry says so.

    The entries are layers of one shape (the same output), or one layer in several forward modes; they are
    interleaved per repeat, so that drift in the machine's load hits them alike. The gradients are returned
    by ``torch.autograd.grad``, never accumulated into ``.grad``; every layer is left in the training state
    and forward mode it came in.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"expected warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    if not entries:
        return {}
    first = next(iter(entries.values()))
    weight = getattr(first.layer, "base_layer", first.layer).weight
    device = weight.device
    x = torch.randn(shape, device=device, dtype=weight.dtype)
    inputs = {False: x, True: x.detach().requires_grad_(True)}
    wrt = {key: _trainable(e.layer) + ([inputs[True]] if e.input_gradient else []) for key, e in entries.items()}
    for key, tensors in wrt.items():
        if not tensors:
            raise ValueError(f"{key!r}: a layer with nothing trainable needs input_gradient=True (nothing to time)")

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()

    def step(e: TimedLayer, tensors: list[torch.Tensor]) -> None:
        with autocast():
            y = e.layer(inputs[e.input_gradient])
        torch.autograd.grad(y, tensors, g.to(y.dtype), allow_unused=True)

    layers = {id(e.layer): e.layer for e in entries.values()}
    before = {i: (layer.training, getattr(layer, "forward_mode", None)) for i, layer in layers.items()}
    times: dict[K, list[float]] = {key: [] for key in entries}
    try:
        for layer in layers.values():
            layer.train()
        with autocast():
            g = torch.randn_like(first.layer(inputs[first.input_gradient]))
        for repeat in range(warmup + repeats):
            for key, e in entries.items():
                if e.forward_mode is not None:
                    e.layer.forward_mode = e.forward_mode
                t = seconds(lambda: step(e, wrt[key]), device)
                if repeat >= warmup:
                    times[key].append(t)
    finally:
        for i, layer in layers.items():
            training, mode = before[i]
            layer.train(training)
            if mode is not None:
                layer.forward_mode = mode
    return {key: statistics.median(t) * 1e3 for key, t in times.items()}


def time_forward_modes(layer: AdapterLayer, shape: tuple[int, ...], modes: tuple[str, ...], *,
                       input_gradient: bool = True, autocast_dtype: torch.dtype | None = None,
                       warmup: int = 1, repeats: int = 3) -> dict[str, float]:
    """Median milliseconds of one forward + backward of ``layer`` in training mode, per forward mode.

    The modes are interleaved per repeat, so that drift in the machine's load hits them alike. The
    gradients are returned by ``torch.autograd.grad``, never accumulated into ``.grad``.
    """
    return time_layers({mode: TimedLayer(layer, mode, input_gradient) for mode in modes}, shape,
                       autocast_dtype=autocast_dtype, warmup=warmup, repeats=repeats)


def choose_forward_modes(network: nn.Module, example: torch.Tensor, *, autocast_dtype: torch.dtype | None = None,
                         warmup: int = 1, repeats: int = 3) -> list[ModeChoice]:
    """Time the ``"auto"`` adapter layers of ``network`` per shape at ``example``'s input size and set each
    layer's ``forward_mode`` to the fastest of its method's modes. Returns one ``ModeChoice`` per shape
    (none when no layer is ``"auto"``). ``example`` is a batch as training feeds it (batch and patch size);
    ``autocast_dtype`` the dtype training autocasts to (nnU-Net: float16 on CUDA), ``None`` for none."""
    tunable = {name: m for name, m in network.named_modules() if isinstance(m, AdapterLayer) and m.tunable_modes}
    if not tunable:
        return []
    choices = []
    for group in shape_groups(network, example, tunable):  # a layer the forward pass never reached keeps its default
        layer = tunable[group.layers[0]]
        times = time_forward_modes(layer, group.input_shape, layer.tunable_modes, input_gradient=not group.on_image,
                                   autocast_dtype=autocast_dtype, warmup=warmup, repeats=repeats)
        chosen = min(times, key=times.get)
        for name in group.layers:
            tunable[name].forward_mode = chosen
        choices.append(ModeChoice(group.layers, group.input_shape, times, chosen))
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
