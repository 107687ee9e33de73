"""What an adapter needs from its frozen layer, per kind of layer: convolution, transposed convolution, Linear.

Every method reads the frozen weight in *conv layout* ``(Cout, Cin, k1, ..., kd)``: its mode-1
unfolding is the ``Cout x (Cin*K)`` matrix the formulas of docs/METHODS.md act on. A Linear's
``(out_features, in_features)`` weight is already in that layout with no kernel axes (``K = 1``), a
transposed convolution's ``(Cin, Cout, k...)`` is swapped on the way in and out. Beyond the layout a
method needs the layer's operation with another weight (``apply``), a channel-mixing map for chains
(``pointwise``), and a way to broadcast a per-output-channel vector against the output
(``channel_view``): channels are axis 1 of a feature map but the last axis of a Linear's input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The one definition of each kind's layer types; the rest of the package imports them from here.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CONVOLUTION_TYPES = CONV_TYPES + TRANSPOSED_TYPES  # every convolution, transposed or not
LINEAR_TYPES = (nn.Linear,)
ADAPTABLE_TYPES = CONVOLUTION_TYPES + LINEAR_TYPES

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class LayerKind:
    """The strategy of one frozen layer; subclasses per kind. Holds the layer, never its weight."""

    transposed = False

    def __init__(self, layer: nn.Module) -> None:
        w = layer.weight
        self.layer_ref = [layer]  # a plain list: the adapter registers the layer, the kind must not
        self.conv_shape: tuple[int, ...] = tuple(self.to_conv_layout(w).shape)
        self.out_channels, self.in_channels = self.conv_shape[:2]
        self.kernel_size: tuple[int, ...] = tuple(self.conv_shape[2:])
        self.ndim = len(self.kernel_size)  # spatial axes of the operation; 0 for a Linear

    @property
    def layer(self) -> nn.Module:
        return self.layer_ref[0]

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel_size)

    def to_conv_layout(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def from_conv_layout(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, **overrides) -> torch.Tensor:
        """The layer's operation with another weight (conv layout); ``overrides`` change the geometry."""
        raise NotImplementedError

    def pointwise(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Mix channels with an ``(out, in)`` matrix, no bias, at every position."""
        raise NotImplementedError

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """A per-output-channel vector shaped to broadcast against the layer's output."""
        raise NotImplementedError


class ConvKind(LayerKind):
    """Conv1d/2d/3d: channels on axis 1, the base geometry (stride, padding, dilation) kept."""

    def apply(self, x, weight, bias=None, **overrides):
        b = self.layer
        kw = dict(stride=b.stride, padding=b.padding, dilation=b.dilation, groups=1)
        kw.update(overrides)
        return _CONV_FN[self.ndim](x, weight, bias, **kw)

    def pointwise(self, x, matrix):
        return _CONV_FN[self.ndim](x, matrix.reshape(*matrix.shape, *([1] * self.ndim)))

    def channel_view(self, v):
        return v.reshape(1, -1, *([1] * self.ndim))


class TransposedConvKind(ConvKind):
    """ConvTranspose1d/2d/3d: the stored ``(Cin, Cout, k...)`` is swapped; the swap is its own inverse."""

    transposed = True

    def to_conv_layout(self, weight):
        return weight.transpose(0, 1)

    from_conv_layout = to_conv_layout

    def apply(self, x, weight, bias=None, **overrides):
        b = self.layer
        kw = dict(stride=b.stride, padding=b.padding, dilation=b.dilation, groups=1, output_padding=b.output_padding)
        kw.update(overrides)
        return _CONV_T_FN[self.ndim](x, weight.transpose(0, 1), bias, **kw)


class LinearKind(LayerKind):
    """nn.Linear: the ``K = 1`` case, channels on the last axis of an input of any leading shape."""

    def apply(self, x, weight, bias=None, **overrides):
        if overrides:
            raise ValueError(f"a Linear layer has no geometry to override, got {sorted(overrides)}")
        return F.linear(x, weight, bias)

    def pointwise(self, x, matrix):
        return F.linear(x, matrix)

    def channel_view(self, v):
        return v


def layer_kind(layer: nn.Module) -> LayerKind:
    """The kind of ``layer`` (checked by ``check_adaptable`` first)."""
    if isinstance(layer, TRANSPOSED_TYPES):
        return TransposedConvKind(layer)
    if isinstance(layer, CONV_TYPES):
        return ConvKind(layer)
    if isinstance(layer, LINEAR_TYPES):
        return LinearKind(layer)
    raise ValueError(f"no adapter kind for {type(layer).__name__}")


def conv_layout_shape(layer: nn.Module) -> tuple[int, ...]:
    """``(Cout, Cin, k...)`` of a convolution, ``(out, in)`` of a Linear, without building an adapter."""
    shape = tuple(layer.weight.shape)
    return (shape[1], shape[0], *shape[2:]) if isinstance(layer, TRANSPOSED_TYPES) else shape


def conv_layout_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight in conv layout (a view)."""
    w = layer.weight
    return w.transpose(0, 1) if isinstance(layer, TRANSPOSED_TYPES) else w
