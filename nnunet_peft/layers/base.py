"""The shared base of every adapter layer: a frozen convolution plus a trainable update.

Weights are handled in *conv layout* ``(Cout, Cin, k1, ..., kd)`` throughout; a transposed
convolution stores ``(Cin, Cout, k...)`` and is swapped on the way in and out, which is how
docs/METHODS.md (section 1) adapts it: every formula reads the same for both.

Merge contract: ``merge()`` writes the adapted weight into ``base_layer.weight`` and keeps the
pretrained weight aside, so ``unmerge()`` restores it bit for bit; while merged, the forward pass
is the base layer's alone. Everything an adapter needs at run time is a registered parameter or a
persistent buffer; anything derived (norms, residual kernels) is recomputed in the forward pass, so
``load_state_dict`` can never leave stale derived state behind.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_peft.config import PeftConfig

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def check_adaptable(layer: nn.Module, method: str, where: str = "") -> None:
    """Raise a ValueError saying why ``layer`` cannot take an adapter of ``method``."""
    at = f" at {where}" if where else ""
    if not isinstance(layer, _CONV_TYPES + _TRANSPOSED_TYPES):
        raise ValueError(
            f"{method}: expected a Conv1d/2d/3d or ConvTranspose1d/2d/3d layer{at}, got {type(layer).__name__}"
        )
    if layer.groups != 1:
        raise ValueError(
            f"{method}: grouped convolutions (groups={layer.groups}{at}) are not supported: their kernel is "
            "not one Cout x (Cin*K) matrix. Leave this layer out of the placement or use Finetune."
        )
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        raise ValueError(
            f"{method}: padding_mode={layer.padding_mode!r}{at} is not supported (only 'zeros', as in nnU-Net)"
        )
    if isinstance(layer.padding, str):
        raise ValueError(f"{method}: string padding {layer.padding!r}{at} is not supported; use explicit padding")


class ConvAdapter(nn.Module):
    """A frozen convolution (``base_layer``) with a trainable update; subclasses define the update."""

    def __init__(self, base_layer: nn.Module, config: PeftConfig) -> None:
        super().__init__()
        check_adaptable(base_layer, config.method)
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.method = config.method
        self.rank = config.rank
        self.scaling = config.scaling
        self.forward_mode = config.forward_mode
        self.transposed = isinstance(base_layer, _TRANSPOSED_TYPES)
        self.ndim = base_layer.weight.dim() - 2
        w = base_layer.weight
        self.out_channels, self.in_channels = (w.shape[1], w.shape[0]) if self.transposed else (w.shape[0], w.shape[1])
        self.kernel_size: tuple[int, ...] = tuple(w.shape[2:])
        self.merged = False
        self._unmerged_weight: torch.Tensor | None = None

    # ----------------------------------------------------------------- layout
    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def conv_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def to_conv_layout(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.transpose(0, 1) if self.transposed else weight

    from_conv_layout = to_conv_layout  # the swap is its own inverse

    def base_weight(self) -> torch.Tensor:
        """The pretrained kernel in conv layout (the stored copy while merged)."""
        w = self._unmerged_weight if self.merged else self.base_layer.weight
        return self.to_conv_layout(w)

    # ------------------------------------------------------- functional convs
    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, **overrides) -> torch.Tensor:
        """The base layer's operation with another kernel (conv layout) and optional geometry overrides."""
        b = self.base_layer
        kw = dict(stride=b.stride, padding=b.padding, dilation=b.dilation, groups=1)
        kw.update(overrides)
        if self.transposed:
            kw.setdefault("output_padding", b.output_padding)
            return _CONV_T_FN[self.ndim](x, weight.transpose(0, 1), bias, **kw)
        return _CONV_FN[self.ndim](x, weight, bias, **kw)

    def pointwise(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """A 1x1 convolution with a ``(out, in)`` matrix, for channel mixing after the base geometry."""
        return _CONV_FN[self.ndim](x, matrix.reshape(*matrix.shape, *([1] * self.ndim)))

    # -------------------------------------------------------------- interface
    def delta_weight(self) -> torch.Tensor:
        """The update ``dW`` in conv layout."""
        raise NotImplementedError

    def adapted_weight(self) -> torch.Tensor:
        """``W0 + dW`` in conv layout (DoRA re-normalises it)."""
        return self.base_weight() + self.delta_weight()

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unmerged forward pass in the layer's forward mode."""
        return self.conv(x, self.adapted_weight(), self.base_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        return self.adapter_forward(x)

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        for name, p in self.named_parameters():
            if not name.startswith("base_layer."):
                yield p

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.adapter_parameters())

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        merged = self.from_conv_layout(self.adapted_weight()).to(self.base_layer.weight.dtype)
        self._unmerged_weight = self.base_layer.weight.detach().clone()
        self.base_layer.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"method={self.method}, rank={self.rank}, scaling={self.scaling:g}, forward_mode={self.forward_mode}"
