"""The shared base of every adapter layer: a frozen layer plus a trainable update.

The frozen layer is a convolution, a transposed convolution or a Linear; its kind
(``nnunet_peft.layers.kinds``) is chosen at construction and hides the difference, so each method
family is one class. Weights are handled in *conv layout* ``(Cout, Cin, k1, ..., kd)`` throughout
(a Linear's ``(out, in)`` is that layout with no kernel axes; a transposed convolution's
``(Cin, Cout, k...)`` is swapped on the way in and out), which is how docs/METHODS.md (section 1)
writes every formula.

Merge contract: ``merge()`` writes the adapted weight into ``base_layer.weight`` and keeps the
pretrained weight aside, so ``unmerge()`` restores it bit for bit; while merged, the forward pass
is the base layer's alone. Everything an adapter needs at run time is a registered parameter or a
persistent buffer; anything derived (norms, residual kernels) is recomputed in the forward pass, so
``load_state_dict`` can never leave stale derived state behind.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from nnunet_peft.config import AUTO_MODE, PeftConfig
from nnunet_peft.layers.kinds import ADAPTABLE_TYPES, LINEAR_TYPES, layer_kind


def check_adaptable(layer: nn.Module, method: str, where: str = "") -> None:
    """Raise a ValueError saying why ``layer`` cannot take an adapter of ``method``."""
    at = f" at {where}" if where else ""
    if not isinstance(layer, ADAPTABLE_TYPES):
        raise ValueError(
            f"{method}: expected a Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear layer{at}, got {type(layer).__name__}"
        )
    if isinstance(layer, LINEAR_TYPES):
        return
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


class AdapterLayer(nn.Module):
    """A frozen layer (``base_layer``) with a trainable update; subclasses define the update."""

    def __init__(self, base_layer: nn.Module, config: PeftConfig) -> None:
        super().__init__()
        check_adaptable(base_layer, config.method)
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.method = config.method
        self.rank = config.rank
        self.scaling = config.scaling
        # "auto" leaves the choice to nnunet_peft.mode_tuning; until it runs, the method's untuned mode
        self.tunable_modes: tuple[str, ...] = config.spec.forward_modes if config.forward_mode == AUTO_MODE else ()
        self.forward_mode = config.spec.untuned_mode if self.tunable_modes else config.forward_mode
        self.kind = layer_kind(base_layer)
        self.transposed = self.kind.transposed
        self.ndim = self.kind.ndim
        self.out_channels, self.in_channels = self.kind.out_channels, self.kind.in_channels
        self.kernel_size: tuple[int, ...] = self.kind.kernel_size
        self.merged = False
        self._unmerged_weight: torch.Tensor | None = None

    # ----------------------------------------------------------------- layout
    @property
    def kernel_numel(self) -> int:
        return self.kind.kernel_numel

    @property
    def conv_shape(self) -> tuple[int, ...]:
        return self.kind.conv_shape

    def to_conv_layout(self, weight: torch.Tensor) -> torch.Tensor:
        return self.kind.to_conv_layout(weight)

    def from_conv_layout(self, weight: torch.Tensor) -> torch.Tensor:
        return self.kind.from_conv_layout(weight)

    def base_weight(self) -> torch.Tensor:
        """The pretrained weight in conv layout (the stored copy while merged)."""
        w = self._unmerged_weight if self.merged else self.base_layer.weight
        return self.to_conv_layout(w)

    # ------------------------------------------------------ the layer's maps
    def base_op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, **overrides) -> torch.Tensor:
        """The base layer's operation with another weight (conv layout): a convolution with the base
        geometry (``overrides`` change it), or ``F.linear`` for a Linear."""
        return self.kind.apply(x, weight, bias, **overrides)

    def pointwise(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Channel mixing with an ``(out, in)`` matrix after the base geometry: a 1x1 convolution, or a
        matrix product on the last axis for a Linear."""
        return self.kind.pointwise(x, matrix)

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """A per-output-channel vector shaped to broadcast against the output."""
        return self.kind.channel_view(v)

    # -------------------------------------------------------------- interface
    def delta_weight(self) -> torch.Tensor:
        """The update ``dW`` in conv layout."""
        raise NotImplementedError

    def adapted_weight(self) -> torch.Tensor:
        """``W0 + dW`` in conv layout (DoRA re-normalises it)."""
        return self.base_weight() + self.delta_weight()

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unmerged forward pass in the layer's forward mode."""
        return self.base_op(x, self.adapted_weight(), self.base_layer.bias)

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


# the name the library had while it adapted convolutions only; kept for code that imports it
ConvAdapter = AdapterLayer
