"""The adapter library on real nnU-Net networks (PlainConvUNet / ResidualEncoderUNet, 2-D / 3-D), on a
tiny transformer U-Net whose Linear layers include a fused q/k/v projection (tests/token_networks.py),
and on tiny UNETR, SwinUNETR and Primus built through nnunet_peft.architectures (tests/networks.py).

Every property of the issue's bar is checked for every method and forward mode, on every
network class and dimensionality, and for each placement on its own: identity at
initialisation, liveness of every stage's adapters, merge exactness, training dynamics,
parameter counts, DoRA's zero channels, save/load, and the errors of unusable configurations.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapter_helpers import (
    DORA_METHODS, MERGEABLE_METHOD_MODES, METHOD_MODE_IDS, METHOD_MODES, adapter_tensors, conv_layout_shape,
    expected_group_count, expected_layer_count, layer_tensors, perturb_,
)
from networks import (BACKBONE_SPECS, NET_SPECS, TOKEN_SPECS, outputs, pretrained_network,
                      random_input)
from nnunet_peft import (
    METHODS, PLACEMENTS, PeftConfig, adapter_layers, adapter_state_dict, count_parameters, inject_adapters,
    load_adapter, merge_adapters, save_adapter, trainable_parameter_table,
)
from nnunet_peft.injection import GROUPS_ATTR
from nnunet_peft.layers.base import AdapterLayer
from nnunet_peft.layers.lowrank import LoRACAdapter
from nnunet_peft.layers.tensor import TensorGroupAdapter
from nnunet_peft.placement import Stage, mark_fused, network_stages, replace_module, target_modules, unique_modules
from nnunet_peft.summary import stage_rows

NET_IDS = [s.id for s in NET_SPECS]
# the CNNs, the transformer U-Net and the backbones: every method on convolutions and Linear layers alike
ADAPTER_SPECS = NET_SPECS + TOKEN_SPECS + BACKBONE_SPECS
ADAPTER_IDS = [s.id for s in ADAPTER_SPECS]
# each placement on its own for the CNNs and the backbones; the transformer U-Net with all three at once
# (every stage is still checked on its own where it matters, and the suite stays fast)
SPEC_PLACEMENTS = ([(s, (p,)) for s in NET_SPECS for p in PLACEMENTS] + [(s, PLACEMENTS) for s in TOKEN_SPECS]
                   + [(s, (p,)) for s in BACKBONE_SPECS for p in PLACEMENTS])
SPEC_PLACEMENT_IDS = [f"{s.id}-{'+'.join(p)}" for s, p in SPEC_PLACEMENTS]
DORA_METHOD_MODES = [(m, mode) for m, mode in METHOD_MODES if m in DORA_METHODS]


def cases(method_modes, spec_placements):
    """``(method, mode, spec, placement)`` for every pair of each list, with readable ids.

    The backbones run each method in one forward mode only (the one an untuned ``auto`` layer runs): the modes compute the same
    function through the same layer classes, which the CNNs and the token U-Net check mode by mode on
    convolutions and Linear layers; what the backbones add is their module structure.
    """
    found = [(m, mode, s, p) for s, p in spec_placements for m, mode in method_modes
             if s not in BACKBONE_SPECS or mode == METHODS[m].untuned_mode]
    return pytest.mark.parametrize(("method", "mode", "spec", "placement"), found,
                                   ids=[f"{m}-{mode}-{s.id}-{'+'.join(p)}" for m, mode, s, p in found])


def head_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The segmentation heads' parameters: the placement map's ``seg_layers`` stage."""
    stage = next(s for s in network_stages(network) if s.placement == "seg_layers")
    return [p for m in stage.modules for p in m.parameters()]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def identity_tolerance(method: str, mode: str, reference: torch.Tensor) -> float:
    """0 where the library is exact at init; HyPS's chain runs ``Q`` and ``P`` as two convolutions,
    so it matches only to float32 rounding of the output's scale."""
    if method == "hyps" and mode == "chain":
        return 1e-5 * max(1.0, reference.abs().max().item())
    return 0.0


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def frozen_pretrained(spec, seed: int = 0) -> nn.Module:
    """The pretrained network with every weight frozen, as the adapted network's unadapted layers are.

    The reference for exact comparisons: on an input of more than two axes that is not contiguous (a
    channels-last view), ``F.linear`` sums in another order when its weight requires a gradient, so
    a Linear layer's output depends on that flag in the last bits (convolutions do not).
    """
    return pretrained_network(spec, seed=seed).requires_grad_(False)


def adapted(spec, method: str, mode: str, placement=PLACEMENTS, rank: int = 3, seed: int = 0) -> nn.Module:
    net = pretrained_network(spec, seed=seed)
    return inject_adapters(net, PeftConfig(method, rank=rank, placement=tuple(placement), forward_mode=mode))


# ----------------------------------------------------------------------------------- identity
@cases(METHOD_MODES, SPEC_PLACEMENTS)
def test_identity_at_init(method, mode, spec, placement):
    x = random_input(spec)
    with torch.no_grad():
        reference = outputs(frozen_pretrained(spec), x)
        net = adapted(spec, method, mode, placement)
        assert adapter_layers(net), "no adapter was injected"
        got = outputs(net, x)
    assert max_abs_diff(got, reference) <= identity_tolerance(method, mode, reference[0])


@pytest.mark.parametrize("spec", NET_SPECS[:2] + TOKEN_SPECS[:1], ids=NET_IDS[:2] + [TOKEN_SPECS[0].id])
@pytest.mark.parametrize(("method", "mode"), METHOD_MODES, ids=METHOD_MODE_IDS)
def test_rank_above_layer_dimensions_is_accepted(method, mode, spec):
    # rank 40 exceeds min(Cout, Cin*K) of every layer of these networks (features 4..16)
    x = random_input(spec)
    with torch.no_grad():
        reference = outputs(frozen_pretrained(spec), x)
        net = adapted(spec, method, mode, rank=40)
        got = outputs(net, x)
        assert max_abs_diff(got, reference) <= identity_tolerance(method, mode, reference[0])
        perturb_(adapter_tensors(net))
        moved = outputs(net, x)
    assert all(torch.isfinite(y).all() for y in moved)
    assert max_abs_diff(moved, reference) > 1e-3


# --------------------------------------------------------------------------------------- live
def stage_adapter_layers(stage) -> list[AdapterLayer]:
    return [m for _, m in unique_modules(stage.modules, AdapterLayer)]


@cases(METHOD_MODES, SPEC_PLACEMENTS)
def test_every_targeted_stage_is_live(method, mode, spec, placement):
    """Perturbing the adapters of any one targeted stage changes the output, and every adapter layer
    runs in the forward pass (an adapter reachable only as ``.conv`` would never run)."""
    net = adapted(spec, method, mode, placement)
    x = random_input(spec)
    calls: dict[int, int] = {}
    for layer in adapter_layers(net):
        layer.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1))
    with torch.no_grad():
        reference = outputs(net, x)
        assert {id(m) for m in adapter_layers(net)} == set(calls), "an adapter layer is not in the forward pass"
        stages = [s for s in network_stages(net) if s.placement in placement]
        assert stages
        for i, stage in enumerate(stages):
            layers = stage_adapter_layers(stage)
            assert layers, f"{stage.name} holds no adapter"
            # tensor methods: the factors of a group are shared; perturbing a group with a member here
            tensors = list({id(p): p for layer in layers for p in layer_tensors(layer)}.values())
            saved = [t.clone() for t in tensors]
            perturb_(tensors, seed=i)
            moved = outputs(net, x)
            for t, s in zip(tensors, saved):
                t.copy_(s)
            assert max_abs_diff(moved, reference) > 1e-4, f"perturbing the adapters of {stage.name} changed nothing"
        assert max_abs_diff(outputs(net, x), reference) == 0.0  # restoring is exact: the test is sound


@pytest.mark.parametrize("spec", [NET_SPECS[1], NET_SPECS[3]], ids=[NET_IDS[1], NET_IDS[3]])
def test_replacing_only_dot_conv_leaves_the_adapter_out(spec):
    """The ``.conv`` / ``.all_modules[0]`` alias of ConvDropoutNormReLU is real: an adapter set as
    ``.conv`` alone never runs, so a liveness test is what catches a half-wired injection."""
    net = pretrained_network(spec)
    x = random_input(spec)
    stage = net.encoder.stages[1]
    block = stage[0].convs[0] if spec.arch == "plain" else stage.blocks[0].conv1
    conv = block.conv
    assert block.all_modules[0] is conv
    with torch.no_grad():
        reference = outputs(net, x)
        wrapper = LoRACAdapter(conv, PeftConfig("lora_c", rank=2))
        perturb_(list(wrapper.adapter_parameters()))
        block._modules["conv"] = wrapper  # what a name-based injection does
        assert torch.equal(outputs(net, x)[0], reference[0])
        block.all_modules._modules["0"] = wrapper  # the registration the forward pass runs
        assert max_abs_diff(outputs(net, x), reference) > 1e-4


# -------------------------------------------------------------------------------------- merge
@cases(MERGEABLE_METHOD_MODES, SPEC_PLACEMENTS)
def test_merge_equals_unmerged_and_loads_into_a_stock_network(method, mode, spec, placement):
    net = adapted(spec, method, mode, placement).double()  # float64: the comparison is about algebra
    perturb_(adapter_tensors(net))
    x = random_input(spec, dtype=torch.float64)
    with torch.no_grad():
        unmerged = outputs(net, x)
        merged_net = merge_adapters(net)
        merged = outputs(merged_net, x)
    scale = max(y.abs().max().item() for y in unmerged)
    assert max_abs_diff(merged, unmerged) <= 1e-10 * scale
    assert merged_net is net and not adapter_layers(net) and not hasattr(net, GROUPS_ATTR)
    stock = pretrained_network(spec, seed=123).double()  # a network of the same class, other weights
    assert type(stock) is type(net)
    stock.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert max_abs_diff(outputs(stock, x), merged) == 0.0


def test_merge_of_hyps_is_refused_with_the_reason():
    net = adapted(NET_SPECS[1], "hyps", "chain")
    with pytest.raises(ValueError, match="hyps cannot be merged.*serial adapter"):
        merge_adapters(net)
    assert adapter_layers(net), "a refused merge must leave the network as it was"


def test_merge_without_adapters_is_refused():
    with pytest.raises(ValueError, match="holds no adapters"):
        merge_adapters(pretrained_network(NET_SPECS[0]))


# ----------------------------------------------------------------------------------- training
def normalised_dora_magnitudes(network: nn.Module) -> list[nn.Parameter]:
    """DoRA magnitudes of convolutions that an InstanceNorm follows directly.

    A per-channel scale before InstanceNorm is normalised away (up to the norm's eps), so the
    magnitude's gradient there is O(eps / variance) and an SGD step on it rounds to nothing in
    float32. Those magnitudes are checked for a finite gradient instead of for movement; the
    magnitudes of the transposed convolutions, which no norm follows, must move.

    The pairs: dynamic_network_architectures' ``ConvDropoutNormReLU`` (``conv``, ``norm``) and MONAI's
    ``UnetBasicBlock`` / ``UnetResBlock`` (``convN``, a ``Convolution`` holding its layer as ``.conv``,
    then ``normN``; ``conv3``/``norm3`` is the residual projection), which UNETR and SwinUNETR use.
    """
    found = []
    for block in network.modules():
        for conv_name, norm_name in (("conv", "norm"), ("conv1", "norm1"), ("conv2", "norm2"), ("conv3", "norm3")):
            conv, norm = getattr(block, conv_name, None), getattr(block, norm_name, None)
            if not isinstance(conv, AdapterLayer):  # MONAI's Convolution wraps its layer
                conv = getattr(conv, "conv", None)
            if isinstance(conv, AdapterLayer) and isinstance(norm, nn.modules.instancenorm._InstanceNorm):
                if hasattr(conv, "dora_magnitude"):
                    found.append(conv.dora_magnitude)
    return found


def test_dora_magnitude_before_instance_norm_is_scale_invariant():
    """Why ``normalised_dora_magnitudes`` are exempt from the movement check: doubling them leaves
    the output unchanged to float32 precision."""
    spec = NET_SPECS[1]
    net = adapted(spec, "dora_c", "chain", ("encoder",))
    x = random_input(spec)
    magnitudes = normalised_dora_magnitudes(net)
    assert len(magnitudes) == len(adapter_layers(net))
    with torch.no_grad():
        reference = outputs(net, x)
        for m in magnitudes:
            m.mul_(2.0)
        assert max_abs_diff(outputs(net, x), reference) < 1e-3


@cases(METHOD_MODES, SPEC_PLACEMENTS)
def test_two_sgd_steps_reach_every_adapter_tensor_and_nothing_frozen(method, mode, spec, placement):
    """Every trainable tensor receives a nonzero gradient within two SGD steps (a factor initialised to
    zero leaves its partner's first gradient at zero), and nothing frozen moves.

    A gradient rather than movement: deep in a tiny ViT, the second-step gradient of a LoRA ``A``
    behind a ``B`` that one step has moved is ~1e-9, so its SGD step is below float32 resolution of
    ``A``'s values (~0.2) though the tensor is trained.
    """
    net = adapted(spec, method, mode, placement).train()
    heads = {id(p) for p in head_parameters(net)}
    adapters = {id(p) for p in adapter_tensors(net)}
    trainable = {name: p for name, p in net.named_parameters() if p.requires_grad}
    assert adapters and {id(p) for p in trainable.values()} == adapters | heads, \
        "exactly the adapters and the segmentation heads must be trainable"
    frozen = {name: p.detach().clone() for name, p in net.named_parameters() if not p.requires_grad}
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    before = {name: p.detach().clone() for name, p in trainable.items()}

    x = random_input(spec)
    g = torch.Generator().manual_seed(7)
    targets = [torch.randn(y.shape, generator=g) for y in outputs(net, x)]
    optimizer = torch.optim.SGD(trainable.values(), lr=0.1, momentum=0.0)
    reached: set[str] = set()
    for _ in range(2):
        optimizer.zero_grad()
        loss = sum(F.mse_loss(y, t) for y, t in zip(outputs(net, x), targets))
        loss.backward()
        for name, p in trainable.items():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
            if p.grad is not None and p.grad.count_nonzero():
                reached.add(name)
        optimizer.step()

    assert torch.isfinite(loss)
    scale_invariant = normalised_dora_magnitudes(net)
    for p in scale_invariant:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    unreached = [name for name, p in trainable.items()
                 if name not in reached and id(p) not in {id(q) for q in scale_invariant}]
    assert not unreached, f"trainable tensors without a gradient in two steps: {unreached}"
    assert any(not torch.equal(p, before[name]) for name, p in trainable.items()), "the steps changed nothing"
    moved = [name for name, p in net.named_parameters() if name in frozen and not torch.equal(p, frozen[name])]
    assert not moved, f"frozen tensors changed: {moved}"
    moved = [name for name, b in net.named_buffers() if not torch.equal(b, buffers[name])]
    assert not moved, f"buffers changed: {moved}"


# ------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize("rank", [3, 40], ids=["rank3", "rank40"])
@pytest.mark.parametrize(("spec", "placement"), SPEC_PLACEMENTS, ids=SPEC_PLACEMENT_IDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_trainable_counts_follow_the_formulas(method, spec, placement, rank):
    net = pretrained_network(spec)
    named = target_modules(net, placement)
    targets = [conv for _, conv in named]
    heads = sum(p.numel() for p in head_parameters(net))
    inject_adapters(net, PeftConfig(method, rank=rank, placement=placement))
    layers = adapter_layers(net)
    assert {id(layer.base_layer) for layer in layers} == {id(conv) for conv in targets}
    if METHODS[method].family == "tensor":
        # a fused q/k/v projection (a Linear registered as ``qkv``: the token network's ``attn.qkv``, MONAI's
        # ``SABlock.qkv``, ``WindowAttention.qkv``) is three matrices of a third of its rows
        blocks = {id(conv): [(shape[0] // 3, *shape[1:])] * 3 if re.split(r"[./]", where)[-1] == "qkv" else [shape]
                  for where, conv in named for shape in [conv_layout_shape(conv)]}
        groups: dict[tuple, int] = {}
        for shape in (shape for conv in targets for shape in blocks[id(conv)]):
            groups[shape] = groups.get(shape, 0) + 1
        expected = sum(expected_group_count(method, shape, n, rank) for shape, n in groups.items())
        for layer in layers:
            share = sum(expected_group_count(method, shape, groups[shape], rank) // groups[shape]
                        for shape in blocks[id(layer.base_layer)])
            assert layer.num_trainable_parameters() == share
    else:
        for layer in layers:
            assert layer.num_trainable_parameters() == expected_layer_count(method, conv_layout_shape(layer.base_layer), rank)
        expected = sum(expected_layer_count(method, conv_layout_shape(c), rank) for c in targets)
    trainable, _ = count_parameters(net)
    assert trainable == expected + heads


@pytest.mark.parametrize("method", list(METHODS))
def test_per_stage_table_adds_up(method):
    net = adapted(NET_SPECS[3], method, None)
    table = trainable_parameter_table(net)
    rows = stage_rows(net)
    trainable, total = count_parameters(net)
    assert [r["stage"] for r in rows] == [s.name for s in network_stages(net)]
    assert sum(r["trainable"] for r in rows) == trainable
    assert sum(r["adapted"] for r in rows) == len(adapter_layers(net))
    for r in rows:
        assert r["stage"] in table
    last = table.splitlines()[-1].split()
    assert last[0] == "all" and int(last[2].replace(",", "")) == trainable and int(last[3].replace(",", "")) == total


# --------------------------------------------------------------------------------------- DoRA
@cases(DORA_METHOD_MODES, [(s, PLACEMENTS) for s in ADAPTER_SPECS])
def test_dora_with_an_all_zero_output_channel_stays_finite(method, mode, spec, placement):
    net = pretrained_network(spec)
    with torch.no_grad():
        for _, conv in target_modules(net, PLACEMENTS):  # output channel 0 of every target: all zero
            (conv.weight[:, 0] if conv_layout_shape(conv) != tuple(conv.weight.shape) else conv.weight[0]).zero_()
    x = random_input(spec)
    with torch.no_grad():
        reference = outputs(net.requires_grad_(False), x)  # see frozen_pretrained
    inject_adapters(net, PeftConfig(method, rank=3, forward_mode=mode))
    with torch.no_grad():
        assert max_abs_diff(outputs(net, x), reference) == 0.0
        perturb_(adapter_tensors(net))  # the update now moves the zero channels
    loss = sum(y.square().mean() for y in outputs(net, x))
    loss.backward()
    assert torch.isfinite(loss)
    for p in adapter_tensors(net):
        assert p.grad is not None and torch.isfinite(p.grad).all()


# ---------------------------------------------------------------------------------- save/load
@pytest.mark.parametrize("spec", ADAPTER_SPECS, ids=ADAPTER_IDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_save_load_round_trip_is_exact(method, spec, tmp_path):
    net = adapted(spec, method, None)
    perturb_([p for p in net.parameters() if p.requires_grad])
    x = random_input(spec)
    save_adapter(net, tmp_path / "adapter", metadata={"note": "test"})
    loaded = load_adapter(pretrained_network(spec), tmp_path / "adapter")
    saved_state, loaded_state = adapter_state_dict(net), adapter_state_dict(loaded)
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)
    with torch.no_grad():
        assert max_abs_diff(outputs(loaded, x), outputs(net, x)) == 0.0


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "lora"}, "method must be one of"),
    ({"method": "lora_c", "rank": 0}, "rank must be an integer >= 1"),
    ({"method": "lora_c", "rank": 2.0}, "rank must be an integer >= 1"),
    ({"method": "lora_c", "placement": ()}, "placement must name at least one of"),
    ({"method": "lora_c", "placement": ("middle",)}, "placement must be distinct values from"),
    ({"method": "conv_lora", "forward_mode": "chain"}, "supports forward_mode in"),
], ids=["unknown-method", "rank-0", "rank-float", "empty-placement", "unknown-placement", "unsupported-mode"])
def test_unusable_configurations_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PeftConfig(**kwargs)


@pytest.mark.parametrize("method", list(METHODS))
def test_grouped_convolution_is_refused_before_anything_changes(method):
    net = pretrained_network(NET_SPECS[1])
    conv = net.encoder.stages[1][0].convs[0].conv
    grouped = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, groups=2)
    replace_module(net, conv, grouped)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"grouped convolutions \(groups=2 at encoder\.1/.*Leave this layer out"):
        inject_adapters(net, PeftConfig(method, rank=2))
    assert not adapter_layers(net) and not hasattr(net, GROUPS_ATTR)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    # a placement that leaves the grouped convolution out works
    inject_adapters(net, PeftConfig(method, rank=2, placement=("decoder",)))


def test_injecting_twice_is_refused():
    net = adapted(NET_SPECS[0], "lora_c", "chain")
    with pytest.raises(ValueError, match="already holds adapters"):
        inject_adapters(net, PeftConfig("lora_c"))


@pytest.mark.parametrize(("method", "mode"), METHOD_MODES, ids=METHOD_MODE_IDS)
def test_adapters_follow_the_dtype_of_the_network(method, mode):
    spec = NET_SPECS[1]
    x = random_input(spec, dtype=torch.float64)
    with torch.no_grad():
        reference = outputs(pretrained_network(spec).double(), x)
        net = inject_adapters(pretrained_network(spec).double(), PeftConfig(method, rank=3, forward_mode=mode))
        assert all(p.dtype == torch.float64 for p in adapter_tensors(net))
        assert max_abs_diff(outputs(net, x), reference) <= 1e-12 * max(1.0, reference[0].abs().max().item())


# ------------------------------------------------------------------------------ Linear layers
def linear_group_sizes(net: nn.Module) -> dict[tuple[int, ...], int]:
    return {g.kernel_shape: g.num_layers for g in getattr(net, GROUPS_ATTR).values() if len(g.kernel_shape) == 2}


@pytest.mark.parametrize("method", ["lora_pt", "tcur_lora"])
def test_fused_qkv_contributes_q_k_and_v_to_the_tensor_groups(method):
    """The token network's ``attn.qkv`` (16 -> 48) is three 16x16 matrices, grouped with the output
    projection and the decoder's 16x16 mix; the bottleneck's separate q, k, v join its projection."""
    spec = TOKEN_SPECS[0]
    net = adapted(spec, method, None)
    qkv = net.encoder.stages[1].blocks[0].attn.qkv
    assert isinstance(qkv, TensorGroupAdapter) and [i for _, i in qkv.slices] == [0, 1, 2]
    assert linear_group_sizes(net) == {(16, 16): 5, (64, 16): 1, (16, 64): 1, (32, 64): 1, (32, 32): 4,
                                       (128, 32): 1, (32, 128): 1, (8, 8): 1}
    # one Linear for the matrix methods, three matrices here: the count is three per-matrix shares
    assert qkv.num_trainable_parameters() == 3 * net.encoder.stages[1].blocks[0].attn.proj.num_trainable_parameters()

    plain = pretrained_network(spec)
    mark_fused(plain.encoder.stages[1].blocks[0].attn.qkv, 1)  # a layer named qkv that is one matrix
    inject_adapters(plain, PeftConfig(method, rank=3))
    assert linear_group_sizes(plain)[(16, 16)] == 2 and linear_group_sizes(plain)[(48, 16)] == 1


def test_mark_fused_checks_the_blocks():
    layer = nn.Linear(4, 10)
    with pytest.raises(ValueError, match="dividing the 10 output rows"):
        mark_fused(layer, 3)
    assert mark_fused(layer, 2) is layer and layer.peft_fused_blocks == 2


class DeadCrossAttention(nn.Module):
    """MONAI's TransformerBlock builds a cross-attention that runs only with ``with_cross_attention``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.cross_attn = type(block.attn)(16, 2, fused=True, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def live_stage_map(net: nn.Module) -> list[Stage]:
    """A stage map that lists the live modules only, naming the fused qkv Linear directly."""
    blocks, enc, dec = net.encoder.stages[1].blocks, net.encoder.stages, net.decoder
    block = blocks[0].block
    return [
        Stage("encoder.0", "encoder", (enc[0],)),
        Stage("encoder.1", "encoder", (enc[1].embed, block.attn.qkv, block.attn.proj, block.mlp)),
        Stage("bottleneck", "bottleneck", (enc[2],)),
        *[Stage(f"decoder.{i}", "decoder", (up, st)) for i, (up, st) in enumerate(zip(dec.transpconvs, dec.stages))],
        Stage("seg_layers", "seg_layers", (dec.seg_layers,)),
    ]


@pytest.mark.parametrize("method", ["lora_pt", "hyps"])
def test_modules_outside_the_forward_pass_get_no_adapter_when_the_stage_map_leaves_them_out(method, monkeypatch):
    spec = TOKEN_SPECS[0]
    net = pretrained_network(spec)
    blocks = net.encoder.stages[1].blocks
    blocks[0] = DeadCrossAttention(blocks[0])
    dead = blocks[0].cross_attn
    # the U-Net path takes whole stages: the dead cross-attention's Linear layers would be adapted
    assert any(layer is dead.qkv for _, layer in target_modules(net, PLACEMENTS))

    import nnunet_peft.injection as injection
    import nnunet_peft.placement as placement
    monkeypatch.setattr(placement, "network_stages", live_stage_map)
    monkeypatch.setattr(injection, "network_stages", live_stage_map)
    inject_adapters(net, PeftConfig(method, rank=3))
    assert not any(isinstance(m, AdapterLayer) for m in dead.modules())
    qkv = blocks[0].block.attn.qkv
    if method == "lora_pt":  # named qkv in the network though its stage lists the Linear itself
        assert len(qkv.slices) == 3
    calls: set[int] = set()
    for layer in adapter_layers(net):
        layer.register_forward_hook(lambda m, i, o: calls.add(id(m)))
    x = random_input(spec)
    loss = sum(y.square().mean() for y in outputs(net.train(), x))
    loss.backward()
    assert calls == {id(m) for m in adapter_layers(net)}
    assert all(not p.requires_grad for p in dead.parameters())
    heads = list(net.decoder.seg_layers.parameters())
    assert all(p.requires_grad and p.grad is not None for p in heads), "the segmentation head trains"
