"""The projected forward mode's autograd Function against plain autograd through the rebuilt kernel.

For every layer kind (1-D/2-D/3-D convolutions with stride, padding, dilation, anisotropic kernels;
transposed convolutions with output padding; Linear on tokens and on channels-last maps) the
Function's output and its gradients for the input, both factors, the DoRA magnitude and the bias must
be those of one stock convolution with ``c * (W0 + s * B @ A)``, the norm in ``c`` detached as the
adapters detach it; and the full ``Cout x Cin x K`` weight gradient must never be computed.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_peft.layers import projected
from nnunet_peft.layers.projected import Geometry, projected_lowrank

# (id, factory, input shape)
LAYERS = [
    ("conv1d-k3-pad", lambda: nn.Conv1d(3, 4, 3, padding=1), (2, 3, 7)),
    ("conv2d-k3-s2", lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (2, 3, 6, 7)),
    ("conv2d-k3x1-dil2-nobias", lambda: nn.Conv2d(3, 4, (3, 1), padding=(2, 0), dilation=(2, 1), bias=False),
     (1, 3, 6, 5)),
    ("conv3d-k133-s122", lambda: nn.Conv3d(2, 3, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (1, 2, 2, 5, 4)),
    ("convT2d-k3-s2-outpad", lambda: nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), (2, 4, 3, 4)),
    ("convT3d-k2-s2-nobias", lambda: nn.ConvTranspose3d(3, 2, 2, stride=2, bias=False), (1, 3, 2, 3, 2)),
    ("linear-tokens", lambda: nn.Linear(4, 5), (2, 3, 4)),
    ("linear-channels-last-map", lambda: nn.Linear(3, 4, bias=False), (1, 2, 3, 2, 3)),
]
IDS = [name for name, _, _ in LAYERS]
RANK, SCALING = 2, 0.7


def conv_layout(layer: nn.Module) -> torch.Tensor:
    w = layer.weight
    return w.transpose(0, 1) if isinstance(layer, nn.modules.conv._ConvTransposeNd) else w


def reference(layer, x, bias, B, A, magnitude, eps=1e-6, offset=None):
    """Plain autograd: rebuild the kernel, one stock operation of the layer's own type."""
    base = conv_layout(layer)
    v = base + (B @ A.reshape(RANK, -1)).reshape(base.shape) * SCALING
    if offset is not None:
        v = v - offset
    if magnitude is not None:
        c = magnitude / v.flatten(1).norm(dim=1).detach().clamp_min(eps)
        v = v * c.reshape(-1, *([1] * (v.dim() - 1)))
    if isinstance(layer, nn.Linear):
        return F.linear(x, v, bias)
    ndim = v.dim() - 2
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[ndim]
        return conv_t(x, v.transpose(0, 1), bias, layer.stride, layer.padding, layer.output_padding, 1, layer.dilation)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ndim]
    return conv(x, v, bias, layer.stride, layer.padding, layer.dilation)


def make(factory, shape, dtype, dora: bool, seed: int = 0):
    torch.manual_seed(seed)
    layer = factory().to(dtype).requires_grad_(False)
    base = conv_layout(layer)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    B = torch.randn(base.shape[0], RANK, dtype=dtype, requires_grad=True)
    A = torch.randn(RANK, *base.shape[1:], dtype=dtype, requires_grad=True)
    m = (torch.rand(base.shape[0], dtype=dtype) + 0.5).requires_grad_(True) if dora else None
    bias = None if layer.bias is None else (torch.randn_like(layer.bias)).requires_grad_(True)
    return layer, x, bias, B, A, m


def leaves(*tensors):
    return [t for t in tensors if t is not None]


def grads_both_ways(layer, x, bias, B, A, m, seed=3):
    geo = Geometry.of(layer)
    y = projected_lowrank(x, conv_layout(layer), bias, B, A, geo, SCALING, m)
    y_ref = reference(layer, x, bias, B, A, m)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    ours = torch.autograd.grad(y, leaves(x, bias, B, A, m), g)
    theirs = torch.autograd.grad(y_ref, leaves(x, bias, B, A, m), g)
    return y, y_ref, ours, theirs


@pytest.mark.parametrize(("name", "factory", "shape"), LAYERS, ids=IDS)
@pytest.mark.parametrize("dora", [False, True], ids=["lowrank", "dora"])
def test_output_and_gradients_equal_autograd_through_the_rebuilt_kernel(name, factory, shape, dora):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        layer, x, bias, B, A, m = make(factory, shape, dtype, dora)
        y, y_ref, ours, theirs = grads_both_ways(layer, x, bias, B, A, m)
        assert y.dtype == dtype
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        for which, a, b in zip(["x", "bias", "B", "A", "m"] if bias is not None else ["x", "B", "A", "m"], ours, theirs):
            assert a.shape == b.shape and a.dtype == b.dtype, which
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()), msg=which)


@pytest.mark.parametrize(("name", "factory", "shape"), LAYERS, ids=IDS)
def test_gradcheck_in_float64(name, factory, shape):
    layer, x, bias, B, A, m = make(factory, shape, torch.float64, dora=True)
    geo, base = Geometry.of(layer), conv_layout(layer)
    # every input of the plain low-rank form
    assert torch.autograd.gradcheck(lambda *t: projected_lowrank(t[0], base, t[1] if bias is not None else None,
                                                                 t[-2], t[-1], geo, SCALING), leaves(x, bias, B, A),
                                    fast_mode=True)
    # DoRA's norm is detached, so finite differences in B or A disagree with it by design: check x, m, bias
    # here, and B and A against autograd above
    fixed_b, fixed_a = B.detach(), A.detach()
    assert torch.autograd.gradcheck(
        lambda *t: projected_lowrank(t[0], base, t[1] if bias is not None else None, fixed_b, fixed_a, geo, SCALING,
                                     t[-1]), leaves(x, bias, m), fast_mode=True)


def test_cp_factors_receive_their_gradients_through_the_kernel_bank():
    """CP-LoRA: ``A[q] = U_in[:, q] (x) U_1[:, q] (x) U_2[:, q]`` built outside, ``B = U_out``."""
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1).double().requires_grad_(False)
    factors = [torch.randn(n, RANK, dtype=torch.float64, requires_grad=True) for n in (4, 3, 3, 2)]
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)

    def run(fn):
        u_out, u_in, u1, u2 = factors
        bank = torch.einsum("iq,aq,bq->qiab", u_in, u1, u2)
        return fn(bank, u_out)

    y = run(lambda bank, u_out: projected_lowrank(x, layer.weight, layer.bias, u_out, bank, Geometry.of(layer), SCALING))
    y_ref = run(lambda bank, u_out: reference(layer, x, layer.bias, u_out, bank, None))
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, *factors], g), torch.autograd.grad(y_ref, [x, *factors], g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_zero_magnitude_channel_with_a_zero_pretrained_kernel_is_exact_and_finite():
    """DoRA starts ``m = ||W0||_c``: a zero pretrained channel has ``m = 0`` and its ``c = 0`` output
    cannot be divided back; its magnitude gradient comes from the factors' part instead."""
    layer, x, bias, B, A, m = make(LAYERS[1][1], LAYERS[1][2], torch.float64, dora=True)
    with torch.no_grad():
        layer.weight[0].zero_()
        m[0] = 0.0
    y, y_ref, ours, theirs = grads_both_ways(layer, x, bias, B, A, m)
    torch.testing.assert_close(y, y_ref)
    gm, gm_ref = ours[-1], theirs[-1]
    assert torch.isfinite(gm).all() and gm[0] != 0
    torch.testing.assert_close(gm, gm_ref, rtol=1e-12, atol=1e-12)


class ConvolutionBackwardLog(TorchDispatchMode):
    """Every aten.convolution_backward: its output mask and weight shape."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[list[bool], tuple[int, ...], bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.calls.append((list(args[-1]), tuple(args[2].shape), bool(args[7])))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("name", "factory", "shape"), [g for g in LAYERS if not g[0].startswith("linear")],
                         ids=[g[0] for g in LAYERS if not g[0].startswith("linear")])
@pytest.mark.parametrize("dora", [False, True], ids=["lowrank", "dora"])
def test_the_full_weight_gradient_is_never_requested(name, factory, shape, dora):
    layer, x, bias, B, A, m = make(factory, shape, torch.float32, dora)
    out_axis = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0

    def weight_grads(fn):
        with ConvolutionBackwardLog() as log:
            y = fn()
            torch.autograd.grad(y.square().sum(), leaves(x, B, A, m))
        return [(mask, w) for mask, w, _ in log.calls if mask[1]], log.calls

    ours, calls = weight_grads(lambda: projected_lowrank(x, conv_layout(layer), bias, B, A, Geometry.of(layer),
                                                         SCALING, m))
    assert [w[out_axis] for _, w in ours] == [RANK]  # exactly one weight gradient, with r output channels
    assert sum(mask[0] for mask, _, _ in calls) == 1 and not any(mask[2] for mask, _, _ in calls)
    # the check can fail: plain autograd through the rebuilt kernel asks for the full one
    theirs, _ = weight_grads(lambda: reference(layer, x, bias, B, A, m))
    assert [w[out_axis] for _, w in theirs] == [conv_layout(layer).shape[0]]


def test_no_input_gradient_when_the_input_needs_none():
    layer, x, bias, B, A, m = make(LAYERS[3][1], LAYERS[3][2], torch.float32, dora=False)
    x = x.detach()
    with ConvolutionBackwardLog() as log:
        y = projected_lowrank(x, layer.weight, bias, B, A, Geometry.of(layer), SCALING)
        y.sum().backward()
    assert [mask for mask, _, _ in log.calls] == [[False, True, False]]
    assert B.grad is not None and A.grad is not None and bias.grad is not None


class TinyAdapted(nn.Module):
    """Two adapted convolutions and a Linear head, the projected Function in each."""

    def __init__(self, dora: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.convs = nn.ModuleList([nn.Conv3d(2, 4, 3, padding=1), nn.ConvTranspose3d(4, 3, 2, stride=2)])
        self.head = nn.Linear(3, 2)
        self.requires_grad_(False)
        self.factors = nn.ParameterList()
        for layer in [*self.convs, self.head]:
            base = conv_layout(layer)
            self.factors.append(nn.Parameter(torch.randn(base.shape[0], RANK) * 0.1))
            self.factors.append(nn.Parameter(torch.randn(RANK, *base.shape[1:]) * 0.1))
            if dora:
                self.factors.append(nn.Parameter(base.flatten(1).norm(dim=1) * 1.1))
        self.dora = dora

    def forward(self, x):
        step = 3 if self.dora else 2
        for i, layer in enumerate([*self.convs, self.head]):
            f = self.factors[step * i: step * (i + 1)]
            if layer is self.head:
                x = x.movedim(1, -1)
            x = projected_lowrank(x, conv_layout(layer), layer.bias, f[0], f[1], Geometry.of(layer), SCALING,
                                  f[2] if self.dora else None)
            x = F.leaky_relu(x)
        return x


@pytest.mark.parametrize("dora", [False, True], ids=["lowrank", "dora"])
def test_compiled_gradients_equal_eager(dora):
    net = TinyAdapted(dora)
    x = torch.randn(2, 2, 3, 4, 3, requires_grad=True)

    def grads(model):
        out = model(x)
        return [out.detach(), *torch.autograd.grad(out.square().mean(), [x, *net.factors])]

    eager = grads(net)
    compiled = grads(torch.compile(net, backend="aot_eager", fullgraph=True))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dora", [False, True], ids=["lowrank", "dora"])
def test_under_autocast_the_op_runs_in_the_autocast_dtype_and_gradients_keep_theirs(dora):
    net = TinyAdapted(dora)
    x = torch.randn(2, 2, 3, 4, 3, requires_grad=True)
    full = [torch.autograd.grad(net(x).square().mean(), [x, *net.factors])]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
    low = torch.autograd.grad(out.float().square().mean(), [x, *net.factors])
    for a, b in zip(low, full[0]):
        assert a.dtype == b.dtype == torch.float32
        assert ((a - b).norm() / b.norm()).item() < 3e-2


def test_bad_inputs_are_refused():
    layer = nn.Conv2d(3, 4, 3)
    x, B, A = torch.randn(1, 3, 5, 5), torch.zeros(4, 2), torch.zeros(2, 3, 3, 3)
    with pytest.raises(ValueError, match="requires a gradient"):
        projected_lowrank(x, layer.weight, None, B, A, Geometry.of(layer), 1.0)
    layer.requires_grad_(False)
    with pytest.raises(ValueError, match="do not multiply"):
        projected_lowrank(x, layer.weight, None, B, torch.zeros(2, 3, 3, 2), Geometry.of(layer), 1.0)
    with pytest.raises(ValueError, match="groups=1"):
        Geometry.of(nn.Conv2d(4, 4, 3, groups=2))
    assert projected.Geometry.of(nn.Linear(2, 3)).linear


def test_offset_keeps_hyps_identity_bit_exact_and_its_gradients():
    """HyPS: ``W = W0 + (s * B @ A - s * B0 @ A0)``; at init (``B, A = B0, A0``) the output is the frozen layer's."""
    layer, x, bias, B, A, _ = make(LAYERS[4][1], LAYERS[4][2], torch.float32, dora=False)
    base = conv_layout(layer)
    offset = ((B @ A.reshape(RANK, -1)).reshape(base.shape) * SCALING).detach()
    y = projected_lowrank(x, base, layer.bias, B, A, Geometry.of(layer), SCALING, offset=offset)
    assert torch.equal(y, layer(x))
    with torch.no_grad():
        B.add_(0.1)
    y = projected_lowrank(x, base, layer.bias, B, A, Geometry.of(layer), SCALING, offset=offset)
    y_ref = reference(layer, x, layer.bias, B, A, None, offset=offset)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, B, A], g), torch.autograd.grad(y_ref, [x, B, A], g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
