"""plan-from-checkpoint: target plans derived from a checkpoint alone, then nnU-Net preprocessing."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_peft.commands import plan_from_checkpoint as command
from nnunet_peft.planning import from_checkpoint as pfc

# A 2.8.1 ExperimentPlanner output for a 20x24x24 CT volume at spacing (2, 1, 1), trimmed to what the
# code reads, plus the lowres/cascade entries the planner adds for larger images.
_ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
_FULLRES = {
    "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
    "patch_size": [20, 24, 24], "median_image_size_in_voxels": [20.0, 24.0, 24.0], "spacing": [2.0, 1.0, 1.0],
    "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
    "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
    "architecture": _ARCH, "batch_dice": False,
}
SOURCE_STATS = {"0": {"max": -105.0, "mean": -301.5, "median": -302.0, "min": -466.8, "percentile_00_5": -428.3,
                      "percentile_99_5": -174.6, "std": 50.0}}
SOURCE_PLANS = {
    "dataset_name": "Dataset901_Src", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [2.0, 1.0, 1.0], "original_median_shape_after_transp": [20, 24, 24],
    "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "configurations": {
        "3d_fullres": _FULLRES,
        "3d_lowres": {**_FULLRES, "data_identifier": "nnUNetPlans_3d_lowres", "spacing": [4.0, 2.0, 2.0],
                      "next_stage": "3d_cascade_fullres"},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        "3d_fullres_bs4": {"inherits_from": "3d_fullres", "batch_size": 4},
    },
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": SOURCE_STATS,
}
TARGET_STATS = {"0": {"max": 40.0, "mean": -200.0, "median": -200.0, "min": -380.0, "percentile_00_5": -330.0,
                      "percentile_99_5": -70.0, "std": 50.0}}
# three target cases at spacing (3, 0.8, 0.8), transposed order = stored order here
TARGET_FINGERPRINT = {
    "spacings": [[3.0, 0.8, 0.8]] * 3, "shapes_after_crop": [[16, 30, 28], [16, 30, 28], [18, 30, 28]],
    "foreground_intensity_properties_per_channel": TARGET_STATS, "median_relative_size_after_cropping": 1.0,
}
SOURCE_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 4,
               "file_ending": ".nii.gz"}
TARGET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1, "cyst": 2}, "numTraining": 3,
               "file_ending": ".nii.gz"}


def _build(plans: dict, configuration: str = "3d_fullres", **kw) -> dict:
    return pfc.build_target_plans(deepcopy(plans), configuration, "Dataset902_Tgt", "nnUNetPlans_pretrained",
                                  TARGET_FINGERPRINT, "SimpleITKIO", **kw)


def _network(plans: dict, dataset_json: dict, configuration: str = "3d_fullres") -> torch.nn.Module:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    return nnUNetTrainer.build_network_architecture(
        pm, pm.get_configuration(configuration), len(dataset_json["channel_names"]),
        pm.get_label_manager(dataset_json).num_segmentation_heads, True)


def _save_checkpoint(path: Path, plans: dict, dataset_json: dict, configuration: str = "3d_fullres") -> Path:
    """A checkpoint with the fields nnUNetTrainer.save_checkpoint writes that plan-from-checkpoint reads."""
    torch.save({"init_args": {"plans": plans, "configuration": configuration, "fold": 0,
                              "dataset_json": dataset_json, "unpack_dataset": True},
                "network_weights": _network(plans, dataset_json, configuration).state_dict(),
                "trainer_name": "nnUNetTrainer", "current_epoch": 1}, path)
    return path


# ---------------------------------------------------------------- plans derivation (pure, fast)

def test_target_plans_keep_the_checkpoint_configuration_and_drop_the_others():
    plans = _build(SOURCE_PLANS)
    assert list(plans["configurations"]) == ["3d_fullres"]
    config = plans["configurations"]["3d_fullres"]
    for key in ("architecture", "patch_size", "spacing", "normalization_schemes", "batch_size", "use_mask_for_norm",
                "resampling_fn_data_kwargs"):
        assert config[key] == _FULLRES[key], key
    assert config["data_identifier"] == "nnUNetPlans_pretrained_3d_fullres"
    assert "next_stage" not in config and "inherits_from" not in config
    assert plans["dataset_name"] == "Dataset902_Tgt" and plans["plans_name"] == "nnUNetPlans_pretrained"
    assert plans["transpose_forward"] == [0, 1, 2]
    # target geometry: medians of the target, resampled to the source spacing (16*3/2=24, 30*.8=24, 28*.8=22.4)
    assert plans["original_median_spacing_after_transp"] == pytest.approx([3.0, 0.8, 0.8])
    assert plans["original_median_shape_after_transp"] == [16, 30, 28]
    assert config["median_image_size_in_voxels"] == [24.0, 24.0, 22.0]
    assert plans["foreground_intensity_properties_per_channel"] == SOURCE_STATS
    assert SOURCE_PLANS["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"  # untouched


def test_target_intensity_statistics_on_request():
    plans = _build(SOURCE_PLANS, intensity_properties="target")
    assert plans["foreground_intensity_properties_per_channel"] == TARGET_STATS
    assert plans["pretrained_from"]["intensity_properties"] == "target"
    with pytest.raises(ValueError, match="intensity_properties must be one of"):
        _build(SOURCE_PLANS, intensity_properties="mean")


def test_inherited_configuration_is_resolved_into_a_standalone_one():
    config = _build(SOURCE_PLANS, "3d_fullres_bs4")["configurations"]["3d_fullres_bs4"]
    assert config["batch_size"] == 4 and config["architecture"] == _ARCH and "inherits_from" not in config


def test_transposed_source_keeps_its_axis_order():
    source = deepcopy(SOURCE_PLANS)
    source["transpose_forward"], source["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    plans = _build(source)
    assert plans["transpose_forward"] == [2, 0, 1] and plans["transpose_backward"] == [1, 2, 0]
    assert plans["original_median_shape_after_transp"] == [28, 16, 30]
    # axes (28*.8, 16*3, 30*.8) resampled to (2, 1, 1) -> (11.2, 48, 24)
    assert plans["configurations"]["3d_fullres"]["median_image_size_in_voxels"] == [11.0, 48.0, 24.0]


def test_cascade_and_unknown_configurations_are_refused():
    with pytest.raises(ValueError, match="cascade stage.*3d_lowres"):
        _build(SOURCE_PLANS, "3d_cascade_fullres")
    with pytest.raises(ValueError, match="'2d' is not in the checkpoint's plans; available: 3d_fullres"):
        _build(SOURCE_PLANS, "2d")


def test_clipping_warning_only_when_target_range_leaves_the_source_window():
    # target [-330, -70] vs source window [-428.3, -174.6]: 104.6 of 260 outside = 40%
    (warning,) = pfc._clipping_warnings(SOURCE_STATS, TARGET_STATS, ["CTNormalization"])
    assert "40%" in warning and "--intensity-properties target" in warning
    assert pfc._clipping_warnings(SOURCE_STATS, SOURCE_STATS, ["CTNormalization"]) == []
    assert pfc._clipping_warnings(SOURCE_STATS, TARGET_STATS, ["ZScoreNormalization"]) == []


# ---------------------------------------------------------------- checks on the inputs (fast)

def test_channel_count_difference_is_a_note_naming_both_sides_and_the_tokens():
    two = {**TARGET_JSON, "channel_names": {"0": "T2", "1": "ADC"}}
    notes = pfc.check_compatibility(SOURCE_JSON, two, Path("/x/ckpt.pth"), Path("/raw/Dataset902_Tgt/dataset.json"))
    (note,) = [n for n in notes if n.startswith("channel count differs")]
    assert "1 input channel(s) {'0': 'CT'}" in note and "has 2 {'0': 'T2', '1': 'ADC'}" in note
    assert "_chzero, _chrepeat or _chcopy<i>" in note
    with pytest.raises(ValueError, match="has no 'channel_names'"):
        pfc.check_compatibility(SOURCE_JSON, {"labels": {}}, Path("c"), Path("d"))


def test_label_and_channel_name_differences_are_notes_not_errors():
    notes = pfc.check_compatibility(SOURCE_JSON, {**TARGET_JSON, "channel_names": {"0": "MRI"}}, Path("c"), Path("d"))
    assert any("channel 0 is 'MRI' in the target but 'CT'" in n for n in notes)
    assert any("checkpoint has 2" in n and "target 3" in n and "seg_layers" in n for n in notes)
    assert pfc.check_compatibility(SOURCE_JSON, {**SOURCE_JSON, "channel_names": {"0": "ct"}}, Path("c"), Path("d")) == []


def test_resolve_dataset_by_id_and_name(tmp_path):
    (tmp_path / "Dataset902_Tgt").mkdir()
    assert pfc.resolve_dataset(tmp_path, 902) == (902, "Dataset902_Tgt")
    assert pfc.resolve_dataset(tmp_path, "Dataset902_Tgt") == (902, "Dataset902_Tgt")
    with pytest.raises(FileNotFoundError, match="Dataset903_"):
        pfc.resolve_dataset(tmp_path, "903")
    (tmp_path / "Dataset902_Other").mkdir()
    with pytest.raises(ValueError, match="ambiguous.*Dataset902_Other, Dataset902_Tgt"):
        pfc.resolve_dataset(tmp_path, 902)
    with pytest.raises(ValueError, match="neither an id"):
        pfc.resolve_dataset(tmp_path, "prostate")


def test_read_checkpoint_rejects_files_that_are_not_nnunet_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        pfc.read_checkpoint(tmp_path / "missing.pth")
    torch.save({"state_dict": {}}, tmp_path / "lightning.pth")
    with pytest.raises(ValueError, match="lightning.pth is not an nnU-Net v2 checkpoint.*plans, configuration"):
        pfc.read_checkpoint(tmp_path / "lightning.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match="text.pth could not be read"):
        pfc.read_checkpoint(tmp_path / "text.pth")


def test_weight_check_accepts_other_label_counts_and_rejects_other_architectures():
    weights = _network(SOURCE_PLANS, SOURCE_JSON).state_dict()
    plans = _build(SOURCE_PLANS)
    pfc.check_weights_fit(plans, "3d_fullres", TARGET_JSON, weights, Path("c.pth"))  # 3 vs 2 labels: fine
    wider = deepcopy(plans)
    wider["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 48]
    with pytest.raises(ValueError, match="does not match its weights.*-pretrained_weights c.pth would fail"):
        pfc.check_weights_fit(wider, "3d_fullres", TARGET_JSON, weights, Path("c.pth"))


def _raw_target_json(raw: Path, dataset_json: dict, name: str = "Dataset902_Tgt") -> None:
    (raw / name).mkdir(parents=True)
    (raw / name / "dataset.json").write_text(json.dumps(dataset_json))


def _fake_nnunet(fingerprint: dict, seen: dict, fail: bool = False):
    """Stand-ins for the nnU-Net subprocesses: a fingerprint, then a preprocessing run that writes one case
    (or, with ``fail``, dies half-way through it)."""
    def run(entry_point, command_name, args, env, log):
        staged = Path(env["nnUNet_preprocessed"]) / "Dataset902_Tgt"
        if command_name == "nnUNetv2_extract_fingerprint":
            (staged / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
            return
        seen["plans"] = json.loads((staged / "nnUNetPlans_pretrained.json").read_text(encoding="utf-8"))
        seen["args"] = args
        (staged / "nnUNetPlans_pretrained_3d_fullres").mkdir()
        if fail:
            (staged / "nnUNetPlans_pretrained_3d_fullres" / "case000.pkl").write_bytes(b"partial")
            raise pfc.NnUNetStepFailed("nnUNetv2_preprocess failed")
        (staged / "nnUNetPlans_pretrained_3d_fullres" / "case000.b2nd").write_bytes(b"data")
    return run


def _target_with_images(raw: Path, channels: int) -> None:
    _write_dataset(raw, "Dataset902_Tgt", 1, (6, 8, 8), (3.0, 0.8, 0.8), ["background", "a", "b"], 0.0, 1)
    for c in range(1, channels):  # more channels: copies of channel 0
        image = raw / "Dataset902_Tgt" / "imagesTr" / "case000_0000.nii.gz"
        (image.parent / f"case000_{c:04d}.nii.gz").write_bytes(image.read_bytes())


def test_two_channel_target_from_a_one_channel_checkpoint(tmp_path, monkeypatch):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    _target_with_images(raw, 2)
    target_json = {**TARGET_JSON, "channel_names": {"0": "ct", "1": "PET"}}
    (raw / "Dataset902_Tgt" / "dataset.json").write_text(json.dumps(target_json))
    ckpt = _save_checkpoint(tmp_path / "ckpt.pth", SOURCE_PLANS, SOURCE_JSON)
    pet = {"max": 9.0, "mean": 2.0, "median": 2.0, "min": 0.0, "percentile_00_5": 0.1, "percentile_99_5": 8.0, "std": 1.0}
    fingerprint = {**TARGET_FINGERPRINT, "foreground_intensity_properties_per_channel": {**TARGET_STATS, "1": pet}}
    seen, log = {}, []
    monkeypatch.setattr(pfc, "_run_nnunet", _fake_nnunet(fingerprint, seen))
    plans_path = pfc.plan_from_checkpoint(902, ckpt, num_processes=1, raw_folder=raw, preprocessed_folder=pre,
                                          log=log.append)
    plans = json.loads(plans_path.read_text(encoding="utf-8"))
    config = plans["configurations"]["3d_fullres"]
    # 'ct' is the checkpoint's 'CT': normalised as in pretraining; PET as nnU-Net plans a new channel
    assert config["normalization_schemes"] == ["CTNormalization", "ZScoreNormalization"]
    assert config["use_mask_for_norm"] == [False, False]
    assert plans["foreground_intensity_properties_per_channel"] == {"0": SOURCE_STATS["0"], "1": pet}
    assert config["architecture"] == _ARCH
    text = "\n".join(log)
    assert "channel count differs" in text
    assert log[-1].strip().endswith(f"-tr nnUNetTrainerCPLoRA_chzero -pretrained_weights {ckpt}")


def test_target_planned_from_a_transposed_checkpoint_keeps_its_axes_and_loads(tmp_path, monkeypatch):
    # the source's thick axis was the last: nnU-Net transposed it first, and its kernels, strides and patch are in
    # that order. The target's thick axis is the first, so its own planning would not transpose (nnU-Net #2775)
    source = deepcopy(SOURCE_PLANS)
    source["transpose_forward"], source["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    arch = source["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["strides"] = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    ckpt = _save_checkpoint(tmp_path / "ckpt.pth", source, SOURCE_JSON)
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    _target_with_images(raw, 1)
    (raw / "Dataset902_Tgt" / "dataset.json").write_text(json.dumps(TARGET_JSON))
    monkeypatch.setattr(pfc, "_run_nnunet", _fake_nnunet(TARGET_FINGERPRINT, {}))
    plans = json.loads(pfc.plan_from_checkpoint(902, ckpt, num_processes=1, raw_folder=raw, preprocessed_folder=pre,
                                                log=lambda _: None).read_text(encoding="utf-8"))
    assert plans["transpose_forward"] == [2, 0, 1] and plans["transpose_backward"] == [1, 2, 0]
    config, source_config = plans["configurations"]["3d_fullres"], source["configurations"]["3d_fullres"]
    assert config["patch_size"] == source_config["patch_size"]
    assert config["architecture"]["arch_kwargs"]["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    assert config["architecture"]["arch_kwargs"]["kernel_sizes"] == arch["kernel_sizes"]
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    network = _network(plans, TARGET_JSON)
    load_pretrained_weights(network, str(ckpt))  # nnU-Net's own loader accepts it
    weights = torch.load(ckpt, weights_only=False)["network_weights"]
    assert tuple(network.decoder.transpconvs[-1].weight.shape[2:]) == (1, 2, 2)
    assert weights["decoder.transpconvs.1.weight"].shape == network.decoder.transpconvs[1].weight.shape


def test_the_default_configuration_is_the_one_the_checkpoint_records(tmp_path, monkeypatch):
    """Not nnU-Net's 3d_fullres: the checkpoint's own init_args['configuration'], as -c's help says."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    _target_with_images(raw, 1)
    ckpt = _save_checkpoint(tmp_path / "ckpt.pth", SOURCE_PLANS, SOURCE_JSON, configuration="3d_fullres_bs4")
    seen, log = {}, []
    monkeypatch.setattr(pfc, "_run_nnunet", _fake_nnunet(TARGET_FINGERPRINT, seen))
    plans = json.loads(pfc.plan_from_checkpoint(902, ckpt, num_processes=1, raw_folder=raw, preprocessed_folder=pre,
                                                log=log.append).read_text(encoding="utf-8"))
    assert list(plans["configurations"]) == ["3d_fullres_bs4"] and seen["args"][5] == "3d_fullres_bs4"
    assert plans["configurations"]["3d_fullres_bs4"]["batch_size"] == 4 and not any("trained as" in n for n in log)
    assert log[-1].split("nnUNetv2_train 902 ")[1].startswith("3d_fullres_bs4 0 ")
    # another configuration whose network the weights fit: planned, with a warning
    log.clear()
    plans = json.loads(pfc.plan_from_checkpoint(902, ckpt, configuration="3d_lowres", num_processes=1,
                                                raw_folder=raw, preprocessed_folder=pre, overwrite=True,
                                                log=log.append).read_text(encoding="utf-8"))
    assert list(plans["configurations"]) == ["3d_lowres"]
    assert any("WARNING: the checkpoint was trained as '3d_fullres_bs4'" in n for n in log)
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    action = next(a for sub in parser._subparsers._group_actions for p in sub.choices.values()
                  for a in p._actions if "--configuration" in a.option_strings)
    assert "default: the one the checkpoint was trained as, recorded in it as init_args['configuration']" in action.help


def test_cli_reports_a_bad_target_as_a_clean_error(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    _raw_target_json(raw, {"labels": {"background": 0}})
    ckpt = _save_checkpoint(tmp_path / "ckpt.pth", SOURCE_PLANS, SOURCE_JSON)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    from nnunet_peft import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("nnunet_peft.commands.plan_from_checkpoint",))  # others may be unbuilt
    assert cli.main(["plan-from-checkpoint", "-d", "902", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-peft plan-from-checkpoint: error: ") and "has no 'channel_names'" in err
    assert not (tmp_path / "pre" / "Dataset902_Tgt").exists()


def test_failed_preprocessing_leaves_nothing_behind(tmp_path, monkeypatch):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    _write_dataset(raw, "Dataset902_Tgt", 3, (6, 8, 8), (3.0, 0.8, 0.8), ["background", "a", "b"], 0.0, 1)
    ckpt = _save_checkpoint(tmp_path / "ckpt.pth", SOURCE_PLANS, SOURCE_JSON)
    seen = {}
    monkeypatch.setattr(pfc, "_run_nnunet", _fake_nnunet(TARGET_FINGERPRINT, seen, fail=True))
    with pytest.raises(pfc.NnUNetStepFailed):
        pfc.plan_from_checkpoint("Dataset902_Tgt", ckpt, num_processes=1, raw_folder=raw, preprocessed_folder=pre,
                                 log=lambda _: None)
    assert seen["args"] == ["-d", "902", "-plans_name", "nnUNetPlans_pretrained", "-c", "3d_fullres", "-np", "1"]
    assert seen["plans"]["pretrained_from"]["checkpoint"] == str(ckpt)
    assert list(pre.iterdir()) == []  # neither the dataset folder nor the staging folder


def test_cli_defaults():
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["plan-from-checkpoint", "-d", "5", "--checkpoint", "m.pth"])
    assert (args.checkpoint, args.plans_name, args.configuration, args.intensity_properties) == (
        "m.pth", "nnUNetPlans_pretrained", None, "source")
    assert args.func is command._run


def _planned_with(monkeypatch, capsys, argv):
    """Run the CLI with plan_from_checkpoint replaced by a recorder: (exit code, its arguments, stderr)."""
    from nnunet_peft import cli

    seen = {}
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("nnunet_peft.commands.plan_from_checkpoint",))
    monkeypatch.setattr(pfc, "plan_from_checkpoint",
                        lambda target, checkpoint, configuration=None, **kw: seen.update(
                            target=target, checkpoint=str(checkpoint), configuration=configuration))
    code = cli.main(["plan-from-checkpoint", "-d", "5", *argv])
    return code, seen, capsys.readouterr().err


def test_cli_c_is_the_configuration_and_the_checkpoint_a_long_option(monkeypatch, capsys):
    code, seen, err = _planned_with(monkeypatch, capsys, ["--checkpoint", "m.pth", "-c", "3d_lowres"])
    assert code == 0 and seen == {"target": "5", "checkpoint": "m.pth", "configuration": "3d_lowres"}
    assert "DEPRECATED" not in err
    code, seen, err = _planned_with(monkeypatch, capsys, ["--checkpoint", "m.pth", "--configuration", "2d"])
    assert code == 0 and seen["configuration"] == "2d"


@pytest.mark.parametrize("value", ["source.pth", "FILE"])
def test_cli_old_c_checkpoint_spelling_works_with_a_deprecation_message(monkeypatch, capsys, tmp_path, value):
    if value == "FILE":  # an existing file without the .pth ending is a checkpoint too
        value = str(tmp_path / "checkpoint_final.model")
        Path(value).write_bytes(b"")
    code, seen, err = _planned_with(monkeypatch, capsys, ["-c", value])
    assert code == 0 and seen == {"target": "5", "checkpoint": value, "configuration": None}
    assert "DEPRECATED" in err and "--checkpoint" in err and "0.2.0" in err


def test_cli_checkpoint_missing_or_given_twice_is_a_clean_error(monkeypatch, capsys):
    code, seen, err = _planned_with(monkeypatch, capsys, ["-c", "3d_fullres"])
    assert code == 2 and not seen and "--checkpoint" in err
    code, seen, err = _planned_with(monkeypatch, capsys, ["-c", "a.pth", "--checkpoint", "b.pth"])
    assert code == 2 and not seen and "-c is the configuration" in err


# ---------------------------------------------------------------- end to end through nnU-Net

def _write_dataset(raw: Path, name: str, n: int, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                   labels: list[str], offset: float, seed: int) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    rng = np.random.default_rng(seed)
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for i in range(n):
        c = [s // 2 + rng.integers(-2, 3) for s in shape]
        r = sum((g - ci) ** 2 / (s / 4) ** 2 for g, ci, s in zip((z, y, x), c, shape))
        seg = np.zeros(shape, np.uint8)
        seg[r < 1] = 1
        seg[r < 0.3] = len(labels) - 1
        image = (rng.normal(0, 50, shape) + 200 * (seg > 0) - 500 + offset).astype(np.float32)
        for array, path in ((image, folder / "imagesTr" / f"case{i:03d}_0000.nii.gz"),
                            (seg, folder / "labelsTr" / f"case{i:03d}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(spacing[::-1])
            sitk.WriteImage(itk, str(path))
    generate_dataset_json(str(folder), {0: "CT"}, {label: i for i, label in enumerate(labels)}, n, ".nii.gz")


@pytest.mark.slow
def test_plan_from_checkpoint_end_to_end(tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    _write_dataset(raw, "Dataset901_Src", 4, (20, 24, 24), (2.0, 1.0, 1.0), ["background", "a"], 0.0, 0)
    env = os.environ | {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
                        "nnUNet_results": str(tmp_path / "results"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", "import sys; from nnunetv2.experiment_planning.plan_and_preprocess_"
                    "entrypoints import plan_and_preprocess_entry as e; sys.argv[0] = 'nnUNetv2_plan_and_preprocess'; e()",
                    "-d", "901", "-c", "3d_fullres", "-npfp", "1", "-np", "1", "--no_pp"],
                   env=env, check=True, capture_output=True)
    source_plans = json.loads((pre / "Dataset901_Src" / "nnUNetPlans.json").read_text(encoding="utf-8"))
    source_json = json.loads((raw / "Dataset901_Src" / "dataset.json").read_text(encoding="utf-8"))
    ckpt = _save_checkpoint(tmp_path / "checkpoint_final.pth", source_plans, source_json)
    # the user has the checkpoint only: no source dataset anywhere
    for folder in (raw / "Dataset901_Src", pre / "Dataset901_Src"):
        for f in sorted(folder.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        folder.rmdir()
    _write_dataset(raw, "Dataset902_Tgt", 3, (16, 30, 28), (3.0, 0.8, 0.8), ["background", "a", "b"], 100.0, 1)

    log: list[str] = []
    plans_path = pfc.plan_from_checkpoint(902, ckpt, num_processes=1, raw_folder=raw, preprocessed_folder=pre,
                                          log=log.append)

    assert plans_path == pre / "Dataset902_Tgt" / "nnUNetPlans_pretrained.json"
    plans = json.loads(plans_path.read_text(encoding="utf-8"))
    source_config, config = source_plans["configurations"]["3d_fullres"], plans["configurations"]["3d_fullres"]
    assert list(plans["configurations"]) == ["3d_fullres"]
    assert config["architecture"] == source_config["architecture"]
    assert config["spacing"] == source_config["spacing"] == [2.0, 1.0, 1.0]
    assert config["patch_size"] == source_config["patch_size"]
    assert plans["foreground_intensity_properties_per_channel"] == source_plans[
        "foreground_intensity_properties_per_channel"]
    assert sorted(p.name for p in pre.iterdir()) == ["Dataset902_Tgt"]  # no staging folder left
    assert (pre / "Dataset902_Tgt" / "dataset.json").read_text(encoding="utf-8") == (raw / "Dataset902_Tgt" / "dataset.json").read_text(encoding="utf-8")

    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    data_folder = pre / "Dataset902_Tgt" / "nnUNetPlans_pretrained_3d_fullres"
    dataset = infer_dataset_class(str(data_folder))(str(data_folder))
    assert sorted(dataset.identifiers) == ["case000", "case001", "case002"]
    data, seg, _, _ = dataset.load_case("case000")
    assert data.shape == (1, 24, 24, 22)  # (16*3/2, 30*0.8/1, 28*0.8/1): resampled to the source spacing
    assert set(np.unique(seg[:])) <= {0, 1, 2} and (seg[:] == 2).any()

    # the network nnU-Net builds from these plans takes the checkpoint through -pretrained_weights' own loader
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    target_json = json.loads((raw / "Dataset902_Tgt" / "dataset.json").read_text(encoding="utf-8"))
    network = _network(plans, target_json)
    load_pretrained_weights(network, str(ckpt))
    weights = torch.load(ckpt, weights_only=False)["network_weights"]
    for key, value in network.state_dict().items():
        if ".seg_layers." not in key:
            assert torch.equal(value, weights[key]), key
    head = max(k for k in weights if ".seg_layers." in k and k.endswith("weight"))  # full-resolution head
    assert network.state_dict()[head].shape[0] == 3 and weights[head].shape[0] == 2

    text = "\n".join(log)
    assert "outside the checkpoint's clipping window" in text  # target +100 HU leaves the source window
    assert "checkpoint has 2" in text and "target 3" in text
    assert log[-1].strip() == (f"nnUNet_extTrainer=$(nnunet-peft trainer-dir) nnUNetv2_train 902 3d_fullres 0 "
                               f"-p nnUNetPlans_pretrained -tr nnUNetTrainerCPLoRA -pretrained_weights {ckpt}")

    # plans of that name made with other settings are only replaced with --overwrite (checked before any work)
    with pytest.raises(FileExistsError, match="not made from this checkpoint with these settings.*--overwrite"):
        pfc.plan_from_checkpoint(902, ckpt, num_processes=1, raw_folder=raw, preprocessed_folder=pre,
                                 intensity_properties="target", log=log.append)
    assert json.loads(plans_path.read_text(encoding="utf-8")) == plans
    assert sorted(p.name for p in pre.iterdir()) == ["Dataset902_Tgt"]
