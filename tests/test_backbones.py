"""Transformer backbones (UNETR, SwinUNETR, Primus) on tiny sizes: names, patch sizes, placement maps,
builders and pretrained loading. The end-to-end runs through nnU-Net are in test_backbones_end_to_end.py."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from nnunet_peft.architectures import (BACKBONES, PLANS_KEY, adjust_patch_size, backbone_family, build_backbone,
                                       patch_size_problem, plans_with_backbone_patch_size)
from nnunet_peft.injection import configure_finetuning
from nnunet_peft.placement import network_stages, target_modules, unique_modules
from nnunet_peft.name_grammar import ADAPTER_METHODS, TrainerNameError, parse_trainer_name
from nnunet_peft.training.pretrained import check_pretrained_compatible
from nnunet_peft.class_channel_mapping import Source, checkpoint_output_channels, head_modules, map_heads, resize_heads

warnings.filterwarnings("ignore", category=FutureWarning)

# tiny versions, built through the Python interface (the papers' sizes are the defaults)
TINY = {
    "unetr": ((16, 16, 16), {"feature_size": 4, "hidden_size": 24, "mlp_dim": 48, "num_heads": 2}),
    "swinunetr": ((64, 32, 32), {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1),
                                 "window_size": 4}),
    "primus": ((16, 16, 16), {"embed_dim": 48, "eva_depth": 4, "eva_numheads": 2}),
}


def tiny(token: str, out_channels: int = 3, patch=None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    patch_size, kwargs = TINY[token]
    return build_backbone(token, patch or patch_size, 1, out_channels, **kwargs)


def tiny_input(token: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, *TINY[token][0], generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ names

@pytest.mark.parametrize("token", list(BACKBONES))
@pytest.mark.parametrize("method", [*ADAPTER_METHODS, "Finetune", "SegHead", "NoFinetune"])
def test_every_method_takes_every_backbone(method, token):
    spec = parse_trainer_name(f"nnUNetTrainer{method}_{token}")
    assert spec.backbone == token and spec.method == method


def test_finetune_scratch_with_a_backbone_and_other_tokens():
    spec = parse_trainer_name("nnUNetTrainerFinetune_unetr_scratch_2ep")
    assert (spec.backbone, spec.scratch, spec.epochs) == ("unetr", True, 2)
    assert parse_trainer_name("nnUNetTrainerLoRAPT_r4_dec_unetr").placement == ("decoder",)
    assert parse_trainer_name("nnUNetTrainerCPLoRA").backbone is None


@pytest.mark.parametrize("name, why", [
    ("nnUNetTrainerLoRAPT_unetr_swinunetr", "backbone is given twice"),
    ("nnUNetTrainerLoRAPT_unetr_chzero", "takes no chzero"),
    ("nnUNetTrainerLoRAPT_primusS", "unknown token 'primusS'"),  # Primus-S is plain 'primus': one name per network
])
def test_bad_backbone_names_fail_with_the_reason(name, why):
    with pytest.raises(TrainerNameError, match=why):
        parse_trainer_name(name)


# ------------------------------------------------------------------ patch sizes

@pytest.mark.parametrize("token, planned, expected", [
    ("unetr", (20, 20, 20), (16, 16, 16)),
    ("unetr", (40, 56, 8), (48, 64, 16)),  # 2.5 and 3.5 patches round up, nothing below one patch
    ("unetr", (128, 128), (128, 128)),
    ("swinunetr", (96, 100, 60), (96, 96, 64)),
    ("swinunetr", (16, 20, 20), (32, 64, 32)),  # a 1-voxel bottleneck grows the largest planned axis
    ("primus", (20, 28, 160), (24, 32, 160)),
    ("primusL", (12, 12, 12), (16, 16, 16)),
])
def test_patch_size_moves_to_the_nearest_size_the_backbone_takes(token, planned, expected):
    adjusted = adjust_patch_size(token, planned)
    assert adjusted == expected
    assert patch_size_problem(token, adjusted) is None
    assert adjust_patch_size(token, adjusted) == adjusted  # a size it takes is kept


def test_patch_size_problems_say_why():
    assert "multiple of 16" in patch_size_problem("unetr", (16, 20, 16))
    assert "InstanceNorm" in patch_size_problem("swinunetr", (32, 32, 32))
    assert "3-D" in patch_size_problem("primus", (64, 64))
    with pytest.raises(ValueError, match="adjust_patch_size"):
        build_backbone("unetr", (20, 16, 16), 1, 2)
    with pytest.raises(ValueError, match="3-D"):
        adjust_patch_size("primus", (64, 64))


def _plans(patch_size, **config) -> dict:
    # the U-Net entry nnU-Net's planner writes; a backbone trainer never builds it
    unet = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {}, "_kw_requires_import": []}
    return {"configurations": {"3d_fullres": {"patch_size": list(patch_size), "architecture": unet, **config}}}


def test_plans_get_the_adjusted_patch_size_in_a_copy():
    plans = _plans((20, 40, 40))
    adjusted, note = plans_with_backbone_patch_size(plans, "3d_fullres", "unetr")
    assert adjusted["configurations"]["3d_fullres"]["patch_size"] == [16, 48, 48]
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [20, 40, 40]  # the caller's dict is untouched
    assert "[20, 40, 40]" in note and "[16, 48, 48]" in note and "plans.json" in note
    same, none = plans_with_backbone_patch_size(adjusted, "3d_fullres", "unetr")
    assert same is adjusted and none is None


# ------------------------------------------------------------------ building from names

def _managers(plans: dict):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    return manager, manager.get_configuration("3d_fullres")


@pytest.mark.parametrize("token", ["unetr", "swinunetr", "primus"])
def test_the_static_builder_makes_the_backbone_from_the_name_and_plans(token):
    from nnunet_peft.training.trainer import trainer_class

    patch, kwargs = TINY[token]
    plans = _plans(patch, **{PLANS_KEY: {BACKBONES[token].family: kwargs}})
    net = trainer_class(f"nnUNetTrainerFinetune_{token}").build_network_architecture(*_managers(plans), 1, 3, True)
    assert backbone_family(net) == BACKBONES[token].family
    out = net.eval()(tiny_input(token, 1))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *patch)  # one output: no deep supervision
    reference = tiny(token)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_the_papers_sizes_are_the_defaults():
    with torch.device("meta"):  # shapes only
        unetr = build_backbone("unetr", (96, 96, 96), 4, 3)
        primus_b = build_backbone("primusB", (96, 96, 96), 1, 2)
    swin = build_backbone("swinunetr", (96, 96, 96), 4, 3)  # MONAI reads values while building it: no meta
    assert unetr.vit.blocks[0].mlp.linear1.weight.shape == (3072, 768)
    assert unetr.vit.blocks[0].attn.qkv.weight.shape == (3 * 768, 768) and len(unetr.vit.blocks) == 12
    assert unetr.vit.blocks[0].attn.num_heads == 12 and unetr.encoder1.layer.conv1.conv.weight.shape[0] == 16
    assert swin.encoder1.layer.conv1.conv.weight.shape[0] == 48
    assert primus_b.eva.blocks[0].attn.num_heads == 12 and primus_b.down_projection.proj.weight.shape[0] == 792
    assert len(primus_b.eva.blocks) == 12


def test_unknown_plans_arguments_fail():
    with pytest.raises(ValueError, match="unknown argument"):
        build_backbone("unetr", (16, 16, 16), 1, 2, hidden=24)


# ------------------------------------------------------------------ placement maps

@pytest.mark.parametrize("token", ["unetr", "swinunetr", "primus"])
def test_stages_list_exactly_the_modules_the_forward_pass_uses(token):
    net = tiny(token).train()
    net(tiny_input(token)).square().mean().backward()
    used = {id(p) for p in net.parameters() if p.grad is not None}
    staged = {id(p) for s in network_stages(net) for m in s.modules for p in m.parameters()}
    names = {id(p): n for n, p in net.named_parameters()}
    assert not staged - used, [names[i] for i in staged - used]  # nothing unused is placed
    # the only parameter outside every stage: Primus's position embedding, a bare parameter of eva
    assert sorted(names[i] for i in used - staged) == (["eva.pos_embed"] if token == "primus" else [])
    assert [s.placement for s in network_stages(net)][-1] == "seg_layers"


def test_unetr_map_leaves_out_the_cross_attention_and_splits_at_the_skip_taps():
    net = tiny("unetr")
    stages = {s.name: s for s in network_stages(net)}
    placed = {id(m) for s in stages.values() for root in s.modules for m in root.modules()}
    for block in net.vit.blocks:
        assert id(block.norm_cross_attn) not in placed and id(block.cross_attn) not in placed
    blocks_of = {name: {i for i, b in enumerate(net.vit.blocks) if id(b.attn) in {id(m) for m in s.modules}}
                 for name, s in stages.items()}
    assert blocks_of["encoder.1"] == {0, 1, 2, 3} and blocks_of["encoder.2"] == {4, 5, 6}
    assert blocks_of["encoder.3"] == {7, 8, 9} and blocks_of["bottleneck"] == {10, 11}
    decoder = target_modules(net, ("decoder",))
    assert {id(m) for _, m in decoder} == {id(m) for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))
                                          and any(m is c for d in (net.decoder5, net.decoder4, net.decoder3,
                                                                   net.decoder2) for c in d.modules())}
    assert head_modules(net) == [("out.conv.conv", net.out.conv.conv)]


def test_unetr_vit_linear_layers_are_targets_and_the_cross_attention_is_not():
    net = tiny("unetr")
    layers = target_modules(net, ("bottleneck",))
    assert {type(m) for _, m in layers} == {nn.Linear}
    assert len(layers) == 2 * 4  # qkv, out_proj, linear1, linear2 of blocks 10 and 11
    every = {id(m) for _, m in target_modules(net, ("encoder", "bottleneck", "decoder"))}
    linears = [m for b in net.vit.blocks for m in b.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 12 * 4 and all(id(m) in every for m in linears)


def test_swinunetr_and_primus_maps():
    swin = tiny("swinunetr")
    stages = {s.name: s for s in network_stages(swin)}
    assert stages["bottleneck"].modules == (swin.swinViT.layers4, swin.encoder10)
    assert [n for n in stages if n.startswith("decoder")] == [f"decoder.{i}" for i in range(5)]
    assert any(m is swin.swinViT.layers1[0].downsample.reduction
               for _, m in unique_modules(stages["encoder.2"].modules, nn.Linear))
    primus = tiny("primus")
    stages = {s.name: s for s in network_stages(primus)}
    assert stages["bottleneck"].modules == (primus.eva.blocks[3], primus.eva.norm)
    assert stages["encoder.1"].modules == tuple(primus.eva.blocks[:3])
    head = primus.up_projection.decode[-1]
    assert isinstance(head, nn.ConvTranspose3d) and head_modules(primus) == [("up_projection.decode.2", head)]


@pytest.mark.parametrize("token", ["unetr", "swinunetr", "primus"])
def test_finetune_of_one_placement_trains_that_placement_and_the_head(token):
    net = configure_finetuning(tiny(token), "finetune", ("decoder",))
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    expected = {id(p) for s in network_stages(net) if s.placement in ("decoder", "seg_layers")
                for m in s.modules for p in m.parameters()}
    assert trainable == expected and expected
    seg_head = configure_finetuning(tiny(token), "seg_head")
    assert {n for n, p in seg_head.named_parameters() if p.requires_grad} == \
        {f"{prefix}.{k}" for prefix, h in head_modules(seg_head) for k, _ in h.named_parameters()}


# ------------------------------------------------------------------ pretrained weights

def _json(*names: str) -> dict:
    return {"labels": {"background": 0, **{n: i for i, n in enumerate(names, 1)}}, "channel_names": {"0": "MRI"}}


@pytest.mark.parametrize("token", ["unetr", "primus"])
def test_heads_of_another_class_count_are_mapped_by_name(token):
    source_net = tiny(token, out_channels=3, seed=1)
    source = Source(path="source.pth", weights=source_net.state_dict(), dataset_json=_json("a", "b"),
                    dataset_json_origin="test")
    check_pretrained_compatible(tiny(token, out_channels=4), "source.pth", weights=source.weights)  # heads skipped
    # as the trainer does: build with the checkpoint's count, load, then heads for the target's classes
    net = tiny(token, out_channels=3, seed=2)
    assert checkpoint_output_channels(net, source.weights) == 3
    net.load_state_dict(source.weights)
    new_ids = resize_heads(net, 4)
    (prefix, head), = head_modules(net)
    assert head.out_channels == 4 and {id(p) for p in head.parameters()} == new_ids
    statuses = map_heads(net, source, _json("b", "c", "a"))
    assert {s for s, _ in statuses.values()} == {"mapped"}
    theirs = source.weights[f"{prefix}.weight"]
    out_dim = 1 if isinstance(head, nn.ConvTranspose3d) else 0
    ours = head.weight.detach()
    for target, src in [(0, 0), (1, 2), (3, 1)]:  # background, b <- b, a <- a
        assert torch.equal(ours.select(out_dim, target), theirs.select(out_dim, src))
    assert torch.allclose(ours.select(out_dim, 2), theirs.movedim(out_dim, 0).mean(0))  # c: new
    assert torch.allclose(head.bias[2], source.weights[f"{prefix}.bias"].mean() - 5)


def test_a_checkpoint_of_another_patch_size_or_backbone_fails_with_the_tensors_and_the_fix():
    net = tiny("unetr")
    other_patch = tiny("unetr", patch=(32, 16, 16))
    with pytest.raises(ValueError) as err:
        check_pretrained_compatible(net, "ckpt.pth", "Dataset002_T", weights=other_patch.state_dict())
    text = str(err.value)
    assert "vit.patch_embedding.position_embeddings: checkpoint (1, 2, 24) vs network (1, 1, 24)" in text
    assert "nnunet-peft plan-from-checkpoint -d Dataset002_T --checkpoint ckpt.pth" in text
    assert "same backbone token" in text
    with pytest.raises(ValueError, match="missing from the checkpoint") as err:
        check_pretrained_compatible(net, "ckpt.pth", weights=tiny("primus").state_dict())
    assert "1 mismatching" not in str(err.value)


# ------------------------------------------------------------------ sharing (Python, no training)

def test_unetr_adapters_export_apply_and_merge_reproduce_the_trained_model(tmp_path):
    import json

    from adapter_helpers import perturb_
    from test_adapter_sharing import DATASET_JSON, tiny_plans

    from nnunet_peft.adapter_sharing import apply_adapter, export_adapter, merge_model_folder
    from nnunet_peft.injection import inject_adapters
    from nnunet_peft.model_folder import CHECKPOINT, checkpoint_dict, load_fold

    plans = tiny_plans()
    config = plans["configurations"]["3d_fullres"]
    config["patch_size"] = list(TINY["unetr"][0])
    config[PLANS_KEY] = {"unetr": TINY["unetr"][1]}
    source = build_backbone("unetr", TINY["unetr"][0], 2, 3, **TINY["unetr"][1])
    torch.save(checkpoint_dict(source.state_dict(), "nnUNetTrainerFinetune_unetr_scratch", plans, DATASET_JSON,
                               "3d_fullres", 0), tmp_path / "source.pth")
    trainer = "nnUNetTrainerLoRAPT_unetr_r2"
    trained = inject_adapters(copy.deepcopy(source), parse_trainer_name(trainer).peft_config())
    with torch.no_grad():
        perturb_([p for p in trained.parameters() if p.requires_grad], seed=3)
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    for name, content in [("plans.json", plans), ("dataset.json", DATASET_JSON)]:
        (model / name).write_text(json.dumps(content), encoding="utf-8")
    torch.save(checkpoint_dict(trained.state_dict(), trainer, plans, DATASET_JSON, "3d_fullres", 0),
               model / "fold_0" / CHECKPOINT)
    x = torch.randn(1, 2, *TINY["unetr"][0], generator=torch.Generator().manual_seed(0))
    reference = trained.eval()(x)

    export_adapter(model, tmp_path / "adapter")
    apply_adapter(tmp_path / "adapter", tmp_path / "source.pth", tmp_path / "applied")
    merge_model_folder(model, tmp_path / "merged")
    for folder in ["applied", "merged"]:
        network, ckpt = load_fold(tmp_path / folder, tmp_path / folder / "fold_0")
        assert backbone_family(network) == "unetr"
        assert torch.allclose(network.eval()(x), reference, atol=1e-5), folder
    assert ckpt["trainer_name"] == "nnUNetTrainerNoFinetune_unetr"  # the merged model: the stock backbone
    from nnunet_peft.folder_info import describe

    assert dict(describe(tmp_path / "source.pth")["fields"])["architecture"] == "UNETR (MONAI)"
    assert dict(describe(model)["fields"])["backbone"] == "UNETR (MONAI)"


def test_plan_from_checkpoint_checks_a_backbone_checkpoint_against_its_patch_size():
    from test_adapter_sharing import DATASET_JSON, tiny_plans

    from nnunet_peft.planning.from_checkpoint import check_weights_fit, checkpoint_backbone

    assert checkpoint_backbone("nnUNetTrainerFinetune_unetr_scratch_2ep") == "unetr"
    assert checkpoint_backbone("nnUNetTrainerCPLoRA") is None and checkpoint_backbone("nnUNetTrainer") is None
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"].update(patch_size=[16, 16, 16], **{PLANS_KEY: {"unetr": TINY["unetr"][1]}})
    weights = build_backbone("unetr", (16, 16, 16), 2, 5, **TINY["unetr"][1]).state_dict()  # 5 classes: heads differ
    check_weights_fit(plans, "3d_fullres", DATASET_JSON, weights, "source.pth", backbone="unetr")
    plans["configurations"]["3d_fullres"]["patch_size"] = [32, 32, 32]  # not the checkpoint's: refused
    with pytest.raises(ValueError, match="position_embeddings"):
        check_weights_fit(plans, "3d_fullres", DATASET_JSON, weights, "source.pth", backbone="unetr")


def test_plan_from_checkpoint_keeps_a_unetr_checkpoints_patch_size_and_names_its_backbone(tmp_path, monkeypatch):
    import json

    from test_plans_from_checkpoint import (SOURCE_JSON, SOURCE_PLANS, TARGET_FINGERPRINT, TARGET_JSON, _fake_nnunet,
                                            _target_with_images)

    from nnunet_peft.planning import from_checkpoint as pfc

    raw, pre = tmp_path / "raw", tmp_path / "pre"
    _target_with_images(raw, 1)
    (raw / "Dataset902_Tgt" / "dataset.json").write_text(json.dumps(TARGET_JSON), encoding="utf-8")
    plans = copy.deepcopy(SOURCE_PLANS)
    plans["configurations"]["3d_fullres"].update(patch_size=[16, 32, 32], **{PLANS_KEY: {"unetr": TINY["unetr"][1]}})
    weights = build_backbone("unetr", (16, 32, 32), 1, 2, **TINY["unetr"][1]).state_dict()
    torch.save({"init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": SOURCE_JSON},
                "network_weights": weights, "trainer_name": "nnUNetTrainerFinetune_unetr_scratch",
                "current_epoch": 1}, tmp_path / "ckpt.pth")
    log: list[str] = []
    monkeypatch.setattr(pfc, "_run_nnunet", _fake_nnunet(TARGET_FINGERPRINT, {}))
    path = pfc.plan_from_checkpoint(902, tmp_path / "ckpt.pth", num_processes=1, raw_folder=raw,
                                    preprocessed_folder=pre, log=log.append)
    config = json.loads(path.read_text(encoding="utf-8"))["configurations"]["3d_fullres"]
    assert config["patch_size"] == [16, 32, 32] and config[PLANS_KEY] == {"unetr": TINY["unetr"][1]}
    assert any("kept from the checkpoint: the unetr backbone" in line for line in log)
    assert log[-1].strip().endswith(f"-tr nnUNetTrainerCPLoRA_unetr -pretrained_weights {tmp_path / 'ckpt.pth'}")


def test_the_docs_unetr_parameter_table_is_what_the_code_builds():
    """The table in docs/transformer_backbones.md is the output of scripts/backbone_parameters.py; regenerate
    it when a method changes."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("backbone_parameters", root / "scripts" / "backbone_parameters.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    expected = script.markdown(script.parameter_rows("unetr", (96, 96, 96), in_channels=1, classes=3, rank=8))
    page = (root / "docs" / "transformer_backbones.md").read_text(encoding="utf-8")
    assert expected in page
    rows = dict(line.split(" | ")[:2] for line in expected.splitlines())
    assert rows["| SegHead"] == "51"  # 16 features x 3 classes + 3 biases: the head alone


# ------------------------------------------------------------------ layers read as .weight

@pytest.fixture
def fused_qkv_primus(monkeypatch):
    """A tiny Primus whose Eva fuses q, k, v: timm's attention then reads ``qkv.weight`` in F.linear."""
    import functools

    import dynamic_network_architectures.architectures.primus as primus

    monkeypatch.setattr(primus, "Eva", functools.partial(primus.Eva, qkv_fused=True))
    net = tiny("primus")
    assert net.eva.blocks[0].attn.qkv is not None and net.eva.blocks[0].attn.q_bias is not None
    return net


@pytest.mark.parametrize("method", ["lora_c", "lora_pt", "hyps"])
def test_a_layer_its_parent_reads_as_weight_is_refused_before_anything_changes(method, fused_qkv_primus):
    from nnunet_peft import PeftConfig, adapter_layers, inject_adapters

    net = fused_qkv_primus
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"encoder\.1/attn\.qkv \(eva\.blocks\.0\.attn\.qkv\) cannot take an "
                                         r"adapter: its parent reads its weight directly.*qkv_bias_separate = True"):
        inject_adapters(net, PeftConfig(method, rank=2))
    assert not adapter_layers(net) and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    inject_adapters(net, PeftConfig(method, rank=2, placement=("decoder",)))  # the Eva left out: accepted


def test_the_suggested_fix_computes_the_same_network_and_adapts_it(fused_qkv_primus):
    from nnunet_peft import PeftConfig, adapter_layers, inject_adapters

    net = fused_qkv_primus.eval()
    x = tiny_input("primus")
    with torch.no_grad():
        reference = net(x)
        for block in net.eva.blocks:
            block.attn.qkv_bias_separate = True
        assert torch.allclose(net(x), reference, atol=1e-5)
        inject_adapters(net, PeftConfig("lora_c", rank=2, placement=("bottleneck",)))
        qkv = net.eva.blocks[-1].attn.qkv
        assert qkv in adapter_layers(net)
        qkv.lora_B.normal_()  # the adapter on the fused qkv runs: perturbing it moves the output
        assert (net(x) - reference).abs().max() > 1e-3


# ------------------------------------------------------------------ SwinUNETR's merging before MONAI 1.5
def _merging_pair(dim: int = 4):
    from monai.networks.nets.swin_unetr import PatchMerging

    from nnunet_peft.architectures.swinunetr import legacy_patch_merging

    torch.manual_seed(0)
    current = PatchMerging(dim=dim, spatial_dims=3)
    legacy = legacy_patch_merging()(dim=dim, spatial_dims=3)
    legacy.load_state_dict(current.state_dict())
    return current, legacy


def test_legacy_merging_ignores_the_two_sub_volumes_monai_before_1_5_never_read():
    current, legacy = _merging_pair()
    x = torch.randn(1, 4, 6, 4, 4)
    changed = x.clone()
    changed[:, 1::2, 1::2, 0::2] += 1.0  # sub-volume (1,1,0)
    changed[:, 0::2, 1::2, 1::2] -= 1.0  # sub-volume (0,1,1)
    with torch.no_grad():
        assert torch.equal(legacy(x), legacy(changed))
        assert not torch.allclose(current(x), current(changed))
        # the other six sub-volumes are read by both: same weights, different outputs, so the orders differ
        assert not torch.allclose(legacy(x), current(x))
        # odd sizes are padded as MONAI pads them; 2-D inputs (below) go through MONAI's unchanged order
        assert legacy(torch.randn(1, 3, 5, 3, 4)).shape == current(torch.randn(1, 3, 5, 3, 4)).shape == (1, 2, 3, 2, 8)
    from monai.networks.nets.swin_unetr import PatchMerging

    from nnunet_peft.architectures.swinunetr import legacy_patch_merging

    current2d = PatchMerging(dim=4, spatial_dims=2)
    legacy2d = legacy_patch_merging()(dim=4, spatial_dims=2)
    legacy2d.load_state_dict(current2d.state_dict())
    flat = torch.randn(1, 4, 6, 4)
    with torch.no_grad():
        assert torch.equal(legacy2d(flat), current2d(flat))


def test_merging_pre15_from_backbone_kwargs_builds_the_legacy_module_in_every_stage():
    net = build_backbone("swinunetr", (64, 64, 64), 1, 2, feature_size=12, downsample="merging_pre15")
    merges = [m for m in net.modules() if "PatchMerging" in type(m).__name__]
    assert merges and all(type(m).__name__ == "LegacyPatchMerging" for m in merges)
    default = build_backbone("swinunetr", (64, 64, 64), 1, 2, feature_size=12)
    assert not any(type(m).__name__ == "LegacyPatchMerging" for m in default.modules())
