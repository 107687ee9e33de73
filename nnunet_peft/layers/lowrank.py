"""The low-rank family: LoRA-C, convLoRA, CP-LoRA and their DoRA variants (docs/METHODS.md).

Each class defines the update ``dW`` (``delta_weight``) and, where the factors form a chain of
convolutions, ``chain`` (the update's output computed without building ``dW``). DoRA is a flag of
the shared base: the magnitude re-normalisation commutes with the layer's operation per output
channel, so it applies to every forward mode. ``projection_factors`` writes the update as
``s * B @ A`` with a rank-``r`` inner dimension where the method has one, which the projected mode
(``nnunet_peft.layers.projected``) needs. On a Linear layer (``K = 1``, no kernel axes) the
same classes compute LoRA, with convLoRA equal to LoRA-C and CP-LoRA a rank-``r`` product
``U_out U_in^T`` (docs/METHODS.md, "Linear layers").
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nnunet_peft.config import PeftConfig
from nnunet_peft.layers.base import AdapterLayer
from nnunet_peft.layers.projected import Geometry, projected_lowrank


class LowRankAdapter(AdapterLayer):
    """Shared forward and DoRA logic of the low-rank family."""

    def __init__(self, base_layer: nn.Module, config: PeftConfig, init_weights: bool = True) -> None:
        super().__init__(base_layer, config)
        self.dora = config.uses_dora
        self.dora_eps = config.dora_eps
        if self.dora:
            self.dora_magnitude = nn.Parameter(self._column_norm(self.base_weight()).detach().clone())

    @staticmethod
    def _column_norm(weight: torch.Tensor) -> torch.Tensor:
        return weight.flatten(1).norm(dim=1)

    def dora_scale(self, combined: torch.Tensor) -> torch.Tensor:
        # The norm is detached as in the DoRA paper (sec. 4.3): the magnitude learns the scale, and
        # no second graph through the kernel is kept. The floor keeps all-zero channels finite.
        norm = self._column_norm(combined).detach().clamp_min(self.dora_eps)
        return self.dora_magnitude / norm

    def adapted_weight(self) -> torch.Tensor:
        combined = self.base_weight() + self.delta_weight()
        if not self.dora:
            return combined
        scale = self.dora_scale(combined)
        return combined * scale.reshape(-1, *([1] * (combined.dim() - 1)))

    def chain(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def projection_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A)`` with ``dW = s * B @ A``: ``B`` is ``Cout x r``, ``A`` an ``r x Cin x k...`` kernel bank."""
        raise NotImplementedError

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        # The chain and the projected mode only pay off in training, by avoiding the kernel's weight gradient;
        # in eval mode (validation, prediction) one convolution with the rebuilt kernel costs what a merged
        # network costs.
        if self.forward_mode == "reconstruct" or not self.training:
            return super().adapter_forward(x)
        if self.forward_mode == "projected":
            b, a = self.projection_factors()
            return projected_lowrank(x, self.base_weight(), self.base_layer.bias, b, a, Geometry.of(self.base_layer),
                                     self.scaling, self.dora_magnitude if self.dora else None, self.dora_eps)
        y = self.base_layer(x) + self.chain(x)
        if not self.dora:
            return y
        # scale * (y - bias) + bias, written as a correction that is exactly zero while scale == 1,
        # so that the adapted layer reproduces the pretrained one bit for bit at initialisation
        bias = self.base_layer.bias
        core = y if bias is None else y - self.channel_view(bias)
        scale = self.dora_scale(self.base_weight() + self.delta_weight())
        return y + core * self.channel_view(scale - 1)


class LoRACAdapter(LowRankAdapter):
    """LoRA-C: the whole kernel as one ``Cout x (Cin*K)`` matrix, ``dW = s * B @ A``.

    As a chain: a convolution with the base geometry from ``Cin`` to ``r`` channels (``A``), then a
    1x1 convolution to ``Cout`` (``B``). On a Linear this is LoRA: ``x A^T B^T`` on the last axis.
    """

    def __init__(self, base_layer: nn.Module, config: PeftConfig, init_weights: bool = True) -> None:
        super().__init__(base_layer, config, init_weights)
        r = config.rank
        self.lora_A = nn.Parameter(torch.zeros(r, self.in_channels * self.kernel_numel))
        self.lora_B = nn.Parameter(torch.zeros(self.out_channels, r))
        if init_weights:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A).reshape(self.conv_shape) * self.scaling

    def chain(self, x: torch.Tensor) -> torch.Tensor:
        down = self.base_op(x, self.lora_A.reshape(self.rank, self.in_channels, *self.kernel_size))
        return self.pointwise(down, self.lora_B * self.scaling)

    def projection_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_B, self.lora_A.reshape(self.rank, self.in_channels, *self.kernel_size)


class ConvLoRAAdapter(LowRankAdapter):
    """convLoRA (loralib's ConvLoRA in kernel units): ``dW = s * reshape(B @ A, W0.shape)``.

    ``A: (r*k1) x (Cin*k1)``, ``B: (Cout*k2*...*kd) x (r*k1)``. The reshape interleaves kernel
    positions with channels, so the update has no chain form; it is always reconstructed. A Linear
    has no kernel axis (``k1 = 1``): the factors are LoRA-C's.
    """

    def __init__(self, base_layer: nn.Module, config: PeftConfig, init_weights: bool = True) -> None:
        super().__init__(base_layer, config, init_weights)
        k1 = self.kernel_size[0] if self.kernel_size else 1
        rest = math.prod(self.kernel_size[1:])
        r = config.rank
        self.lora_A = nn.Parameter(torch.zeros(r * k1, self.in_channels * k1))
        self.lora_B = nn.Parameter(torch.zeros(self.out_channels * rest, r * k1))
        if init_weights:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A).reshape(self.conv_shape) * self.scaling


class CPLoRAAdapter(LowRankAdapter):
    """CP-LoRA: ``dW[o,i,x1..xd] = s * sum_q U_out[o,q] U_in[i,q] U_1[x1,q] ... U_d[xd,q]``.

    The weights ``lam`` of a CP decomposition are folded into the factors (they are redundant
    with the columns' scale), so the trainable count is ``r * (Cout + Cin + k1 + ... + kd)``.
    As a chain: 1x1 projection to ``r`` channels, one depthwise 1-D convolution per spatial axis
    carrying that axis's stride, padding and dilation, then a 1x1 projection to ``Cout``. A Linear
    has no spatial factor: ``dW = s * U_out U_in^T``, and the chain is two matrix products.
    """

    def __init__(self, base_layer: nn.Module, config: PeftConfig, init_weights: bool = True) -> None:
        super().__init__(base_layer, config, init_weights)
        r = config.rank
        self.cp_out = nn.Parameter(torch.zeros(self.out_channels, r))
        self.cp_in = nn.Parameter(torch.zeros(self.in_channels, r))
        self.cp_spatial = nn.ParameterList(nn.Parameter(torch.zeros(k, r)) for k in self.kernel_size)
        if init_weights:
            self._init_factors(config.cp_init)
        self._einsum = self._delta_equation(self.ndim)
        self._bank_einsum = self._bank_equation(self.ndim)

    @staticmethod
    def _delta_equation(ndim: int) -> str:
        axes = "abcdefgh"[:ndim]
        return ",".join(["oq", "iq", *[f"{a}q" for a in axes]]) + f"->oi{axes}"

    @staticmethod
    def _bank_equation(ndim: int) -> str:
        axes = "abcdefgh"[:ndim]
        return ",".join(["iq", *[f"{a}q" for a in axes]]) + f"->qi{axes}"

    @torch.no_grad()
    def _init_factors(self, cp_init: str) -> None:
        factors = [self.cp_in, *self.cp_spatial]
        if cp_init == "parafac":
            from nnunet_peft.layers.cp_init import parafac_factors

            for f, value in zip(factors, parafac_factors(self.base_weight(), self.rank)[1:]):
                f.copy_(value)
        else:
            for f in factors:
                f.normal_()
        for f in factors:  # unit-scale columns, so the scaling s alone sets the update's size
            f.div_(f.norm(dim=0, keepdim=True).clamp_min(1e-12))

    def delta_weight(self) -> torch.Tensor:
        return torch.einsum(self._einsum, self.cp_out, self.cp_in, *self.cp_spatial) * self.scaling

    def projection_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        # A[q] = U_in[:, q] (x) U_1[:, q] (x) ... : r separable kernels, built small; autograd carries dA to the factors
        return self.cp_out, torch.einsum(self._bank_einsum, self.cp_in, *self.cp_spatial)

    def chain(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base_layer
        h = self.pointwise(x, self.cp_in.t())
        out = self.cp_out * self.scaling
        for axis, factor in enumerate(self.cp_spatial):
            k, stride, pad = factor.shape[0], b.stride[axis], b.padding[axis]
            extra = b.output_padding[axis] if self.transposed else 0
            if k == 1 and stride == 1 and pad == 0 and extra == 0:
                out = out * factor[0]  # a 1-wide axis is a per-channel scale: fold it into the output
                continue
            h = self._depthwise_along(h, factor, axis)
        return self.pointwise(h, out)

    def _depthwise_along(self, h: torch.Tensor, factor: torch.Tensor, axis: int) -> torch.Tensor:
        b, d = self.base_layer, self.ndim

        def along(value, other):
            return tuple(value if a == axis else other for a in range(d))

        shape = [self.rank, 1] + [1] * d
        shape[2 + axis] = factor.shape[0]
        kernel = factor.t().reshape(shape)
        geometry = dict(
            stride=along(b.stride[axis], 1), padding=along(b.padding[axis], 0),
            dilation=along(b.dilation[axis], 1), groups=self.rank,
        )
        if self.transposed:
            geometry["output_padding"] = along(b.output_padding[axis], 0)
            # depthwise: the transposed weight layout (in=r, out/groups=1, ...) has the same shape
            return self.base_op(h, kernel.transpose(0, 1), **geometry)
        return self.base_op(h, kernel, **geometry)
