"""Starting from a checkpoint with other classes or input channels, and the load report.

Tiny synthetic checkpoints (nnU-Net's own network builder, weights that look trained). The
trainer-level tests build the trainer as ``nnUNetv2_train`` does, load the checkpoint with nnU-Net's
``load_pretrained_weights`` and run the plugin's setup, without data or a training loop.
"""
from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from torch import nn

from networks import NetSpec, arch_kwargs, outputs, pretrained_network, random_input
from nnunet_peft import PeftConfig, inject_adapters
from nnunet_peft.injection import adapter_layers
from nnunet_peft.placement import input_convolution
from nnunet_peft.training.load_report import build_load_report, format_load_report
from nnunet_peft.name_grammar import TrainerNameError, parse_trainer_name
from nnunet_peft.class_channel_mapping import (LABEL_MAP_ENV, NEW_CLASS_LOGIT_MARGIN, adapt_input_conv,
                                               map_classes, map_heads, match_channels, output_class_names,
                                               parse_label_map, read_source)

SPEC = NetSpec("plain", 3, in_channels=1, num_classes=3)


def dataset_json(labels: list[str], channels: list[str] = ("CT",)) -> dict:
    return {"channel_names": {str(i): c for i, c in enumerate(channels)},
            "labels": {name: i for i, name in enumerate(labels)}, "numTraining": 2, "file_ending": ".nii.gz"}


SOURCE_JSON = dataset_json(["background", "a", "b"])


def save_checkpoint(path: Path, network: nn.Module, source_json: dict | None, plans: dict | None = None) -> Path:
    checkpoint = {"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer"}
    if source_json is not None:
        checkpoint["init_args"] = {"plans": plans or {}, "configuration": "3d_fullres", "fold": 0,
                                   "dataset_json": source_json}
    torch.save(checkpoint, path)
    return path


def target_network(spec: NetSpec, source: nn.Module, seed: int = 5) -> nn.Module:
    """A network for the target with the checkpoint's body, as nnU-Net's loader leaves it (heads fresh)."""
    net = pretrained_network(spec, seed=seed)
    net.load_state_dict({k: v for k, v in source.state_dict().items() if ".seg_layers." not in k}, strict=False)
    return net


@torch.no_grad()
def logits(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return outputs(net.eval(), x)


# ------------------------------------------------------------------ classes

def test_two_classes_to_three_keeps_the_shared_outputs_and_the_segmentation(tmp_path):
    source = pretrained_network(SPEC, seed=1)
    ckpt = read_source(save_checkpoint(tmp_path / "src.pth", source, SOURCE_JSON))
    target_json = dataset_json(["background", "b", "c", "a"])  # other order, one new class
    target = target_network(NetSpec("plain", 3, 1, 4), source)
    statuses = map_heads(target, ckpt, target_json)
    assert {s for s, _ in statuses.values()} == {"mapped"}
    assert len(statuses) == 2 * len(target.decoder.seg_layers)  # weight and bias of every deep-supervision head
    x = random_input(SPEC)
    for before, after in zip(logits(source, x), logits(target, x)):  # every head
        torch.testing.assert_close(after[:, [0, 3, 1]], before)  # background, a, b
        # the new class sits below the best matched class everywhere: the segmentation is the base's
        assert (after[:, 2] < after[:, [0, 1, 3]].max(1).values).all()
        base_labels = torch.tensor([0, 3, 1])[before.argmax(1)]
        assert torch.equal(after.argmax(1), base_labels)
    # new class: mean of the matched rows, mean bias minus the margin; gradients reach it
    head = target.decoder.seg_layers[-1]
    torch.testing.assert_close(head.weight[2], head.weight[[0, 1, 3]].mean(0))
    torch.testing.assert_close(head.bias[2], head.bias[[0, 1, 3]].mean() - NEW_CLASS_LOGIT_MARGIN)
    target.train()
    out = target(x)[0]
    torch.nn.functional.cross_entropy(out, torch.full_like(out[:, 0], 2, dtype=torch.long)).backward()
    assert head.weight.grad[2].abs().sum() > 0 and head.bias.grad[2] != 0


def test_renamed_class_through_the_label_map(tmp_path):
    source = pretrained_network(SPEC, seed=1)
    ckpt = read_source(save_checkpoint(tmp_path / "src.pth", source, SOURCE_JSON))
    target_json = dataset_json(["background", "a", "lesion"])
    mapping, _ = map_classes(SOURCE_JSON, target_json, parse_label_map("lesion=b"))
    assert mapping.sources == [0, 1, 2] and mapping.how == ["name", "name", "map"]
    target = target_network(SPEC, source)
    statuses = map_heads(target, ckpt, target_json, parse_label_map("lesion=b"))
    status, reason = next(iter(statuses.values()))
    assert status == "loaded" and f"lesion <- b ({LABEL_MAP_ENV})" in reason  # same tensors, other names
    x = random_input(SPEC)
    for before, after in zip(logits(source, x), logits(target, x)):
        torch.testing.assert_close(after, before)
    # without the map, 'lesion' is a new class and 'b' is dropped
    mapping, _ = map_classes(SOURCE_JSON, target_json)
    assert mapping.sources == [0, 1, None] and "dropped from the checkpoint: b" in mapping.describe()
    # one checkpoint class can seed several target classes (a split); 'name=' forces a new class
    mapping, _ = map_classes(SOURCE_JSON, dataset_json(["background", "front", "back", "a"]),
                             parse_label_map("front=b, back=b, a="))
    assert mapping.sources == [0, 2, 2, None]


def test_label_map_errors_name_what_exists():
    with pytest.raises(ValueError, match="not target=checkpoint"):
        parse_label_map("lesion")
    with pytest.raises(ValueError, match=r"\['tumour'\] not among the checkpoint's classes \['background', 'a', 'b'\]"):
        map_classes(SOURCE_JSON, dataset_json(["background", "lesion"]), parse_label_map("lesion=tumour"))
    with pytest.raises(ValueError, match=r"\['cyst'\] not among the target's classes"):
        map_classes(SOURCE_JSON, dataset_json(["background", "lesion"]), parse_label_map("cyst=a"))


def test_same_count_without_shared_names_maps_by_position(tmp_path):
    # binary haemorrhage to binary SAH: the heads were kept before label mapping existed, and still are
    mapping, _ = map_classes(dataset_json(["background", "haemorrhage"]),
                             dataset_json(["background", "subarachnoid haemorrhage"]))
    assert mapping.sources == [0, 1] and mapping.how == ["position", "position"]
    # more classes and no shared foreground name: background only, the rest new
    mapping, _ = map_classes(dataset_json(["background", "hippocampus"]),
                             dataset_json(["background", "anterior", "posterior"]))
    assert mapping.sources == [0, None, None]
    assert output_class_names({"labels": {"background": 0, "x": [1, 2], "y": 2}}) is None  # regions


def test_without_the_checkpoints_classes_heads_are_kept_only_when_they_fit(tmp_path):
    source = pretrained_network(SPEC, seed=1)
    ckpt = read_source(save_checkpoint(tmp_path / "src.pth", source, None))
    assert ckpt.dataset_json is None and "no dataset.json" in ckpt.dataset_json_origin
    same = target_network(SPEC, source)
    statuses = map_heads(same, ckpt, SOURCE_JSON)
    assert {s for s, _ in statuses.values()} == {"loaded"}
    assert torch.equal(same.decoder.seg_layers[0].weight, source.decoder.seg_layers[0].weight)
    other = target_network(NetSpec("plain", 3, 1, 4), source)
    fresh = other.decoder.seg_layers[0].weight.clone()
    statuses = map_heads(other, ckpt, dataset_json(["background", "a", "b", "c"]))
    assert {s for s, _ in statuses.values()} == {"re-initialised"}
    assert torch.equal(other.decoder.seg_layers[0].weight, fresh)


def test_dataset_json_beside_the_checkpoint_is_the_fallback(tmp_path):
    fold = tmp_path / "Trainer__Plans__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    (fold.parent / "dataset.json").write_text(json.dumps(SOURCE_JSON))
    ckpt = read_source(save_checkpoint(fold / "checkpoint_final.pth", pretrained_network(SPEC), None))
    assert ckpt.dataset_json == SOURCE_JSON and ckpt.dataset_json_origin.endswith("dataset.json")


# ------------------------------------------------------------------ input channels

@pytest.mark.parametrize("arch", ["plain", "resenc"])
@pytest.mark.parametrize("mode", ["zero", "repeat", "copy"])
def test_one_channel_checkpoint_on_a_two_channel_target(arch, mode):
    one, two = NetSpec(arch, 3, 1, 3), NetSpec(arch, 3, 2, 3)
    source = pretrained_network(one, seed=1)
    target = deepcopy(source)
    conv = input_convolution(target)
    old = conv.weight.detach().clone()
    sources, how = match_channels(["CT"], ["CT", "mask"], 1)
    assert (sources, how) == ([0, None], "by name")
    reason = adapt_input_conv(conv, mode, sources, copy_channel=0)
    assert conv.weight.shape[1] == 2 and conv.in_channels == 2 and "1 -> 2 channels" in reason
    # one module registered under two names: both see the new kernel
    names = [k for k, v in target.state_dict(keep_vars=True).items() if v is conv.weight]
    assert len(names) >= 2 and all(target.state_dict()[k].shape[1] == 2 for k in names)
    x1 = random_input(one)
    x2 = random_input(two, seed=3)
    x2[:, :1] = x1
    if mode == "zero":  # any second channel: the output is the checkpoint's
        for a, b in zip(logits(source, x1), logits(target, x2)):
            torch.testing.assert_close(b, a)
        assert conv.weight[:, 1].abs().sum() == 0
    elif mode == "repeat":  # the same image in both channels gives the checkpoint's output
        torch.testing.assert_close(conv.weight[:, 0], old[:, 0] / 2)
        for a, b in zip(logits(source, x1), logits(target, x1.repeat(1, 2, 1, 1, 1))):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(conv.weight[:, 1], old[:, 0])
        torch.testing.assert_close(conv.weight[:, 0], old[:, 0])


def test_channel_matching_by_name_and_position():
    # four channels to three, named differently in case; by name, in the target's order
    assert match_channels(["T1", "T1Gd", "T2", "FLAIR"], ["flair", "t1", "t2"], 4) == ([3, 0, 2], "by name")
    assert match_channels(["CT"], ["T1", "T2"], 1) == ([0, None], "by position (no channel names in common)")
    with pytest.raises(ValueError, match="chcopy3: the checkpoint has channels 0..0"):
        adapt_input_conv(nn.Conv3d(1, 4, 3), "copy", [0, None], copy_channel=3)


def test_channel_tokens_in_the_trainer_name():
    spec = parse_trainer_name("nnUNetTrainerCPLoRA_chzero_r4")
    assert (spec.input_channels, spec.input_channel_token, spec.peft_config().train_input_conv) == ("zero", "chzero", True)
    spec = parse_trainer_name("nnUNetTrainerFinetune_chcopy1_5ep")
    assert (spec.input_channels, spec.copy_channel, spec.input_channel_token) == ("copy", 1, "chcopy1")
    assert parse_trainer_name("nnUNetTrainerNoFinetune_chrepeat").input_channels == "repeat"
    assert parse_trainer_name("nnUNetTrainerLoRAC").peft_config().train_input_conv is False
    with pytest.raises(TrainerNameError, match="given twice"):
        parse_trainer_name("nnUNetTrainerLoRAC_chzero_chrepeat")
    with pytest.raises(TrainerNameError, match="'scratch' loads no checkpoint"):
        parse_trainer_name("nnUNetTrainerFinetune_scratch_chzero")


def test_adapted_first_convolution_trains_fully_instead_of_taking_an_adapter():
    net = pretrained_network(NetSpec("plain", 3, 2, 3))
    inject_adapters(net, PeftConfig("cp_lora", rank=2, train_input_conv=True))
    first = input_convolution(net)
    assert isinstance(first, nn.Conv3d) and first.weight.requires_grad
    assert all(layer.base_layer is not first for layer in adapter_layers(net))
    assert PeftConfig.from_dict(PeftConfig("cp_lora", train_input_conv=True).to_dict()).train_input_conv
    assert PeftConfig.from_dict({"method": "cp_lora"}).train_input_conv is False  # configs saved before the field


# ------------------------------------------------------------------ load report

def test_load_report_counts_every_tensor_once():
    net = pretrained_network(SPEC)
    stock_ids = {id(v) for v in net.state_dict(keep_vars=True).values()}
    heads = {id(p): ("mapped", "classes") for p in net.decoder.seg_layers.parameters()}
    inject_adapters(net, PeftConfig("lora_c", rank=2))
    report = build_load_report(net, heads, stock_ids, source="src.pth", default=("loaded", "same name and shape"))
    counts = report["counts"]
    unique = {id(v) for v in net.state_dict(keep_vars=True).values()}
    assert sum(c["tensors"] for c in counts.values()) == len(report["tensors"]) == len(unique)
    assert counts["mapped"]["tensors"] == 2 * len(net.decoder.seg_layers)
    adapter_params = sum(len(list(layer.adapter_parameters())) for layer in adapter_layers(net))
    assert counts["adapter"]["tensors"] >= adapter_params > 0
    assert counts["loaded"]["trainable_values"] == 0  # the base is frozen
    assert counts["re-initialised"]["tensors"] == 0
    text = format_load_report(report)
    assert text.startswith("load report: -pretrained_weights src.pth")
    assert "decoder.seg_layers.0.weight" in text and "counts: loaded" in text
    assert ".all_modules.0." not in text  # a convolution registered twice is listed once


# ------------------------------------------------------------------ the trainer, as nnUNetv2_train drives it

def tiny_plans(spec: NetSpec) -> dict:
    return {
        "dataset_name": "Dataset998_Target", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [8, 16, 16],
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "label_manager": "LabelManager",
        "experiment_planner_used": "ExperimentPlanner",
        "foreground_intensity_properties_per_channel": {},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": list(spec.patch), "median_image_size_in_voxels": list(spec.patch), "spacing": [1.0, 1.0, 1.0],
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
            "batch_dice": False,
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": arch_kwargs(spec),
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        }},
    }


def start_trainer(name: str, ckpt: Path, target_json: dict, tmp_path: Path, monkeypatch, plans: dict):
    """What nnUNetv2_train does up to run_training, then the plugin's on_train_start setup."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_peft.training.trainer import trainer_class

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    data = tmp_path / "preprocessed" / plans["dataset_name"] / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True, exist_ok=True)
    (data / "case000.b2nd").touch()  # initialize() infers the dataset class from the file endings
    monkeypatch.setattr("sys.argv", ["nnUNetv2_train", "998", "3d_fullres", "0", "-tr", name,
                                     "-pretrained_weights", str(ckpt)])
    trainer = trainer_class(name)({**deepcopy(plans), "continue_training": False}, "3d_fullres", 0, target_json,
                                  device=torch.device("cpu"))
    trainer.initialize()
    load_pretrained_weights(trainer.network, str(ckpt))
    trainer._setup_peft(from_checkpoint=False)
    return trainer


def test_trainer_adapts_channels_and_classes_and_writes_the_load_report(tmp_path, monkeypatch):
    one, two = NetSpec("plain", 3, 1, 3), NetSpec("plain", 3, 2, 4)
    plans = tiny_plans(one)
    source = pretrained_network(one, seed=1)
    ckpt = save_checkpoint(tmp_path / "src.pth", source, SOURCE_JSON, plans)
    target_json = dataset_json(["background", "a", "b", "c"], channels=["CT", "PET"])
    name = "nnUNetTrainerCPLoRA_r2_chzero_1ep_1it"
    trainer = start_trainer(name, ckpt, target_json, tmp_path, monkeypatch, plans)
    network = trainer.network
    first = input_convolution(network)
    assert first.weight.shape[1] == 2 and first.weight.requires_grad and not adapter_layers(network)[0] is first

    x = random_input(two, seed=4)
    source_out, target_out = logits(source, x[:, :1]), logits(network, x)
    for before, after in zip(source_out, target_out):  # zero mode: PET is ignored at step 0; a, b unchanged
        torch.testing.assert_close(after[:, :3], before, atol=1e-5, rtol=1e-5)
        assert torch.equal(after.argmax(1), before.argmax(1))

    folder = Path(trainer.output_folder)
    report = json.loads((folder / "load_report.json").read_text(encoding="utf-8"))
    counts = report["counts"]
    n_heads = len(network.decoder.seg_layers)
    assert counts["mapped"]["tensors"] == 2 * n_heads + 1  # every head's weight and bias, and the first kernel
    assert counts["re-initialised"]["tensors"] == 0 and counts["adapter"]["tensors"] > 0
    assert report["input_channels"]["token"] == "chzero" and report["input_channels"]["sources"] == [0, None]
    assert [m["checkpoint"] for m in report["classes"]["mapping"]] == ["background", "a", "b", None]
    by_name = {t["name"]: t for t in report["tensors"]}
    first_entry = by_name["encoder.stages.0.0.convs.0.conv.weight"]
    assert first_entry["status"] == "mapped" and first_entry["trainable"] and "1: zero" in first_entry["reason"]
    assert by_name["encoder.stages.0.0.convs.0.conv.bias"]["status"] == "loaded"
    log = Path(trainer.log_file).read_text(encoding="utf-8")
    assert "load report: -pretrained_weights" in log and "c (new)" in log

    # prediction rebuilds this network from the class name alone and loads the state strictly
    static = type(trainer).build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 2, 4, True)
    static.load_state_dict(network.state_dict())


def test_channel_names_match_whatever_their_case():
    # a BraTS checkpoint spells it FLAIR, many targets Flair: the same channel, as class names are
    assert match_channels(["T1", "T1Gd", "T2", "FLAIR"], ["Flair"], 4) == ([3], "by name")
    assert match_channels(["FLAIR", "T1"], ["t1", "Flair", "ADC"], 2) == ([1, 0, None], "by name")


def test_trainer_gives_a_target_flair_the_checkpoints_flair_kernel(tmp_path, monkeypatch):
    one = NetSpec("plain", 3, 1, 3)
    plans = tiny_plans(one)
    source = pretrained_network(one, seed=1)
    ckpt = save_checkpoint(tmp_path / "src.pth", source, dataset_json(["background", "a", "b"], ["FLAIR"]), plans)
    target_json = dataset_json(["background", "a", "b"], channels=["T1", "Flair"])
    trainer = start_trainer("nnUNetTrainerLoRAC_r2_chzero_1ep_1it", ckpt, target_json, tmp_path, monkeypatch, plans)
    first = input_convolution(trainer.network).weight
    torch.testing.assert_close(first[:, 1], input_convolution(source).weight[:, 0])
    assert first[:, 0].abs().sum() == 0  # T1 is new: zero
    report = json.loads((Path(trainer.output_folder) / "load_report.json").read_text(encoding="utf-8"))
    assert report["input_channels"]["sources"] == [None, 0]


def test_trainer_refuses_other_channels_without_a_token(tmp_path, monkeypatch):
    plans = tiny_plans(SPEC)
    ckpt = save_checkpoint(tmp_path / "src.pth", pretrained_network(SPEC, seed=1), SOURCE_JSON, plans)
    with pytest.raises(ValueError, match="takes 1 input channel.*_chzero.*_chrepeat.*_chcopy<i>"):
        start_trainer("nnUNetTrainerLoRAC_r2", ckpt, dataset_json(["background", "a", "b"], ["CT", "PET"]),
                      tmp_path, monkeypatch, plans)


def test_no_finetune_on_an_extended_label_set_reproduces_the_base(tmp_path, monkeypatch):
    plans = tiny_plans(SPEC)
    source = pretrained_network(SPEC, seed=1)
    ckpt = save_checkpoint(tmp_path / "src.pth", source, SOURCE_JSON, plans)
    trainer = start_trainer("nnUNetTrainerNoFinetune", ckpt, dataset_json(["background", "a", "b", "c"]),
                            tmp_path, monkeypatch, plans)
    x = random_input(SPEC, seed=7)
    for before, after in zip(logits(source, x), logits(trainer.network, x)):
        assert torch.equal(after.argmax(1), before.argmax(1))
    report = json.loads((Path(trainer.output_folder) / "load_report.json").read_text(encoding="utf-8"))
    assert report["counts"]["adapter"]["tensors"] == 0
    assert all(not t["trainable"] for t in report["tensors"])
