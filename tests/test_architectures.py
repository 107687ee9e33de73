"""Every network family answers the same interface, and a family registered here is used by placement,
the name grammar and the trainer without a line changed elsewhere."""
from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from networks import BACKBONE_SPECS, NET_SPECS, TINY_BACKBONES, build_network
from nnunet_peft.architectures import (BACKBONES, FAMILIES, PLANS_KEY, Backbone, Family, Stage, adjust_patch_size,
                                       build_backbone, family_for_token, family_of, find_family, patch_size_problem,
                                       plans_with_backbone_patch_size, register, unregister)
from nnunet_peft.architectures.multiview import MultiviewUNet
from nnunet_peft.config import PLACEMENTS
from nnunet_peft.placement import TARGET_TYPES, head_modules, network_stages, target_modules, unique_modules

warnings.filterwarnings("ignore", category=FutureWarning)

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_peft"


def multiview(deep_supervision: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return MultiviewUNet(1, 2, [[1, 1], [2, 2], [2, 2]], features=4, deep_supervision=deep_supervision).eval()


# one tiny network of every registered family, with its input; deep supervision on where the family has it
CASES = {
    **{f"unet-{s.id}": (lambda s=s: build_network(s), s.in_channels, s.patch, s.num_classes) for s in NET_SPECS},
    "multiview": (multiview, 1, (16, 16), 2),
    **{s.arch: (lambda s=s: build_network(s), s.in_channels, s.patch, s.num_classes) for s in BACKBONE_SPECS},
}
EXPECTED_FAMILY = {"unet-plain2d": "unet", "unet-plain3d": "unet", "unet-resenc2d": "unet", "unet-resenc3d": "unet",
                   "multiview": "multiview", "unetr": "unetr", "swinunetr": "swinunetr", "primus": "primus"}


def test_every_registered_family_has_a_case_here():
    assert set(EXPECTED_FAMILY.values()) == set(FAMILIES)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    build, in_channels, patch, classes = CASES[request.param]
    network = build()
    return request.param, network, torch.randn(1, in_channels, *patch, generator=torch.Generator().manual_seed(0)), classes


def test_the_family_is_recognised(case):
    name, network, _, _ = case
    family = family_of(network)
    assert family is FAMILIES[EXPECTED_FAMILY[name]]
    assert family.recognises(network)  # by class name; the U-Nets by structure too
    assert family.matches is None or family.matches(network)


def test_the_stage_map_covers_every_layer_the_forward_pass_runs_once(case):
    name, network, x, _ = case
    stages = network_stages(network)
    assert all(isinstance(s, Stage) and s.placement in (*PLACEMENTS, "seg_layers") for s in stages)
    order = [s.placement for s in stages]
    assert order == sorted(order, key=["encoder", "bottleneck", "decoder", "seg_layers"].index)
    assert order.count("bottleneck") == 1 and order[-1] == "seg_layers" and order.count("seg_layers") == 1
    assert [s.name for s in stages if s.placement == "encoder"] == [f"encoder.{i}" for i in range(order.count("encoder"))]
    assert [s.name for s in stages if s.placement == "decoder"] == [f"decoder.{i}" for i in range(order.count("decoder"))]
    where: dict[int, list[str]] = {}
    for stage in stages:
        for _, layer in unique_modules(stage.modules, TARGET_TYPES):
            where.setdefault(id(layer), []).append(stage.name)
    assert {k: v for k, v in where.items() if len(v) > 1} == {}  # no layer in two stages
    ran: set[int] = set()
    hooks = [m.register_forward_hook(lambda m, *_: ran.add(id(m))) for m in network.modules()
             if isinstance(m, TARGET_TYPES)]
    with torch.no_grad():
        network(x)
    for h in hooks:
        h.remove()
    assert ran == set(where), f"{name}: {len(ran - set(where))} layers run outside the map, {len(set(where) - ran)} mapped but idle"
    placed = {id(layer) for _, layer in target_modules(network, PLACEMENTS)}
    assert placed == {k for k, v in where.items() if v != ["seg_layers"]}


def test_heads_are_found_with_their_state_dict_names(case):
    name, network, x, classes = case
    family = family_of(network)
    heads = head_modules(network)
    assert heads
    state = network.state_dict()
    for prefix, head in heads:
        assert head.out_channels == classes and state[f"{prefix}.weight"] is not None
        assert (".seg_layers." in f"{prefix}.") == family.nnunet_skips_heads


def test_deep_supervision_is_what_the_family_says(case):
    name, network, x, classes = case
    family = family_of(network)
    with torch.no_grad():
        out = network(x)
    if family.deep_supervision:  # built with deep supervision on: one output per decoder level
        assert isinstance(out, (list, tuple)) and len(out) > 1 and out[0].shape == (1, classes, *x.shape[2:])
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (1, classes, *x.shape[2:])


@pytest.mark.parametrize("token", list(BACKBONES))
def test_every_backbone_token_has_patch_size_rules(token):
    backbone = BACKBONES[token]
    family = family_for_token(token)
    assert backbone in family.backbones and not family.nnunet_builds
    dims = max(backbone.dims)
    d = backbone.divisor
    odd = tuple(d * k + d // 2 - 1 for k in range(2, 2 + dims))  # none a multiple, each nearer the one below
    assert f"multiple of {d}" in patch_size_problem(token, odd)
    adjusted = adjust_patch_size(token, odd)
    assert patch_size_problem(token, adjusted) is None and adjust_patch_size(token, adjusted) == adjusted
    assert all(a % d == 0 and abs(a - o) <= d for a, o in zip(adjusted, odd))
    for wrong in {2, 3} - set(backbone.dims):
        assert f"takes {' or '.join(f'{x}-D' for x in backbone.dims)} patches" in patch_size_problem(token, (d * 4,) * wrong)


def test_the_families_nnunet_builds_take_no_token_and_the_default_is_the_plans_network():
    assert family_for_token(None).nnunet_builds and family_for_token(None).deep_supervision
    for family in FAMILIES.values():
        assert family.nnunet_builds == (not family.backbones), family.name


def test_a_network_of_no_family_is_refused_by_name():
    assert find_family(nn.Sequential(nn.Conv2d(1, 2, 3))) is None
    with pytest.raises(ValueError, match="Sequential is not a dynamic_network_architectures U-Net"):
        network_stages(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_recognising_a_u_net_imports_no_monai():
    script = ("import sys\nsys.path.insert(0, 'tests')\nfrom networks import NET_SPECS, build_network\n"
              "from nnunet_peft.architectures import family_of\nfrom nnunet_peft.placement import target_modules\n"
              "net = build_network(NET_SPECS[0])\nassert family_of(net).name == 'unet'\n"
              "target_modules(net, ('encoder', 'decoder'))\nprint(sorted(m for m in sys.modules if m.startswith('monai')))")
    done = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_family_modules_import_only_their_own_package():
    for path in sorted((PACKAGE / "architectures").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunet_peft"):
                assert node.module.startswith("nnunet_peft.architectures"), f"{path.name} imports {node.module}"


# ------------------------------------------------------------------ a family registered by a test

class ToyNet(nn.Module):
    """A small encoder-decoder with a Linear layer at the bottom and a 1x1 head."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3, width: int = 4) -> None:
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        up = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
        self.stem = conv(in_channels, width, 3, padding=1)
        self.down = conv(width, width, 2, stride=2)
        self.mix = nn.Linear(width, width)
        self.up = up(width, width, 2, stride=2)
        self.head = conv(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(torch.relu(self.stem(x)))
        y = self.mix(y.movedim(1, -1)).movedim(-1, 1)
        return self.head(torch.relu(self.up(y)))


def toy_stages(network: ToyNet) -> list[Stage]:
    return [Stage("encoder.0", "encoder", (network.stem,)), Stage("bottleneck", "bottleneck", (network.down, network.mix)),
            Stage("decoder.0", "decoder", (network.up,)), Stage("seg_layers", "seg_layers", (network.head,))]


TOY = Family(
    name="toy", description="ToyNet (a test's)", stages=toy_stages, classes=(f"{ToyNet.__module__}.{ToyNet.__name__}",),
    backbones=(Backbone("toynet", "toy", 4, {"width": 6}, dims=(3,), description="ToyNet (a test's)"),),
    constructor=lambda: ToyNet, fixed_arguments=("in_channels", "out_channels", "spatial_dims"),
    construct=lambda cls, backbone, patch, i, o, kwargs: cls(i, o, len(patch), **kwargs))


@pytest.fixture
def toy_family():
    register(TOY)
    yield TOY
    unregister(TOY.name)


def test_a_registered_family_is_used_by_placement_names_and_the_trainer(toy_family):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_peft.checkpoint_file import check_pretrained_compatible
    from nnunet_peft.injection import adapter_layers
    from nnunet_peft.name_grammar import parse_trainer_name
    from nnunet_peft.training.trainer import trainer_class

    net = build_backbone("toynet", (8, 8, 8), 1, 2)
    assert family_of(net) is TOY and net.mix.in_features == 6  # the token's defaults
    assert [layer for _, layer in target_modules(net, ("bottleneck",))] == [net.down, net.mix]
    assert head_modules(net) == [("head", net.head)]
    assert adjust_patch_size("toynet", (9, 10, 15)) == (8, 12, 16)

    spec = parse_trainer_name("nnUNetTrainerLoRAC_r2_toynet")
    assert spec.backbone == "toynet"
    plans = {"configurations": {"3d_fullres": {
        "patch_size": [9, 10, 15], PLANS_KEY: {"toy": {"width": 5}},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {}, "_kw_requires_import": []}}}}
    plans, note = plans_with_backbone_patch_size(plans, "3d_fullres", "toynet")
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [8, 12, 16] and "ToyNet" in note
    manager = PlansManager(plans)
    built = trainer_class("nnUNetTrainerLoRAC_r2_toynet").build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 3, True)
    assert family_of(built) is TOY and built.mix.base_layer.in_features == 5  # the plans' overrides
    # the layers of the placed stages of the toy map (the head's stage is not in the default placement)
    assert len(adapter_layers(built)) == len(target_modules(net, spec.placement)) == 4
    out = built(torch.randn(1, 1, 8, 12, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 8, 12, 16)  # no deep supervision

    other = build_backbone("toynet", (8, 8, 8), 1, 4)  # another class count: only its head differs
    check_pretrained_compatible(other, "unused.pth", weights=net.state_dict())
    with pytest.raises(ValueError, match="same backbone token"):
        check_pretrained_compatible(build_backbone("toynet", (8, 8, 8), 1, 2, width=3), "unused.pth",
                                    weights=net.state_dict())


def test_the_trainer_fine_tunes_a_registered_family_from_a_checkpoint(toy_family, tmp_path, monkeypatch):
    """nnUNetv2_train's path with -pretrained_weights: patch size from the family's rules, no deep supervision,
    the stock network built with the checkpoint's class count (the toy head is not nnU-Net's
    ``.seg_layers.``), then the head mapped to the target's classes by name."""
    from networks import NetSpec
    from test_transfer import SOURCE_JSON, dataset_json, save_checkpoint, start_trainer, tiny_plans

    plans = tiny_plans(NetSpec("plain", 3, 1, 3))  # a U-Net's plans: the token builds the toy network instead
    plans["configurations"]["3d_fullres"]["patch_size"] = [9, 10, 15]
    torch.manual_seed(0)
    source = build_backbone("toynet", (8, 12, 16), 1, 3)  # background, a, b
    ckpt = save_checkpoint(tmp_path / "src.pth", source, SOURCE_JSON, plans)
    trainer = start_trainer("nnUNetTrainerLoRAC_r2_1ep_1it_toynet", ckpt, dataset_json(["background", "a", "b", "c"]),
                            tmp_path, monkeypatch, plans)
    assert list(trainer.configuration_manager.patch_size) == [8, 12, 16] and not trainer.enable_deep_supervision
    network = trainer.network
    assert family_of(network) is TOY and network.head.out_channels == 4
    torch.testing.assert_close(network.head.weight[:3], source.head.weight)  # a and b keep the checkpoint's rows
    assert "ToyNet (a test's): patch size [9, 10, 15]" in Path(trainer.log_file).read_text(encoding="utf-8")
    static = type(trainer).build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 4, True)
    static.load_state_dict(network.state_dict())  # prediction rebuilds the same network from the name


def test_registering_refuses_clashes():
    with pytest.raises(ValueError, match="registered already"):
        register(FAMILIES["unetr"])
    clash = Family(name="other", description="x", stages=toy_stages, backbones=(Backbone("unetr", "other", 2),),
                   constructor=lambda: ToyNet, construct=lambda *a: None)
    with pytest.raises(ValueError, match="belong to another family"):
        register(clash)
    assert "other" not in FAMILIES
