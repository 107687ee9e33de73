"""The projected forward mode: one layer operation forward, factor gradients without the weight gradient.

An adapter whose update is ``dW = s * B @ A`` (``B: Cout x r``, ``A`` an ``r x Cin x k...`` kernel
bank, conv layout) can run as

* forward: one convolution (or ``F.linear``) with the rebuilt kernel ``W = W0 + dW``, as the
  reconstruct mode does;
* backward: the input gradient with that kernel, and the factors' gradients from the output
  gradient ``g`` projected onto the rank-``r`` subspace, never forming the full weight gradient
  ``G = conv_weight_grad(x, g)`` (a ``Cout x Cin x K`` tensor reduced over every position):

  ``dA = s * conv_weight_grad(x, B^T g)``   (a weight gradient with ``r`` output channels)
  ``dB = s * sum_positions g (x) conv(x, A)``   (a convolution to ``r`` channels and a reduction)

  which is ``2 + 2r/Cout`` convolution-units per layer, against ``3`` for full fine-tuning and the
  reconstruct mode (which computes ``G`` and projects it) and ``2 + 3r/Cout`` for the chain.

The pattern covers every family whose update is a product with a rank-``r`` inner dimension:
LoRA-C (``A`` a free kernel bank), CP-LoRA (``A[q] = U_in[:, q] (x) U_1[:, q] (x) ... (x) U_d[:, q]``,
``B = U_out``: ``A`` is built from the small factors by autograd outside the Function, which
carries ``dA`` back to them), HyPS's parallel part (``W0`` replaced by the frozen residual), and DoRA
on top of either: ``W = c * V`` with ``V = W0 + dW`` and ``c = m / ||V||_c`` per output channel, the
norm detached as in ``LowRankAdapter.dora_scale``. Then ``dV = c * G``, so ``dB`` and ``dA`` are the
projections above with ``B`` replaced by ``c * B``, and ``dm = (sum g * conv(x, V)) / ||V||``, where
``conv(x, V) = (y - bias) / c`` is recovered from the output the forward already produced (saved,
not recomputed: the next layer usually holds it anyway). A channel with ``c == 0`` cannot be
recovered that way; its term is ``<W0_o, G_o> + s * sum_q B[o, q] (G A^T)[o, q]``, computed here
without the first part, which is exact for a channel whose pretrained kernel is zero, the only way
a magnitude starts at zero (``m = ||W0||_c``).

convLoRA (whose reshape interleaves kernel positions with channels) and the tensor methods (a
general update per layer) have no such inner dimension; they stay in reconstruct mode.

Autocast is handled by hand instead of with ``torch.amp.custom_fwd`` / ``custom_bwd``: those bind one
device type when the class is defined, and the Function must serve CPU and CUDA autocast alike.
The forward runs the convolution in the autocast dtype (saving the input in that dtype, as the
autocast convolution would), builds the kernel in the parameters' dtype, and the backward returns
each gradient in its input's dtype.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_peft.layers.kinds import CONVOLUTION_TYPES, TRANSPOSED_TYPES


class Geometry(NamedTuple):
    """What the projected Function needs of a frozen layer besides its weight (hashable, so that
    torch.compile treats it as a constant)."""

    linear: bool
    transposed: bool = False
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    output_padding: tuple[int, ...] = ()

    @classmethod
    def of(cls, layer: nn.Module) -> "Geometry":
        if isinstance(layer, nn.Linear):
            return cls(linear=True)
        if not isinstance(layer, CONVOLUTION_TYPES):
            raise ValueError(f"projected mode: expected a convolution, transposed convolution or Linear, got "
                             f"{type(layer).__name__}")
        if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ValueError(f"projected mode: {type(layer).__name__} must have groups=1, explicit padding and "
                             f"padding_mode='zeros' (got groups={layer.groups}, padding={layer.padding!r}, "
                             f"padding_mode={layer.padding_mode!r})")
        transposed = isinstance(layer, TRANSPOSED_TYPES)
        return cls(linear=False, transposed=transposed, stride=tuple(layer.stride), padding=tuple(layer.padding),
                   dilation=tuple(layer.dilation),
                   output_padding=tuple(layer.output_padding) if transposed else (0,) * len(layer.stride))


# ------------------------------------------------------------------------ the layer's operations
# Weights are in conv layout (Cout, Cin, k...) everywhere in this module; ``_stored`` swaps to a
# transposed convolution's (Cin, Cout, k...) right before aten sees it.

def _stored(weight: torch.Tensor, geo: Geometry) -> torch.Tensor:
    return weight.transpose(0, 1) if geo.transposed else weight


def _apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geo: Geometry) -> torch.Tensor:
    if geo.linear:
        return F.linear(x, weight, bias)
    return torch.ops.aten.convolution(x, _stored(weight, geo), bias, list(geo.stride), list(geo.padding),
                                      list(geo.dilation), geo.transposed, list(geo.output_padding), 1)


def _convolution_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geo: Geometry,
                          output_mask: list[bool]) -> tuple:
    """aten's convolution backward, conv layout in and out; a module-level name the tests watch."""
    return torch.ops.aten.convolution_backward(
        grad, x, _stored(weight, geo), None, list(geo.stride), list(geo.padding), list(geo.dilation),
        geo.transposed, list(geo.output_padding), 1, output_mask)


def _input_grad(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geo: Geometry) -> torch.Tensor:
    if geo.linear:
        return g @ weight
    return _convolution_backward(g, x, weight, geo, [True, False, False])[0]


def _weight_grad(x: torch.Tensor, g: torch.Tensor, like: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """The weight gradient of the operation for an output gradient ``g`` with ``like.shape[0]`` channels."""
    if geo.linear:
        return g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
    grad = _convolution_backward(g, x, like, geo, [False, True, False])[1]
    return grad.transpose(0, 1) if geo.transposed else grad


def _mix(g: torch.Tensor, matrix: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``matrix @ g`` over the channel axis: ``(r, Cout)`` applied at every position."""
    if geo.linear:
        return g @ matrix.t()
    return (matrix @ g.flatten(2)).reshape(g.shape[0], matrix.shape[0], *g.shape[2:])


def _outer_sum(g: torch.Tensor, z: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``sum over batch and positions of g (x) z``: ``(Cout, r)``."""
    if geo.linear:
        return g.reshape(-1, g.shape[-1]).t() @ z.reshape(-1, z.shape[-1])
    return (g.flatten(2) @ z.flatten(2).transpose(1, 2)).sum(0)


def _channel_sum(t: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Per-channel sums, accumulated in at least float32 (an fp16 sum over a whole batch overflows)."""
    dtype = torch.promote_types(t.dtype, torch.float32)
    if geo.linear:
        return t.reshape(-1, t.shape[-1]).sum(0, dtype=dtype)
    return t.transpose(0, 1).reshape(t.shape[1], -1).sum(1, dtype=dtype)


def _channel_view(v: torch.Tensor, like: torch.Tensor, geo: Geometry) -> torch.Tensor:
    return v if geo.linear else v.reshape(1, -1, *([1] * (like.dim() - 2)))


def _rows(v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (weight.dim() - 1)))


def rebuild(base: torch.Tensor, B: torch.Tensor, A: torch.Tensor, scaling: float, magnitude: torch.Tensor | None,
            eps: float, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``W``, and for DoRA the per-channel scale ``c`` and the clamped norm ``||V||``.

    The operations are the adapters' own (``base + (B @ A) * s``, HyPS's ``base + (P - P0)``), so that the
    kernel, and the output at initialisation, are bit-identical to the reconstruct mode's.
    """
    update = (B @ A.reshape(A.shape[0], -1)).reshape(base.shape) * scaling
    v = base + (update if offset is None else update - offset)
    if magnitude is None:
        return v, None, None
    norm = v.flatten(1).norm(dim=1).clamp_min(eps)
    c = magnitude / norm
    return v * _rows(c, v), c, norm


class ProjectedLowRank(torch.autograd.Function):
    """``y = op(x, c * (base + s * B @ A), bias)``; see the module docstring for the gradients."""

    @staticmethod
    def forward(ctx, x, base, bias, B, A, magnitude, offset, geo: Geometry, scaling: float, eps: float):
        device_type = x.device.type
        amp = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if amp else x.dtype
        with torch.autocast(device_type, enabled=False):
            weight, c, norm = rebuild(base, B, A, scaling, magnitude, eps, offset)
            x_c = x.to(dtype)
            y = _apply(x_c, weight.to(dtype), None if bias is None else bias.to(dtype), geo)
        ctx.geo, ctx.scaling, ctx.eps = geo, scaling, eps
        ctx.dora = magnitude is not None
        ctx.x_dtype = x.dtype
        # the output is saved only where DoRA's magnitude needs it, and it is the tensor the next layer keeps
        ctx.save_for_backward(x_c, base, bias, B, A, magnitude, offset, y if ctx.dora else None)
        return y

    @staticmethod
    def backward(ctx, g):
        x, base, bias, B, A, magnitude, offset, y = ctx.saved_tensors
        geo, s = ctx.geo, ctx.scaling
        need_x, _, need_bias, need_B, need_A, need_m = ctx.needs_input_grad[:6]
        gx = gbias = gB = gA = gm = None
        with torch.autocast(g.device.type, enabled=False):
            g = g.to(x.dtype)
            with torch.no_grad():
                weight, c, norm = rebuild(base, B, A, s, magnitude, ctx.eps, offset)
            if need_x:
                gx = _input_grad(g, x, weight.to(x.dtype), geo).to(ctx.x_dtype)
            # dV = c * G: the projections use c * B in place of B (c == 1 without DoRA)
            b_eff = B if c is None else B * c[:, None].to(B.dtype)
            if need_A:
                down = _mix(g, b_eff.t().to(g.dtype), geo)
                gA = (_weight_grad(x, down, A.to(x.dtype), geo).reshape(A.shape) * s).to(A.dtype)
            if need_B or need_m:
                z = _apply(x, A.to(x.dtype), None, geo)  # the rank-r activations conv(x, A)
                r_mat = _outer_sum(g, z, geo).to(B.dtype)  # G A^T without G
                if need_B:
                    gB = r_mat * s if c is None else r_mat * (s * c[:, None])
            if need_m:
                core = y if bias is None else y - _channel_view(bias.to(y.dtype), y, geo)
                inner = _channel_sum(g * core, geo).to(magnitude.dtype)  # <W_o, G_o> = c_o <V_o, G_o>
                nonzero = c != 0
                from_output = inner / torch.where(nonzero, c, torch.ones_like(c))
                from_factors = (B * r_mat).sum(1) * s  # <dW_o, G_o>; <W0_o, G_o> is 0 where W0_o = 0
                gm = torch.where(nonzero, from_output, from_factors) / norm
            if need_bias:
                gbias = _channel_sum(g, geo).to(bias.dtype)
        return gx, None, gbias, gB, gA, gm, None, None, None, None


def projected_lowrank(x: torch.Tensor, base: torch.Tensor, bias: torch.Tensor | None, B: torch.Tensor,
                      A: torch.Tensor, geometry: Geometry, scaling: float, magnitude: torch.Tensor | None = None,
                      eps: float = 1e-6, offset: torch.Tensor | None = None) -> torch.Tensor:
    """``op(x, W, bias)`` with ``W = W0 + s * B @ A`` (or its DoRA re-normalisation) in the projected mode.

    Args:
        x: the layer's input (channels on axis 1 for a convolution, last for a Linear).
        base: the frozen ``W0`` in conv layout ``(Cout, Cin, k...)``; it must not require a gradient
            (its gradient is the full weight gradient this mode exists to avoid).
        bias: the layer's bias or None.
        B: ``(Cout, r)``. A: ``(r, Cin, k...)`` in conv layout (``(r, Cin)`` for a Linear), or any
            tensor with ``r * Cin * K`` elements; built from smaller factors by autograd if it is not
            a leaf (CP-LoRA), which then carries ``dA`` back to them.
        geometry: ``Geometry.of(base_layer)``.
        scaling: ``s = alpha / r``.
        magnitude: DoRA's ``m`` (one per output channel), or None for plain low-rank.
        eps: floor of DoRA's column norm.
        offset: a frozen term subtracted from the update, ``W = W0 + (s * B @ A - offset)`` (HyPS: its
            initial principal part ``s * B0 @ A0``, so that the update is exactly zero at initialisation).
    """
    if base.requires_grad or (offset is not None and offset.requires_grad):
        raise ValueError("projected mode: the frozen weight requires a gradient; its gradient is the full weight "
                         "gradient this mode avoids. Freeze the base layer (or use forward_mode='reconstruct').")
    r = B.shape[1]
    if B.shape[0] != base.shape[0] or A.numel() != r * base[0].numel():
        raise ValueError(f"projected mode: factors B {tuple(B.shape)} and A {tuple(A.shape)} do not multiply to the "
                         f"weight {tuple(base.shape)} (conv layout) with rank {r}")
    if offset is not None and offset.shape != base.shape:
        raise ValueError(f"projected mode: offset {tuple(offset.shape)} must have the weight's shape {tuple(base.shape)}")
    A = A.reshape(r, *base.shape[1:])
    return ProjectedLowRank.apply(x, base, bias, B, A, magnitude, offset, geometry, float(scaling), float(eps))
