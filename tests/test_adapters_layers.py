"""Adapter layers on their own, against the formulas of docs/METHODS.md written out independently.

Each layer's forward pass, in every forward mode, must equal one convolution (or ``F.linear``)
with ``W0 + dW`` where ``dW`` is computed here from the layer's factors by the specification's
formula, for plain and transposed convolutions with strides, padding, output padding,
dilation, anisotropic kernels and biases, and for Linear layers on token ``(B, N, C)`` and
channels-last ``(B, D, H, W, C)`` inputs. The tensor family is checked against the
Fourier-domain definition of the t-product, including a fused q/k/v projection.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapter_helpers import conv_layout_shape, perturb_
from nnunet_peft import METHODS, PeftConfig
from nnunet_peft.layers.hyps import HyPSAdapter
from nnunet_peft.layers.lowrank import ConvLoRAAdapter, CPLoRAAdapter, LoRACAdapter
from nnunet_peft.layers.tensor import LoRAPTGroup, TCURGroup, TensorGroupAdapter, t_product, t_transpose

LOWRANK = {"lora_c": LoRACAdapter, "dora_c": LoRACAdapter, "conv_lora": ConvLoRAAdapter,
           "conv_dora": ConvLoRAAdapter, "cp_lora": CPLoRAAdapter, "cp_dora": CPLoRAAdapter, "hyps": HyPSAdapter}

# (id, factory, input spatial shape): every geometry nnU-Net uses, and a few it could
GEOMETRIES = [
    ("conv2d-k3-s2-bias", lambda: nn.Conv2d(5, 6, 3, stride=2, padding=1), (9, 10)),
    ("conv2d-k3x1-dil2", lambda: nn.Conv2d(4, 3, (3, 1), padding=(2, 0), dilation=(2, 1), bias=False), (8, 7)),
    ("conv3d-k133-s122", lambda: nn.Conv3d(4, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (3, 8, 9)),
    ("conv3d-k3-s2", lambda: nn.Conv3d(3, 5, 3, stride=2, padding=1), (6, 7, 5)),
    ("convT2d-k2-s2", lambda: nn.ConvTranspose2d(6, 4, 2, stride=2), (5, 4)),
    ("convT2d-k3-s2-outpad", lambda: nn.ConvTranspose2d(5, 3, 3, stride=2, padding=1, output_padding=1, bias=False), (4, 5)),
    ("convT3d-k122-s122", lambda: nn.ConvTranspose3d(6, 4, (1, 2, 2), stride=(1, 2, 2)), (3, 4, 5)),
    ("convT3d-k3-s2-outpad", lambda: nn.ConvTranspose3d(5, 3, 3, stride=2, padding=1, output_padding=(1, 0, 1)), (3, 4, 3)),
    # a Linear's input is channels-last: the shape given is the leading axes, (B, N) or (B, D, H, W)
    ("linear-tokens-bias", lambda: nn.Linear(6, 5), (2, 7)),
    ("linear-3d-map-nobias", lambda: nn.Linear(4, 7, bias=False), (2, 3, 2, 4)),
    ("linear-qkv-bias", lambda: nn.Linear(4, 12), (3, 5)),
]
GEOMETRY_IDS = [g[0] for g in GEOMETRIES]
LAYER_METHOD_MODES = [(m, mode) for m in LOWRANK for mode in METHODS[m].forward_modes]


def make_base(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = factory().double()
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.normal_()
    return layer


def conv_with(base: nn.Module, x: torch.Tensor, weight_conv_layout: torch.Tensor) -> torch.Tensor:
    """``base``'s operation with another kernel: one stock convolution or ``F.linear``, the reference."""
    if isinstance(base, nn.Linear):
        return F.linear(x, weight_conv_layout, base.bias)
    reference = type(base)(**{**constructor_kwargs(base)}).double()
    with torch.no_grad():
        reference.weight.copy_(weight_conv_layout.transpose(0, 1) if isinstance(base, nn.modules.conv._ConvTransposeNd)
                               else weight_conv_layout)
        if base.bias is not None:
            reference.bias.copy_(base.bias)
    return reference(x)


def constructor_kwargs(base: nn.Module) -> dict:
    kw = dict(in_channels=base.in_channels, out_channels=base.out_channels, kernel_size=base.kernel_size,
              stride=base.stride, padding=base.padding, dilation=base.dilation, bias=base.bias is not None)
    if isinstance(base, nn.modules.conv._ConvTransposeNd):
        kw["output_padding"] = base.output_padding
    return kw


def reference_delta(layer: nn.Module, method: str) -> torch.Tensor:
    """``dW`` (conv layout) from the layer's factors by docs/METHODS.md's formulas."""
    s = layer.scaling
    shape = layer.conv_shape
    if method in ("lora_c", "dora_c"):
        return s * (layer.lora_B @ layer.lora_A).reshape(shape)
    if method in ("conv_lora", "conv_dora"):
        return s * (layer.lora_B @ layer.lora_A).reshape(shape)
    if method in ("cp_lora", "cp_dora"):
        full = torch.zeros(shape, dtype=torch.float64)
        for q in range(layer.rank):
            term = torch.outer(layer.cp_out[:, q], layer.cp_in[:, q])
            for u in layer.cp_spatial:
                term = term[..., None] * u[:, q]
            full = full + term
        return s * full
    if method == "hyps":
        return s * (layer.parallel_B @ layer.parallel_A - layer.parallel_B0 @ layer.parallel_A0).reshape(shape)
    raise AssertionError(method)


def reference_weight(layer: nn.Module, method: str) -> torch.Tensor:
    w0 = layer.to_conv_layout(layer.base_layer.weight).detach()
    w = w0 + reference_delta(layer, method)
    if "dora" in method:  # W = m * (W0 + dW) / ||W0 + dW||_c
        norm = w.flatten(1).norm(dim=1).clamp_min(layer.dora_eps)
        w = layer.dora_magnitude.reshape(-1, *[1] * (w.dim() - 1)) * w / norm.reshape(-1, *[1] * (w.dim() - 1))
    return w


def reference_forward(layer: nn.Module, method: str, x: torch.Tensor) -> torch.Tensor:
    y = conv_with(layer.base_layer, x, reference_weight(layer, method))
    if method == "hyps" and isinstance(layer.base_layer, nn.Linear):  # a Linear bottleneck on the last axis
        h = torch.einsum("dc,...c->...d", layer.serial_down, y)
        y = y + layer.scaling * torch.einsum("cd,...d->...c", layer.serial_up, F.gelu(h))
    elif method == "hyps":  # serial bottleneck: y + s * Up(GELU(Down(y))), 1x1 convolutions
        h = torch.einsum("dc,bc...->bd...", layer.serial_down, y)
        y = y + layer.scaling * torch.einsum("cd,bd...->bc...", layer.serial_up, F.gelu(h))
    return y


def make_input(base: nn.Module, spatial: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (*spatial, base.in_features) if isinstance(base, nn.Linear) else (2, base.in_channels, *spatial)
    return torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(("name", "factory", "spatial"), GEOMETRIES, ids=GEOMETRY_IDS)
@pytest.mark.parametrize(("method", "mode"), LAYER_METHOD_MODES, ids=[f"{m}-{o}" for m, o in LAYER_METHOD_MODES])
def test_layer_forward_equals_one_conv_with_the_specified_kernel(method, mode, name, factory, spatial):
    base = make_base(factory)
    x = make_input(base, spatial)
    stock = base(x)
    layer = LOWRANK[method](base, PeftConfig(method, rank=3, alpha=6, forward_mode=mode)).double()
    with torch.no_grad():
        tol = 1e-10 * stock.abs().max().item()
        assert (layer(x) - stock).abs().max().item() <= tol  # identity at init
        perturb_(list(layer.adapter_parameters()), seed=2, scale=0.3)
        expected = reference_forward(layer, method, x)
        assert (expected - stock).abs().max().item() > 1e-3  # the perturbation matters
        got = layer(x)
        got_eval = layer.eval()(x)  # eval mode (validation, prediction) always rebuilds the kernel
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-10 * expected.abs().max().item()
    assert (got_eval - expected).abs().max().item() <= 1e-10 * expected.abs().max().item()
    assert torch.allclose(layer.adapted_weight(), reference_weight(layer, method), rtol=0, atol=1e-12)


MERGE_GEOMETRIES = GEOMETRIES[:4] + GEOMETRIES[-3:-1]


@pytest.mark.parametrize(("name", "factory", "spatial"), MERGE_GEOMETRIES, ids=[g[0] for g in MERGE_GEOMETRIES])
@pytest.mark.parametrize("method", ["lora_c", "cp_dora", "hyps"])
def test_merge_and_unmerge_of_a_layer(method, name, factory, spatial):
    base = make_base(factory)
    original = base.weight.detach().clone()
    layer = LOWRANK[method](base, PeftConfig(method, rank=2)).double()
    perturb_(list(layer.adapter_parameters()), seed=3)
    x = make_input(base, spatial)
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        assert not torch.equal(base.weight, original)
        assert torch.allclose(layer(x), unmerged, rtol=0, atol=1e-10 * unmerged.abs().max().item())
        layer.unmerge()
    assert torch.equal(base.weight, original)
    assert torch.equal(layer(x), unmerged)


# ------------------------------------------------------------------------------ tensor family
def fourier_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The t-product by its definition: FFT along mode 3, slice-wise matrix products, inverse FFT."""
    fa, fb = torch.fft.fft(a.to(torch.complex128), dim=-1), torch.fft.fft(b.to(torch.complex128), dim=-1)
    return torch.fft.ifft(torch.einsum("ijl,jkl->ikl", fa, fb), dim=-1).real


def fourier_conj_transpose(a: torch.Tensor) -> torch.Tensor:
    """The t-transpose by its definition: each Fourier slice conjugate-transposed."""
    fa = torch.fft.fft(a.to(torch.complex128), dim=-1)
    return torch.fft.ifft(fa.conj().transpose(0, 1), dim=-1).real


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_t_product_and_t_transpose_match_their_fourier_definitions(depth):
    g = torch.Generator().manual_seed(depth)
    a = torch.randn(4, 5, depth, generator=g, dtype=torch.float64)
    b = torch.randn(5, 3, depth, generator=g, dtype=torch.float64)
    assert torch.allclose(t_product(a, b), fourier_product(a, b), atol=1e-12)
    assert torch.allclose(t_transpose(a), fourier_conj_transpose(a), atol=1e-12)
    if depth == 1:
        assert torch.allclose(t_product(a, b)[..., 0], a[..., 0] @ b[..., 0])


def random_kernels(shape: tuple[int, ...], n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_lora_pt_full_rank_principal_part_is_the_tensor(depth):
    kernels = random_kernels((5, 3, 1, 2), depth)
    group = LoRAPTGroup(kernels, PeftConfig("lora_pt", rank=6))  # min(Cout, Cin*K) = 5 < 6
    assert group.rank == 5
    principal = group.principal(group.U0, group.S0, group.V0)
    assert torch.allclose(principal, group.stack(kernels), atol=1e-10)
    # and by the Fourier definition: U * S * V^T slice-wise
    by_definition = fourier_product(fourier_product(group.U0, group.S0), fourier_conj_transpose(group.V0))
    assert torch.allclose(principal, by_definition, atol=1e-10)


def test_lora_pt_low_rank_principal_part_is_the_truncated_t_svd():
    kernels = random_kernels((6, 4, 3), 4)
    r = 2
    group = LoRAPTGroup(kernels, PeftConfig("lora_pt", rank=r))
    tf = torch.fft.fft(group.stack(kernels).to(torch.complex128), dim=-1)
    truncated = []
    for f in range(tf.shape[-1]):  # best rank-r approximation of every Fourier slice
        u, s, vh = torch.linalg.svd(tf[..., f], full_matrices=False)
        truncated.append(u[:, :r] @ torch.diag(s[:r]).to(u.dtype) @ vh[:r])
    expected = torch.fft.ifft(torch.stack(truncated, -1), dim=-1).real
    assert torch.allclose(group.principal(group.U0, group.S0, group.V0), expected, atol=1e-10)


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_tcur_with_rank_at_least_the_slice_rank_reconstructs_the_tensor(depth):
    # slices A diag(c_l) B share A and B, so every Fourier slice A diag(fft(c)_f) B has rank <= 3
    g = torch.Generator().manual_seed(depth)
    a, b = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(3, 12, generator=g, dtype=torch.float64)
    kernels = [(a @ torch.diag(torch.randn(3, generator=g, dtype=torch.float64)) @ b).reshape(7, 3, 2, 2)
               for _ in range(depth)]
    for r in (3, 5):
        group = TCURGroup(kernels, PeftConfig("tcur_lora", rank=r))
        t = group.stack(kernels)
        assert torch.allclose(t_product(group.C, t_product(group.U0, group.R)), t, atol=1e-8)
        assert group.U.shape == (r, r, depth)


def test_tcur_selects_columns_and_rows_by_norm_summed_over_frequencies():
    kernels = random_kernels((5, 2, 3), 3)
    with torch.no_grad():
        for k in kernels:
            k[:, 1, 2] *= 100  # column 1*3+2 = 5 dominates
            k[3] *= 50  # row 3 dominates among the rows
    group = TCURGroup(kernels, PeftConfig("tcur_lora", rank=1))
    t = group.stack(kernels)
    assert torch.equal(group.C, t[:, [5]])
    assert torch.equal(group.R, t[[3]])


def reference_group_delta(group, method: str) -> torch.Tensor:
    """The unscaled update of every slice by the Fourier definitions of the t-product and t-transpose."""
    if method == "lora_pt":  # residual + principal: T + s * (P(U, S, V) - P(U0, S0, V0))
        p = lambda u, s_, v: fourier_product(fourier_product(u, s_), fourier_conj_transpose(v))
        return p(group.U, group.S, group.V) - p(group.U0, group.S0, group.V0)
    return fourier_product(group.C, fourier_product(group.U - group.U0, group.R))  # T - C U0 R + C U R


GROUP_GEOMETRIES = [
    ("conv3d", lambda: nn.Conv3d(4, 5, (1, 3, 3), padding=(0, 1, 1)), (3, 6, 5)),
    ("convT2d", lambda: nn.ConvTranspose2d(4, 3, 2, stride=2), (4, 5)),
    ("linear", lambda: nn.Linear(6, 4), (2, 3, 4, 2)),
]


@pytest.mark.parametrize(("name", "factory", "spatial"), GROUP_GEOMETRIES, ids=[g[0] for g in GROUP_GEOMETRIES])
@pytest.mark.parametrize("method", ["lora_pt", "tcur_lora"])
def test_tensor_group_layers_equal_one_conv_with_the_specified_kernel(method, name, factory, spatial):
    bases = [make_base(factory, seed=i) for i in range(3)]
    config = PeftConfig(method, rank=2, alpha=3)
    kernels = [b.weight.detach().transpose(0, 1) if isinstance(b, nn.ConvTranspose2d) else b.weight.detach() for b in bases]
    group = (LoRAPTGroup if method == "lora_pt" else TCURGroup)(kernels, config).double()
    layers = [TensorGroupAdapter(b, config, [(group, i)]) for i, b in enumerate(bases)]
    x = make_input(bases[0], spatial)
    with torch.no_grad():
        for b, layer in zip(bases, layers):
            assert torch.equal(layer(x), b(x))  # exact at init
        perturb_(list(group.parameters()), seed=4)
        t = group.stack(kernels) + config.scaling * reference_group_delta(group, method)
        for i, (b, layer) in enumerate(zip(bases, layers)):
            expected = conv_with(b, x, t[:, :, i].reshape(conv_layout_shape(b)))
            assert (expected - b(x)).abs().max() > 1e-3
            assert torch.allclose(layer(x), expected, rtol=0, atol=1e-10 * expected.abs().max().item())


@pytest.mark.parametrize("method", ["lora_pt", "tcur_lora"])
def test_fused_qkv_layer_reads_three_slices_of_a_group(method):
    """A fused q/k/v Linear is three matrices of its group: q, k and v stacked, beside an output projection."""
    qkv, proj = make_base(lambda: nn.Linear(4, 12), seed=0), make_base(lambda: nn.Linear(4, 4), seed=1)
    config = PeftConfig(method, rank=2, alpha=3)
    kernels = [*qkv.weight.detach().chunk(3, dim=0), proj.weight.detach()]
    group = (LoRAPTGroup if method == "lora_pt" else TCURGroup)(kernels, config).double()
    fused = TensorGroupAdapter(qkv, config, [(group, 0), (group, 1), (group, 2)])
    single = TensorGroupAdapter(proj, config, [(group, 3)])
    assert fused.num_trainable_parameters() == 3 * single.num_trainable_parameters()
    x = make_input(qkv, (2, 5))
    with torch.no_grad():
        assert torch.equal(fused(x), qkv(x)) and torch.equal(single(x), proj(x))
        perturb_(list(group.parameters()), seed=5)
        t = group.stack(kernels) + config.scaling * reference_group_delta(group, method)
        expected = conv_with(qkv, x, torch.cat([t[:, :, 0], t[:, :, 1], t[:, :, 2]], dim=0))
        assert (expected - qkv(x)).abs().max() > 1e-3
        assert torch.allclose(fused(x), expected, rtol=0, atol=1e-10 * expected.abs().max().item())
        assert torch.allclose(single(x), conv_with(proj, x, t[:, :, 3]), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="do not stack along the output rows"):
        TensorGroupAdapter(qkv, config, [(group, 0), (group, 1)])


@pytest.mark.parametrize("method", ["lora_pt", "tcur_lora"])
def test_delta_slice_equals_the_slice_of_the_full_delta(method):
    kernels = random_kernels((5, 3, 2), 4)
    group = (LoRAPTGroup if method == "lora_pt" else TCURGroup)(kernels, PeftConfig(method, rank=2, alpha=5))
    with torch.no_grad():
        perturb_(list(group.parameters()), seed=6)
        full = group.scaling * reference_group_delta(group, method)
        assert torch.allclose(group.delta(), full, atol=1e-12)
        for i in range(4):
            assert torch.allclose(group.delta_slice(i), full[:, :, i].reshape(5, 3, 2), atol=1e-12)


def test_linear_layers_reduce_to_lora():
    """On a Linear (K = 1) convLoRA is LoRA-C, CP-LoRA a rank-r product U_out U_in^T, all with r*(in+out)
    parameters; a geometry override has no meaning and is refused."""
    base = make_base(lambda: nn.Linear(6, 5))
    layers = {m: LOWRANK[m](base, PeftConfig(m, rank=3)).double() for m in ("lora_c", "conv_lora", "cp_lora")}
    assert {m: layer.num_trainable_parameters() for m, layer in layers.items()} == dict.fromkeys(layers, 3 * (6 + 5))
    assert layers["conv_lora"].lora_A.shape == layers["lora_c"].lora_A.shape == (3, 6)
    cp = layers["cp_lora"]
    assert len(cp.cp_spatial) == 0
    with torch.no_grad():
        perturb_(list(cp.adapter_parameters()), seed=7)
    assert torch.allclose(cp.delta_weight(), cp.scaling * cp.cp_out @ cp.cp_in.t(), atol=1e-12)
    with pytest.raises(ValueError, match="no geometry to override"):
        cp.base_op(torch.zeros(2, 6, dtype=torch.float64), cp.base_weight(), stride=2)


@pytest.mark.parametrize("rank", [2, 8])
def test_parafac_init_of_a_linear_layer_is_its_truncated_svd(rank):
    """A matrix's best rank-r CP decomposition is its truncated SVD: U_in holds the leading right
    singular vectors (unit columns), then seeded random unit columns beyond min(in, out) = 5."""
    base = make_base(lambda: nn.Linear(6, 5))
    layer = CPLoRAAdapter(base, PeftConfig("cp_lora", rank=rank, cp_init="parafac")).double()
    _, _, vh = torch.linalg.svd(base.weight.detach())
    k = min(rank, 5)
    assert torch.allclose(layer.cp_in[:, :k].abs(), vh[:k].t().abs(), atol=1e-10)
    assert torch.allclose(layer.cp_in.norm(dim=0), torch.ones(rank, dtype=torch.float64), atol=1e-12)
    assert torch.equal(layer.cp_out, torch.zeros(5, rank, dtype=torch.float64))
    again = CPLoRAAdapter(base, PeftConfig("cp_lora", rank=rank, cp_init="parafac")).double()
    assert torch.equal(again.cp_in, layer.cp_in)  # the same weight gives the same factors
    x = make_input(base, (3, 4))
    with torch.no_grad():
        assert torch.equal(layer(x), base(x))
