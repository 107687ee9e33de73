"""HyPS: a parallel SVD principal part plus a serial bottleneck adapter (docs/METHODS.md)."""
from __future__ import annotations

import math

import torch
from torch import nn

from nnunet_peft.config import PeftConfig
from nnunet_peft.layers.base import AdapterLayer
from nnunet_peft.layers.projected import Geometry, projected_lowrank


class HyPSAdapter(AdapterLayer):
    """``y = op(x, Q + s*B@A)``, then ``y <- y + s * Up(GELU(Down(y)))``.

    Parallel part: ``B @ A`` starts as the top-``r`` SVD part ``P`` of ``W0_(1)`` (split as
    ``U sqrt(S)`` and ``sqrt(S) V^T``); the residual ``Q = W0 - s*B0@A0`` is frozen. ``B0, A0`` are
    kept as buffers and ``Q`` is recomputed from them, so the adapter file stays small and
    reloading reproduces ``Q`` exactly. Serial part: 1x1 convolutions ``Cout -> d -> Cout`` (after a
    Linear layer, a Linear bottleneck on the last axis) with ``Up`` zero and ``Down`` random, the
    activation applied to activations (not to a zero weight, the reference code's defect), so both
    receive gradients from the second step on.

    ``merge()`` folds the parallel part into the kernel; the serial part cannot be folded and stays
    active, so a merged HyPS network is not a stock network (``merge_adapters`` refuses it).
    """

    def __init__(self, base_layer: nn.Module, config: PeftConfig, init_weights: bool = True) -> None:
        super().__init__(base_layer, config)
        r = config.rank
        d = config.serial_width or r
        cols = self.in_channels * self.kernel_numel
        if init_weights:
            b0, a0 = self._svd_split(self.base_weight().reshape(self.out_channels, cols), r, self.scaling)
        else:
            b0, a0 = torch.zeros(self.out_channels, r), torch.zeros(r, cols)
        dtype = base_layer.weight.dtype
        self.register_buffer("parallel_B0", b0.to(dtype))
        self.register_buffer("parallel_A0", a0.to(dtype))
        self.parallel_B = nn.Parameter(b0.to(dtype).clone())
        self.parallel_A = nn.Parameter(a0.to(dtype).clone())
        self.serial_down = nn.Parameter(torch.zeros(d, self.out_channels))
        self.serial_up = nn.Parameter(torch.zeros(self.out_channels, d))
        if init_weights:
            nn.init.kaiming_uniform_(self.serial_down, a=math.sqrt(5))
        self.act = nn.GELU()

    @staticmethod
    def _svd_split(w: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
        k = min(r, s.numel())
        root = (s[:k] / scaling).sqrt()
        b, a = torch.zeros(w.shape[0], r, dtype=torch.float64), torch.zeros(r, w.shape[1], dtype=torch.float64)
        # ranks above min(Cout, Cin*K) get zero extra columns: trainable, but empty at init
        b[:, :k], a[:k] = u[:, :k] * root, root[:, None] * vh[:k]
        return b, a

    def _product(self, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (b @ a).reshape(self.conv_shape) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return self._product(self.parallel_B, self.parallel_A) - self._product(self.parallel_B0, self.parallel_A0)

    def serial(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.pointwise(self.act(self.pointwise(y, self.serial_down)), self.serial_up * self.scaling)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forward_mode == "reconstruct" or not self.training:  # see LowRankAdapter
            y = self.base_op(x, self.adapted_weight(), self.base_layer.bias)
        elif self.forward_mode == "projected":
            # W0 + (s B A - s B0 A0), the reconstruct mode's own operations, so the identity at init stays exact
            y = projected_lowrank(x, self.base_weight(), self.base_layer.bias, self.parallel_B,
                                  self.parallel_A.reshape(self.rank, self.in_channels, *self.kernel_size),
                                  Geometry.of(self.base_layer), self.scaling,
                                  offset=self._product(self.parallel_B0, self.parallel_A0))
        else:
            residual = (self.base_weight() - self._product(self.parallel_B0, self.parallel_A0)).detach()
            down = self.base_op(x, self.parallel_A.reshape(self.rank, self.in_channels, *self.kernel_size))
            y = self.base_op(x, residual, self.base_layer.bias) + self.pointwise(down, self.parallel_B * self.scaling)
        return self.serial(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.serial(self.base_layer(x))
        return self.adapter_forward(x)
