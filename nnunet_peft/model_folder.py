"""Reading and writing nnU-Net model folders (``Trainer__Plans__Configuration`` with ``fold_K/`` inside)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

CHECKPOINT = "checkpoint_final.pth"
FOLDER_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
# what the plugin's trainers add to each fold_K/ beside nnU-Net's files
SUMMARY_NAME = "peft_summary.json"  # trainable parameters, timings, the load report
LOAD_REPORT_NAME = "load_report.json"  # written when training starts: which tensors came from where
ADAPTER_DIR = "adapter"  # the adapters alone, as save_adapter writes them


def fold_dirs(model_folder: Path, checkpoint: str = CHECKPOINT) -> list[Path]:
    """The ``fold_*`` folders holding ``checkpoint``; raises with what was expected when there are none."""
    model_folder = Path(model_folder)
    if not (model_folder / "plans.json").is_file():
        raise FileNotFoundError(
            f"{model_folder} is not an nnU-Net model folder: no plans.json. Expected "
            "$nnUNet_results/DatasetNNN_Name/<Trainer>__<Plans>__<Configuration>")
    folds = sorted(d for d in model_folder.glob("fold_*") if (d / checkpoint).is_file())
    if not folds:
        raise FileNotFoundError(f"{model_folder} has no fold_*/{checkpoint}; is the training finished?")
    return folds


def read_json(path: Path) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def network_inputs(plans: dict, dataset_json: dict, configuration: str):
    """``(plans_manager, configuration_manager, num_input_channels, num_output_channels)``."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    return pm, cm, determine_num_input_channels(pm, cm, dataset_json), pm.get_label_manager(dataset_json).num_segmentation_heads


def build_network(trainer_name: str, plans: dict, dataset_json: dict, configuration: str) -> nn.Module:
    """The network ``trainer_name`` predicts with: adapted (empty adapters) for ours, stock otherwise."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_peft.name_grammar import is_plugin_name, parse_trainer_name
    from nnunet_peft.trainer_network import build_adapted_network

    args = network_inputs(plans, dataset_json, configuration)
    if is_plugin_name(trainer_name):
        return build_adapted_network(parse_trainer_name(trainer_name), *args, enable_deep_supervision=False)
    return nnUNetTrainer.build_network_architecture(*args, enable_deep_supervision=False)


def load_fold(model_folder: Path, fold_dir: Path, checkpoint: str = CHECKPOINT) -> tuple[nn.Module, dict]:
    """The network of one fold with its trained weights, and the checkpoint dict."""
    ckpt = torch.load(fold_dir / checkpoint, map_location="cpu", weights_only=False)
    plans, dataset_json = read_json(model_folder / "plans.json"), read_json(model_folder / "dataset.json")
    network = build_network(ckpt["trainer_name"], plans, dataset_json, ckpt["init_args"]["configuration"])
    network.load_state_dict(ckpt["network_weights"])
    return network, ckpt


def load_base(checkpoint: str | Path, ckpt: Mapping[str, Any] | None = None) -> nn.Module:
    """The stock network of an nnU-Net checkpoint with its weights, on the CPU, with its plans recorded
    (``set_base_plans``) so that ``load_adapter(..., name=...)`` checks each adapter's plans against them.
    ``ckpt``: the checkpoint's dict when the caller has read it already."""
    from nnunet_peft.checkpoint_file import check_pretrained_compatible, load_checkpoint_file
    from nnunet_peft.injection import get_config
    from nnunet_peft.named_adapters import set_base_plans

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint_file(checkpoint) if ckpt is None else ckpt
    args = ckpt.get("init_args") or {}
    missing = [k for k in ("plans", "configuration", "dataset_json") if k not in args]
    if missing or "trainer_name" not in ckpt:
        raise ValueError(f"{checkpoint} records no {', '.join(missing or ['trainer_name'])}; expected a checkpoint "
                         "written by nnUNetv2_train (checkpoint_final.pth)")
    network = build_network(ckpt["trainer_name"], args["plans"], args["dataset_json"], args["configuration"])
    if get_config(network) is not None:
        raise ValueError(f"{checkpoint} was trained by {ckpt['trainer_name']}, which trains adapters; a base is a "
                         "stock checkpoint (nnunet-peft merge folds adapters into one)")
    check_pretrained_compatible(network, checkpoint, weights=ckpt["network_weights"])
    network.load_state_dict(ckpt["network_weights"])
    set_base_plans(network, args["plans"], args["configuration"], f"the base {checkpoint}")
    return network.eval()


def checkpoint_dict(network_weights: dict, trainer_name: str, plans: dict, dataset_json: dict, configuration: str,
                    fold: int | str, mirroring_axes=None) -> dict:
    """What nnU-Net's predictor reads from a checkpoint, in nnUNetTrainer.save_checkpoint's layout."""
    return {
        "network_weights": network_weights,
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": 0,
        "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                      "dataset_json": dataset_json, "device": torch.device("cpu")},
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": mirroring_axes,
    }


def copy_folder_files(source: Path, target: Path) -> None:
    for name in FOLDER_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(target) / name)


def validation_dice(fold_dir: Path) -> dict | None:
    """nnU-Net's validation Dice of one fold (``fold_K/validation/summary.json``), or None without one.

    ``{"foreground_mean": float, "per_label": {label: float}, "cases": int}``; ``foreground_mean``
    is nnU-Net's own (the mean over the foreground labels / regions of the per-label mean Dice).
    """
    path = Path(fold_dir) / "validation" / "summary.json"
    if not path.is_file():
        return None
    summary = read_json(path)
    mean = summary.get("foreground_mean", {}).get("Dice")
    if mean is None:
        return None
    per_label = {str(k): v.get("Dice") for k, v in summary.get("mean", {}).items() if isinstance(v, dict)}
    return {"foreground_mean": mean, "per_label": per_label, "cases": len(summary.get("metric_per_case", []))}
