"""Sharing adapters safely (issue 11): the base fingerprint, refusing another base, and ``nnunet-peft info``.

Model folders are built directly (tiny plans, networks from ``networks.py``, checkpoints in
nnU-Net's layout via ``checkpoint_dict``), so nothing trains and every test runs in seconds on a CPU.
"""
from __future__ import annotations

import json
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from adapter_helpers import perturb_
from networks import NET_SPECS, PLAIN, REQUIRES_IMPORT, arch_kwargs, build_network, pretrained_network
from nnunet_peft import (METHODS, BaseFingerprintWarning, BaseMismatchError, PeftConfig, adapter_state_dict,
                         base_fingerprint, inject_adapters, load_adapter, save_adapter)
from nnunet_peft.adapter_io import CONFIG_NAME, FINGERPRINT_KEY, read_adapter_config
from nnunet_peft.cli import main
from nnunet_peft.adapter_sharing import apply_adapter, export_adapter
from nnunet_peft.folder_info import describe, format_info
from nnunet_peft.model_folder import CHECKPOINT, checkpoint_dict
from nnunet_peft.name_grammar import parse_trainer_name

SPEC = NET_SPECS[1]  # PlainConvUNet 3-D, 2 input channels, 3 classes
TRAINER = "nnUNetTrainerCPLoRA_r2_a4"
CONFIGURATION = "3d_fullres"
DATASET_JSON = {"channel_names": {"0": "CT", "1": "CTA"}, "labels": {"background": 0, "blood": 1, "vessel": 2},
                "numTraining": 4, "file_ending": ".nii.gz"}


# ------------------------------------------------------------------------------------- helpers
def tiny_plans(spec=SPEC) -> dict:
    """nnU-Net plans that build the networks of ``networks.py`` (what PlansManager needs, no more)."""
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "nnUNetPlans_pretrained_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": list(spec.patch), "median_image_size_in_voxels": list(spec.patch),
        "spacing": [2.0, 1.0, 1.0], "normalization_schemes": ["CTNormalization"] * spec.in_channels,
        "use_mask_for_norm": [False] * spec.in_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling, "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": {"network_class_name": PLAIN, "arch_kwargs": arch_kwargs(spec),
                         "_kw_requires_import": REQUIRES_IMPORT},
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset077_Tiny", "plans_name": "nnUNetPlans_pretrained",
        "original_median_spacing_after_transp": [2.0, 1.0, 1.0], "original_median_shape_after_transp": list(spec.patch),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {},
    }


def save_checkpoint(network, path: Path, trainer: str = "nnUNetTrainer", fold=0, epoch: int = 0) -> Path:
    ckpt = checkpoint_dict(network.state_dict(), trainer, tiny_plans(), DATASET_JSON, CONFIGURATION, fold)
    ckpt["current_epoch"] = epoch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def source_checkpoint(tmp_path: Path, seed: int = 0, name: str = "source.pth") -> Path:
    """A 'pretrained' stock nnU-Net checkpoint of the tiny plans."""
    return save_checkpoint(pretrained_network(SPEC, seed=seed), tmp_path / name, epoch=16)


def trained_network(seed: int = 0, trainer: str = TRAINER, adapter_seed: int = 3):
    """What training ``trainer`` from ``source_checkpoint(seed)`` leaves: the base plus moved adapters and heads."""
    net = pretrained_network(SPEC, seed=seed)
    inject_adapters(net, parse_trainer_name(trainer).peft_config())
    perturb_([p for p in net.parameters() if p.requires_grad], seed=adapter_seed)
    return net


def results_folder(tmp_path: Path, folds=(0, 1), trainer: str = TRAINER, dice: float | None = 0.8125) -> Path:
    """$nnUNet_results/Dataset077_Tiny/<trainer>__nnUNetPlans_pretrained__3d_fullres, as a plugin trainer leaves it."""
    folder = tmp_path / "results" / "Dataset077_Tiny" / f"{trainer}__nnUNetPlans_pretrained__{CONFIGURATION}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(tiny_plans()), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON), encoding="utf-8")
    for fold in folds:
        net = trained_network(adapter_seed=fold + 3, trainer=trainer)
        fold_dir = folder / f"fold_{fold}"
        save_checkpoint(net, fold_dir / CHECKPOINT, trainer, fold, epoch=6)
        if dice is not None:
            write_validation_summary(fold_dir, dice + fold / 100)
    return folder


def write_validation_summary(fold_dir: Path, dice: float) -> None:
    """The part of nnU-Net's validation/summary.json that matters here."""
    (fold_dir / "validation").mkdir(parents=True, exist_ok=True)
    summary = {"foreground_mean": {"Dice": dice, "IoU": dice / 2},
               "mean": {"1": {"Dice": dice + 0.05}, "2": {"Dice": dice - 0.05}},
               "metric_per_case": [{}, {}, {}]}
    (fold_dir / "validation" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def one_ulp_up_(tensor: torch.Tensor, index: int = 0) -> None:
    """Move one value of a float32 tensor to the next representable float32."""
    flat = tensor.detach().view(-1)
    with torch.no_grad():
        flat[index] = torch.nextafter(flat[index], torch.tensor(float("inf"), dtype=flat.dtype))


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseFingerprintWarning)
        yield


# ---------------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_the_same_for_a_checkpoint_a_stock_network_and_every_adapted_network(tmp_path):
    stock = pretrained_network(SPEC)
    expected = base_fingerprint(stock)
    assert expected.startswith("sha256:") and len(expected) == len("sha256:") + 64
    assert base_fingerprint(stock.state_dict()) == expected
    loaded = torch.load(source_checkpoint(tmp_path), map_location="cpu", weights_only=False)["network_weights"]
    assert base_fingerprint(loaded) == expected
    for method in METHODS:
        net = inject_adapters(pretrained_network(SPEC), PeftConfig(method, rank=2))
        assert base_fingerprint(net) == expected, method
        perturb_([p for p in net.parameters() if p.requires_grad])  # adapters and heads train: the base does not
        assert base_fingerprint(net) == expected, method


def test_fingerprint_follows_its_documented_format():
    """SHA-256 over sorted names of ``name NUL kind NUL shape NUL`` + SHA-256 of float32 / int64
    little-endian bytes; heads left out. Written out here so that other tools can reproduce it."""
    import hashlib

    state = {"b.weight": torch.tensor([[1.5, -2.0]], dtype=torch.float64), "a.count": torch.tensor([3]),
             "decoder.seg_layers.0.weight": torch.ones(2)}
    digest = hashlib.sha256()
    for key, kind, data in [("a.count", "<i8", np.array([3], "<i8")), ("b.weight", "<f4", np.array([[1.5, -2.0]], "<f4"))]:
        digest.update(f"{key}\0{kind}\0{tuple(data.shape)}\0".encode())
        digest.update(hashlib.sha256(data.tobytes()).digest())
    assert base_fingerprint(state) == "sha256:" + digest.hexdigest()


def test_fingerprint_is_stable_across_dtype_and_device_round_trips():
    net = pretrained_network(SPEC)
    expected = base_fingerprint(net)
    assert base_fingerprint(net.to(torch.float64)) == expected  # hashed as float32, whatever the compute dtype
    assert base_fingerprint(net.to(torch.float64).to(torch.float32)) == expected
    adapted = inject_adapters(pretrained_network(SPEC), PeftConfig("lora_c", rank=2))
    assert base_fingerprint(adapted.to(torch.float64)) == expected
    # moved to the meta device (no values), then materialised on the CPU and loaded: the same base
    empty = build_network(SPEC, seed=5).to("meta")
    with pytest.raises(ValueError, match="meta device"):
        base_fingerprint(empty)
    empty = empty.to_empty(device="cpu")
    empty.load_state_dict(pretrained_network(SPEC).state_dict())
    assert base_fingerprint(empty) == expected


def test_fingerprint_changes_with_one_base_value_by_one_ulp_but_not_with_the_heads():
    expected = base_fingerprint(pretrained_network(SPEC))
    net = inject_adapters(pretrained_network(SPEC), PeftConfig("cp_lora", rank=2))
    kernel = net.encoder.stages[1][0].convs[0].conv.base_layer.weight  # a frozen kernel inside an adapter
    one_ulp_up_(kernel, index=5)
    assert base_fingerprint(net) != expected
    stock = pretrained_network(SPEC)
    one_ulp_up_(stock.encoder.stages[0][0].convs[0].norm.bias)  # a norm affine, no adapter around it
    assert base_fingerprint(stock) != expected
    # the heads are carried by the adapter file, so the base's heads are not part of the base
    stock = pretrained_network(SPEC)
    with torch.no_grad():
        stock.decoder.seg_layers[-1].weight.add_(1.0)
    assert base_fingerprint(stock) == expected


def test_fingerprint_is_recorded_and_survives_save_load(tmp_path, no_warnings):
    net = trained_network()
    save_adapter(net, tmp_path / "adapter", {"trainer_name": TRAINER})
    record = read_adapter_config(tmp_path / "adapter")
    assert record[FINGERPRINT_KEY] == base_fingerprint(pretrained_network(SPEC)) == base_fingerprint(net)
    assert record["network_class"] == "PlainConvUNet" and record["trainer_name"] == TRAINER
    assert record["trainable_parameters"] == sum(p.numel() for p in net.parameters() if p.requires_grad)
    loaded = load_adapter(pretrained_network(SPEC), tmp_path / "adapter")
    assert base_fingerprint(loaded) == record[FINGERPRINT_KEY]
    # the whole adapted state is the trained one (test_adapters_network checks the outputs)
    assert loaded.state_dict().keys() == net.state_dict().keys()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.state_dict().items())


# ------------------------------------------------------------------------------------- refusal
def test_load_adapter_refuses_another_base_and_leaves_it_untouched(tmp_path):
    save_adapter(trained_network(), tmp_path / "adapter")
    other = pretrained_network(SPEC, seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(BaseMismatchError) as err:
        load_adapter(other, tmp_path / "adapter", base_name="later_epoch.pth")
    text = str(err.value)
    assert base_fingerprint(pretrained_network(SPEC)) in text and base_fingerprint(other) in text
    assert str(tmp_path / "adapter") in text and "later_epoch.pth" in text and "--allow-other-base" in text
    assert isinstance(err.value, ValueError)
    assert other.state_dict().keys() == before.keys()  # no adapters injected
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_one_ulp_in_the_base_is_another_base(tmp_path):
    save_adapter(trained_network(), tmp_path / "adapter")
    base = pretrained_network(SPEC)
    one_ulp_up_(base.decoder.transpconvs[0].weight, index=3)
    with pytest.raises(BaseMismatchError):
        load_adapter(base, tmp_path / "adapter")


def test_allow_other_base_loads_and_warns(tmp_path):
    net = trained_network()
    save_adapter(net, tmp_path / "adapter")
    other = pretrained_network(SPEC, seed=1)
    with pytest.warns(BaseFingerprintWarning, match="allow_other_base=True"):
        load_adapter(other, tmp_path / "adapter", allow_other_base=True)
    state = adapter_state_dict(other)
    assert all(torch.equal(state[k], v) for k, v in adapter_state_dict(net).items())


def test_adapter_without_a_fingerprint_loads_with_a_warning(tmp_path):
    save_adapter(trained_network(), tmp_path / "adapter")
    config = tmp_path / "adapter" / CONFIG_NAME
    record = json.loads(config.read_text(encoding="utf-8"))
    del record[FINGERPRINT_KEY]  # as written by an older nnunet-peft
    config.write_text(json.dumps(record))
    with pytest.warns(BaseFingerprintWarning, match="cannot be checked"):
        load_adapter(pretrained_network(SPEC, seed=1), tmp_path / "adapter")


# --------------------------------------------------------------------------- export / apply CLI
def test_export_records_plans_labels_channels_dice_and_fingerprint(tmp_path, capsys):
    model = results_folder(tmp_path)
    code, out, err = run_cli(["export-adapter", "-m", model, "-o", tmp_path / "shared"], capsys)
    assert code == 0, err
    record = read_adapter_config(tmp_path / "shared" / "fold_1")
    assert record[FINGERPRINT_KEY] == base_fingerprint(pretrained_network(SPEC))
    assert record["trainer_name"] == TRAINER and record["plans_identifier"] == "nnUNetPlans_pretrained"
    assert record["configuration"] == CONFIGURATION and record["fold"] == 1
    assert record["labels"] == DATASET_JSON["labels"] and record["channels"] == DATASET_JSON["channel_names"]
    assert record["validation_dice"]["foreground_mean"] == pytest.approx(0.8225)


def test_apply_adapter_checks_the_base(tmp_path, capsys):
    model = results_folder(tmp_path, folds=(0,))
    assert export_adapter(model, tmp_path / "shared")
    shared, source, other = tmp_path / "shared", source_checkpoint(tmp_path), source_checkpoint(tmp_path, 1, "other.pth")

    # the right base: no warning, and the rebuilt checkpoint is the trained one
    code, out, err = run_cli(["apply-adapter", "-a", shared, "--checkpoint", source, "-o", tmp_path / "applied"], capsys)
    assert code == 0 and "WARNING" not in err, err
    rebuilt = torch.load(tmp_path / "applied" / "fold_0" / CHECKPOINT, weights_only=False)["network_weights"]
    trained = torch.load(model / "fold_0" / CHECKPOINT, weights_only=False)["network_weights"]
    assert rebuilt.keys() == trained.keys() and all(torch.equal(rebuilt[k], trained[k]) for k in trained)

    # another base: refused, naming both fingerprints, the checkpoint and the adapter; nothing written
    code, out, err = run_cli(["apply-adapter", "-a", shared, "--checkpoint", other, "-o", tmp_path / "wrong"], capsys)
    assert code == 2
    expected, actual = base_fingerprint(pretrained_network(SPEC)), base_fingerprint(pretrained_network(SPEC, seed=1))
    for text in (expected, actual, str(other), str(shared / "fold_0"), "--allow-other-base"):
        assert text in err
    assert not (tmp_path / "wrong").exists()

    # told to: applied, saying so
    code, out, err = run_cli(["apply-adapter", "-a", shared, "--checkpoint", other, "-o", tmp_path / "forced",
                              "--allow-other-base"], capsys)
    assert code == 0 and "WARNING" in err and "allow-other-base" in err and actual in err
    assert (tmp_path / "forced" / "fold_0" / CHECKPOINT).is_file()


def test_apply_adapter_old_c_spelling_and_configuration_check(tmp_path, capsys):
    """-c was the checkpoint; now it is the configuration (an optional check). The old spelling still works."""
    model = results_folder(tmp_path, folds=(0,), dice=None)
    export_adapter(model, tmp_path / "shared")
    shared, source = tmp_path / "shared", source_checkpoint(tmp_path)
    code, out, err = run_cli(["apply-adapter", "-a", shared, "-c", source, "-o", tmp_path / "old"], capsys)
    assert code == 0 and "DEPRECATED" in err and "--checkpoint" in err, err
    assert (tmp_path / "old" / "fold_0" / CHECKPOINT).is_file()

    code, out, err = run_cli(["apply-adapter", "-a", shared, "--checkpoint", source, "-c", CONFIGURATION,
                              "-o", tmp_path / "checked"], capsys)
    assert code == 0 and "DEPRECATED" not in err, err
    code, out, err = run_cli(["apply-adapter", "-a", shared, "--checkpoint", source, "-c", "2d",
                              "-o", tmp_path / "other_configuration"], capsys)
    assert code == 2 and f"trained as configuration {CONFIGURATION}" in err
    assert not (tmp_path / "other_configuration").exists()
    code, out, err = run_cli(["apply-adapter", "-a", shared, "-o", tmp_path / "none"], capsys)
    assert code == 2 and "--checkpoint" in err


def test_apply_adapter_in_python_refuses_and_overrides(tmp_path):
    model = results_folder(tmp_path, folds=(0,), dice=None)
    export_adapter(model, tmp_path / "shared")
    other = source_checkpoint(tmp_path, seed=1, name="other.pth")
    with pytest.raises(BaseMismatchError, match="other.pth"):
        apply_adapter(tmp_path / "shared", other, tmp_path / "out")
    with pytest.warns(BaseFingerprintWarning):
        apply_adapter(tmp_path / "shared", other, tmp_path / "out", allow_other_base=True)


def test_apply_adapter_says_what_an_adapter_folder_is_before_reading_it(tmp_path, capsys):
    source = source_checkpoint(tmp_path)
    missing = tmp_path / "MISSING"
    code, out, err = run_cli(["apply-adapter", "-a", missing, "--checkpoint", source, "-o", tmp_path / "out"], capsys)
    assert code == 2 and f"adapter folder {missing} does not exist" in err, err
    for holds in ("export-adapter", "plans.json", "dataset.json", f"fold_K/{CONFIG_NAME}", "adapter_model.safetensors"):
        assert holds in err
    assert "not found" not in err and not (tmp_path / "out").exists()

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"holds no fold_\\*/{CONFIG_NAME}; an adapter folder is one written"):
        apply_adapter(tmp_path / "empty", source, tmp_path / "out")
    model = results_folder(tmp_path, folds=(0,), dice=None)
    export_adapter(model, tmp_path / "shared")
    (tmp_path / "shared" / "plans.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no plans.json; an adapter folder is one written by export-adapter"):
        apply_adapter(tmp_path / "shared", source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_apply_adapter_warns_for_an_old_export(tmp_path, capsys):
    model = results_folder(tmp_path, folds=(0,), dice=None)
    export_adapter(model, tmp_path / "shared")
    config = tmp_path / "shared" / "fold_0" / CONFIG_NAME
    record = json.loads(config.read_text(encoding="utf-8"))
    del record[FINGERPRINT_KEY]
    config.write_text(json.dumps(record))
    code, out, err = run_cli(["apply-adapter", "-a", tmp_path / "shared", "--checkpoint", source_checkpoint(tmp_path),
                              "-o", tmp_path / "applied"], capsys)
    assert code == 0 and "WARNING" in err and "cannot be checked" in err


def test_trainer_records_what_the_adapter_was_trained_with(tmp_path):
    """``_write_summary`` at the end of training writes fold_K/adapter/ with the base fingerprint,
    plans, configuration, labels and channels (run on a trainer object without nnU-Net's set-up)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_peft.training.trainer import ADAPTER_DIR, trainer_class

    cls = trainer_class(TRAINER)
    trainer = cls.__new__(cls)
    trainer.network, trainer.spec, trainer.output_folder = trained_network(), cls.spec, str(tmp_path)
    trainer.plans_manager, trainer.dataset_json = PlansManager(tiny_plans()), DATASET_JSON
    trainer.configuration_name, trainer.fold, trainer.local_rank = CONFIGURATION, 2, 0
    trainer.device, trainer.logger = torch.device("cpu"), types.SimpleNamespace(get_checkpoint=lambda: {})
    trainer._write_summary()
    record = read_adapter_config(tmp_path / ADAPTER_DIR)
    assert record[FINGERPRINT_KEY] == base_fingerprint(pretrained_network(SPEC))
    assert record["trainer_name"] == TRAINER and record["plans_identifier"] == "nnUNetPlans_pretrained"
    assert record["configuration"] == CONFIGURATION and record["fold"] == 2
    assert record["labels"] == DATASET_JSON["labels"] and record["channels"] == DATASET_JSON["channel_names"]


# ---------------------------------------------------------------------------------------- info
def info(path, capsys) -> str:
    code, out, err = run_cli(["info", path], capsys)
    assert code == 0, err
    return out


def test_info_on_an_adapter_folder(tmp_path, capsys):
    net = trained_network()
    save_adapter(net, tmp_path / "adapter", {"trainer_name": TRAINER, "labels": DATASET_JSON["labels"]})
    out = info(tmp_path / "adapter", capsys)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    for text in ("adapter folder", "method:", "cp_lora", "rank:", "alpha:", "4 (scale 2)", "encoder + bottleneck + decoder",
                 "backbone:", "PlainConvUNet", f"{trainable:,} of", "KiB", base_fingerprint(pretrained_network(SPEC)),
                 "blood=1", "no validation summary"):
        assert text in out, (text, out)
    assert describe(tmp_path / "adapter" / CONFIG_NAME)["kind"] == "adapter"  # the config file itself works too


def test_info_on_an_old_adapter_folder_says_the_base_cannot_be_checked(tmp_path, capsys):
    save_adapter(trained_network(), tmp_path / "adapter")
    config = tmp_path / "adapter" / CONFIG_NAME
    record = json.loads(config.read_text(encoding="utf-8"))
    for key in (FINGERPRINT_KEY, "network_class", "trainable_parameters", "total_parameters"):
        del record[key]
    config.write_text(json.dumps(record))
    out = info(tmp_path / "adapter", capsys)
    assert "cannot be checked" in out and "not recorded" in out


def test_info_on_an_export_folder(tmp_path, capsys):
    model = results_folder(tmp_path)
    export_adapter(model, tmp_path / "shared")
    out = info(tmp_path / "shared", capsys)
    for text in ("export-adapter folder", "nnUNetPlans_pretrained", "Dataset077_Tiny", "fold_0", "fold_1",
                 "0.8125 (foreground mean over 3 cases", "0.8225", "blood=1, vessel=2", "0=CT, 1=CTA",
                 base_fingerprint(pretrained_network(SPEC)), TRAINER):
        assert text in out, (text, out)


def test_info_on_a_results_folder_and_one_fold(tmp_path, capsys):
    model = results_folder(tmp_path)
    # fold 1 as the plugin's trainer leaves it: its own adapter folder and peft_summary.json
    save_adapter(trained_network(adapter_seed=4), model / "fold_1" / "adapter", {"trainer_name": TRAINER})
    (model / "fold_1" / "peft_summary.json").write_text(json.dumps({"trainable_parameters": 1234, "total_parameters": 5678}))
    out = info(model, capsys)
    fingerprint = base_fingerprint(pretrained_network(SPEC))
    for text in ("nnU-Net results folder", "trainer:", TRAINER, "cp_lora (CPLoRA)", "rank:", "2", "4 (scale 2)",
                 "placement:", "nnUNetPlans_pretrained", CONFIGURATION, "backbone:", "PlainConvUNet",
                 "blood=1", "fold_0", "fold_1", "checkpoint_final.pth", "epoch 6", "1,234 of 5,678",
                 "adapter/adapter_model.safetensors", "0.8125 (foreground mean over 3 cases; 1: 0.8625, 2: 0.7625)",
                 "0.8225"):
        assert text in out, (text, out)
    assert out.count(fingerprint) == 2  # every fold's base is the source checkpoint
    assert "WARNING" not in out
    only = describe(model / "fold_1")
    assert [f["name"] for f in only["folds"]] == ["fold_1"]


def test_info_on_a_stock_results_folder_without_validation(tmp_path, capsys):
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans_pretrained__3d_fullres"
    folder.mkdir()
    (folder / "plans.json").write_text(json.dumps(tiny_plans()))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    save_checkpoint(pretrained_network(SPEC), folder / "fold_0" / "checkpoint_latest.pth", epoch=3)
    out = info(folder, capsys)
    for text in ("nnU-Net's own trainer", "checkpoint_latest.pth", "epoch 3", "no validation summary",
                 "fingerprint as a base", base_fingerprint(pretrained_network(SPEC))):
        assert text in out, (text, out)


def test_info_on_a_stock_checkpoint(tmp_path, capsys):
    out = info(source_checkpoint(tmp_path), capsys)
    total = sum(p.numel() for p in pretrained_network(SPEC).parameters())
    for text in ("nnU-Net checkpoint", "nnUNetTrainer", "architecture:", PLAIN, "backbone:", "PlainConvUNet",
                 "plans:", "nnUNetPlans_pretrained", "configuration:", CONFIGURATION, "epoch:", "16",
                 "blood=1, vessel=2 (from the checkpoint)", f"{total:,}",
                 base_fingerprint(pretrained_network(SPEC))):
        assert text in out, (text, out)


def test_info_on_a_bare_checkpoint_takes_the_labels_from_dataset_json_beside_it(tmp_path, capsys):
    torch.save({"network_weights": pretrained_network(SPEC).state_dict(), "current_epoch": 999}, tmp_path / "bare.pth")
    (tmp_path / "dataset.json").write_text(json.dumps(DATASET_JSON))
    out = info(tmp_path / "bare.pth", capsys)
    for text in ("blood=1, vessel=2 (from dataset.json beside it)", "epoch:", "999", "architecture:", "not recorded",
                 base_fingerprint(pretrained_network(SPEC))):
        assert text in out, (text, out)


def test_info_on_an_adapted_checkpoint(tmp_path, capsys):
    model = results_folder(tmp_path, folds=(0,))
    apply_adapter_out = tmp_path / "applied"
    export_adapter(model, tmp_path / "shared")
    apply_adapter(tmp_path / "shared", source_checkpoint(tmp_path), apply_adapter_out)
    out = info(apply_adapter_out / "fold_0" / CHECKPOINT, capsys)
    for text in ("cp_lora (CPLoRA)", "trainable parameters", "base fingerprint", base_fingerprint(pretrained_network(SPEC))):
        assert text in out, (text, out)


@pytest.mark.parametrize("make", ["missing", "empty-folder", "text-file", "not-a-checkpoint", "not-torch"])
def test_info_says_clearly_what_it_cannot_read(make, tmp_path, capsys):
    path = {"missing": tmp_path / "nothing", "empty-folder": tmp_path / "folder", "text-file": tmp_path / "notes.txt",
            "not-a-checkpoint": tmp_path / "state.pth", "not-torch": tmp_path / "garbage.pth"}[make]
    if make == "empty-folder":
        path.mkdir()
        (path / "plans.json").write_text("{}")  # plans but no fold: still not a results folder
    elif make == "text-file":
        path.write_text("hello")
    elif make == "not-a-checkpoint":
        torch.save({"state_dict": {}}, path)
    elif make == "not-torch":
        path.write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    code, out, err = run_cli(["info", path], capsys)
    assert code == 2 and out == ""
    assert err.startswith("nnunet-peft info: error: ") and str(path) in err
    expected = {"missing": "no such file", "empty-folder": "none of what nnunet-peft info reads",
                "text-file": "none of what nnunet-peft info reads", "not-a-checkpoint": "not an nnU-Net checkpoint",
                "not-torch": "could not be read as a PyTorch checkpoint"}[make]
    assert expected in err


def test_format_info_aligns_fields():
    text = format_info({"path": "p", "fields": [("kind", "x"), ("base fingerprint", "y")],
                        "folds": [{"name": "fold_0", "fields": [("a", "b")]}]})
    assert text.splitlines() == ["p", "  kind:               x", "  base fingerprint:   y", "  fold_0", "    a:                b"]


def test_apply_adapter_rebuilds_a_model_whose_first_convolution_took_other_channels(tmp_path):
    """A chzero/chrepeat/chcopy run trains its first convolution for the target's channels: the adapter file
    carries it whole, so the checkpoint's first kernel (other channel count) must give way to it."""
    import dataclasses

    one_channel = dataclasses.replace(SPEC, in_channels=1)
    source = save_checkpoint(pretrained_network(one_channel, seed=0), tmp_path / "source_1ch.pth", epoch=16)
    trainer = "nnUNetTrainerCPLoRA_r2_a4_chzero"
    net = pretrained_network(SPEC, seed=5)
    base = torch.load(source, weights_only=False)["network_weights"]
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in base.items() if own[k].shape == v.shape}, strict=False)
    inject_adapters(net, parse_trainer_name(trainer).peft_config())
    perturb_([p for p in net.parameters() if p.requires_grad], seed=3)
    model = tmp_path / "results" / "Dataset077_Tiny" / f"{trainer}__nnUNetPlans_pretrained__{CONFIGURATION}"
    model.mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(tiny_plans()), encoding="utf-8")
    (model / "dataset.json").write_text(json.dumps(DATASET_JSON), encoding="utf-8")
    save_checkpoint(net, model / "fold_0" / CHECKPOINT, trainer, 0, epoch=6)
    export_adapter(model, tmp_path / "shared")

    apply_adapter(tmp_path / "shared", source, tmp_path / "applied")
    rebuilt = torch.load(tmp_path / "applied" / "fold_0" / CHECKPOINT, weights_only=False)["network_weights"]
    trained = torch.load(model / "fold_0" / CHECKPOINT, weights_only=False)["network_weights"]
    assert rebuilt.keys() == trained.keys() and all(torch.equal(rebuilt[k], trained[k]) for k in trained)

