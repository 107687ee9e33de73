"""What an adapter folder, a results folder or a checkpoint is (`nnunet-peft info PATH`).

``describe(path)`` returns the facts as ``{"path", "kind", "fields": [(name, value)], "folds":
[{"name", "fields"}]}``; ``format_info`` prints them. Nothing is written.

Recognised, in this order:

* a checkpoint file (``*.pth`` written by nnU-Net or by ``apply-adapter`` / ``merge``);
* an adapter folder: ``adapter_config.json`` inside (``save_adapter``, a fold of ``export-adapter``,
  or the ``fold_K/adapter/`` a plugin trainer writes);
* an nnU-Net results folder: ``plans.json`` and ``fold_K/checkpoint_*.pth`` (or one ``fold_K``
  folder of it);
* an ``export-adapter`` folder: ``plans.json`` and ``fold_K/adapter_config.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from nnunet_peft.adapter_io import CONFIG_NAME, FINGERPRINT_KEY, WEIGHTS_NAME, base_fingerprint, read_adapter_config
from nnunet_peft.model_folder import ADAPTER_DIR, SUMMARY_NAME, read_json, validation_dice

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")
NO_FINGERPRINT = "not recorded (saved by an older nnunet-peft): the base cannot be checked"

Fields = list[tuple[str, str]]


# ----------------------------------------------------------------------------------- dispatch
def describe(path: str | Path) -> dict[str, Any]:
    """The facts about ``path``; raises FileNotFoundError / ValueError for anything unrecognised."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".pth":
            return describe_checkpoint(path)
        if path.name in (CONFIG_NAME, WEIGHTS_NAME):
            return describe_adapter(path.parent)
        raise ValueError(_unrecognised(path))
    if (path / CONFIG_NAME).is_file():
        return describe_adapter(path)
    if (path / "plans.json").is_file():
        trained = [d for d in _fold_folders(path) if _checkpoint_in(d) is not None]
        if trained:
            return describe_results(path, trained)
        exported = [d for d in _fold_folders(path) if (d / CONFIG_NAME).is_file()]
        if exported:
            return describe_export(path, exported)
    if path.name.startswith("fold_") and (path.parent / "plans.json").is_file() and _checkpoint_in(path) is not None:
        return describe_results(path.parent, [path])
    raise ValueError(_unrecognised(path))


def _unrecognised(path: Path) -> str:
    return (f"{path} is none of what nnunet-peft info reads: an adapter folder (holding {CONFIG_NAME}), an "
            "export-adapter folder (plans.json + fold_K/adapter_config.json), an nnU-Net results folder "
            "(<Trainer>__<Plans>__<Configuration> with plans.json and fold_K/checkpoint_final.pth), one fold_K "
            "folder of it, or a checkpoint file (*.pth)")


def _fold_folders(folder: Path) -> list[Path]:
    return sorted((d for d in folder.glob("fold_*") if d.is_dir()), key=lambda d: (len(d.name), d.name))


def _checkpoint_in(fold_dir: Path) -> Path | None:
    return next((fold_dir / n for n in CHECKPOINT_NAMES if (fold_dir / n).is_file()), None)


# ------------------------------------------------------------------------------------ adapters
def describe_adapter(folder: Path) -> dict[str, Any]:
    """An adapter folder on its own; plans.json / dataset.json / validation beside or above it fill gaps."""
    record = read_adapter_config(folder)
    around = [folder, folder.parent, folder.parent.parent]
    dataset_json = _first_json(around, "dataset.json")
    plans = _first_json(around, "plans.json")
    fields: Fields = [("kind", "adapter folder (adapter_config.json + adapter_model.safetensors)")]
    fields += _adapter_fields(folder, record, plans, dataset_json)
    dice = record.get("validation_dice")
    if dice is None:  # the trainer's fold_K/adapter/: the fold's validation is beside it
        dice = next((d for d in (validation_dice(folder), validation_dice(folder.parent)) if d is not None), None)
    fields.append(("validation Dice", _dice_text(dice)))
    return {"path": str(folder), "kind": "adapter", "fields": fields, "folds": []}


def describe_export(folder: Path, folds: list[Path]) -> dict[str, Any]:
    plans, dataset_json = read_json(folder / "plans.json"), _first_json([folder], "dataset.json")
    fields: Fields = [("kind", "export-adapter folder (adapters of every fold + plans.json + dataset.json)")]
    fields += [("plans", str(plans.get("plans_name", "?"))),
               ("configuration", str(read_adapter_config(folds[0]).get("configuration", "not recorded")))]
    fields += _dataset_fields(plans, dataset_json)
    fold_entries = []
    for fold_dir in folds:
        record = read_adapter_config(fold_dir)
        entry = _adapter_fields(fold_dir, record, plans, dataset_json, shared=True)
        entry.append(("validation Dice", _dice_text(record.get("validation_dice"))))
        fold_entries.append({"name": fold_dir.name, "fields": entry})
    return {"path": str(folder), "kind": "export", "fields": fields, "folds": fold_entries}


def _adapter_fields(folder: Path, record: dict, plans: dict | None, dataset_json: dict | None,
                    shared: bool = False) -> Fields:
    """Method, size, base and provenance of one adapter; ``shared`` leaves out what the folder already said."""
    cfg = record.get("peft_config", {})
    rank, alpha = cfg.get("rank"), cfg.get("alpha")
    fields: Fields = [
        ("method", str(cfg.get("method"))),
        ("rank", str(rank)),
        ("alpha", f"{alpha:g} (scale {alpha / rank:g})" if isinstance(alpha, (int, float)) and rank else str(alpha)),
        ("placement", " + ".join(cfg.get("placement", [])) or "?"),
        ("forward mode", str(cfg.get("forward_mode"))),
    ]
    if cfg.get("train_input_conv"):
        fields.append(("first convolution", "trains fully (saved in the adapter)"))
    if cfg.get("train_fully"):
        fields.append(("trains fully", " + ".join(cfg["train_fully"]) + " (saved in the adapter)"))
    backbone = record.get("network_class") or _plans_class(plans, record.get("configuration"))
    fields.append(("backbone", backbone or "not recorded"))
    trainable, total = record.get("trainable_parameters"), record.get("total_parameters")
    fields.append(("trainable parameters", _params_text(trainable, total) if trainable is not None else "not recorded"))
    fields.append(("adapter file", _safetensors_text(folder / WEIGHTS_NAME)))
    fields.append(("base fingerprint", record.get(FINGERPRINT_KEY) or NO_FINGERPRINT))
    fields.append(("trainer", str(record.get("trainer_name", "not recorded"))))
    if record.get("fold") is not None:
        fields.append(("fold", str(record["fold"])))
    if not shared:
        fields.append(("plans", str(record.get("plans_identifier") or (plans or {}).get("plans_name") or "not recorded")))
        fields.append(("configuration", str(record.get("configuration", "not recorded"))))
        labels = record.get("labels") or (dataset_json or {}).get("labels")
        channels = record.get("channels") or _channels(dataset_json)
        fields.append(("labels", _labels_text(labels)))
        fields.append(("channels", _labels_text(channels)))
    return fields


# ------------------------------------------------------------------------------ results folder
def describe_results(folder: Path, folds: list[Path]) -> dict[str, Any]:
    """A ``Trainer__Plans__Configuration`` folder: what trained, and per fold its checkpoint, base and Dice."""
    from nnunet_peft.model_folder import build_network

    plans, dataset_json = read_json(folder / "plans.json"), _first_json([folder], "dataset.json") or {}
    parts = folder.name.split("__")
    trainer, configuration = (parts[0], parts[2]) if len(parts) == 3 else (None, None)
    fold_entries = []
    for fold_dir in folds:
        path = _checkpoint_in(fold_dir)
        ckpt = _load_checkpoint(path)
        trainer = trainer or ckpt.get("trainer_name")
        configuration = configuration or ckpt.get("init_args", {}).get("configuration")
        network = build_network(ckpt["trainer_name"], plans, dataset_json, ckpt["init_args"]["configuration"])
        network.load_state_dict(ckpt["network_weights"])
        entry: Fields = [("checkpoint", f"{path.name}, {_size(path.stat().st_size)}, epoch {ckpt.get('current_epoch', '?')}")]
        entry += _trained_network_fields(network, ckpt["trainer_name"], fold_dir)
        dice = validation_dice(fold_dir)
        entry.append(("validation Dice", _dice_text(dice)))
        fold_entries.append({"name": fold_dir.name, "fields": entry})
    fields: Fields = [("kind", "nnU-Net results folder")]
    fields += _trainer_fields(trainer)
    fields.append(("plans", str(plans.get("plans_name", parts[1] if len(parts) == 3 else "?"))))
    fields.append(("configuration", str(configuration)))
    fields.append(("backbone", _architecture(plans, configuration, trainer) or "?"))
    fields += _dataset_fields(plans, dataset_json)
    return {"path": str(folder), "kind": "results", "fields": fields, "folds": fold_entries}


def _trained_network_fields(network: nn.Module, trainer_name: str, fold_dir: Path | None) -> Fields:
    """Trainable parameters, adapter file and base fingerprint of a network loaded from a checkpoint."""
    from nnunet_peft.injection import configure_finetuning, get_config
    from nnunet_peft.summary import count_parameters
    from nnunet_peft.name_grammar import is_plugin_name, parse_trainer_name

    fields: Fields = []
    summary = _read_json_or_none(fold_dir / SUMMARY_NAME) if fold_dir is not None else None
    adapted = get_config(network) is not None
    if summary and summary.get("trainable_parameters") is not None:
        fields.append(("trainable parameters", _params_text(summary["trainable_parameters"], summary.get("total_parameters"))))
    elif is_plugin_name(trainer_name):
        spec = parse_trainer_name(trainer_name)
        if not adapted and spec.baseline is not None:
            configure_finetuning(network, spec.baseline, spec.placement)
        fields.append(("trainable parameters", _params_text(*count_parameters(network))))
    else:
        _, total = count_parameters(network)
        fields.append(("parameters", f"{total:,} (nnU-Net's own trainer trains them all)"))
    if fold_dir is not None and (fold_dir / ADAPTER_DIR / WEIGHTS_NAME).is_file():
        fields.append(("adapter file", f"{ADAPTER_DIR}/{WEIGHTS_NAME}, "
                                       f"{_safetensors_text(fold_dir / ADAPTER_DIR / WEIGHTS_NAME)}"))
    fingerprint = base_fingerprint(network)
    if adapted:
        fields.append(("base fingerprint", fingerprint))
        recorded = _read_json_or_none(fold_dir / ADAPTER_DIR / CONFIG_NAME) if fold_dir is not None else None
        if recorded and recorded.get(FINGERPRINT_KEY) not in (None, fingerprint):
            fields.append(("WARNING", f"{ADAPTER_DIR}/{CONFIG_NAME} records another base fingerprint, "
                                      f"{recorded[FINGERPRINT_KEY]}"))
    else:
        fields.append(("fingerprint as a base", f"{fingerprint} (what adapters trained on these weights record)"))
    return fields


# ---------------------------------------------------------------------------------- checkpoint
def describe_checkpoint(path: Path) -> dict[str, Any]:
    """One ``.pth``: trainer, architecture, plans, configuration, labels, epoch, parameters, fingerprint."""
    from nnunet_peft.model_folder import build_network

    ckpt = _load_checkpoint(path)
    args = ckpt.get("init_args") or {}
    plans, configuration = args.get("plans"), args.get("configuration")
    trainer = ckpt.get("trainer_name")
    dataset_json, labels_from = args.get("dataset_json"), "the checkpoint"
    beside = _first_json([path.parent, path.parent.parent], "dataset.json")
    if not dataset_json and beside:
        dataset_json, labels_from = beside, "dataset.json beside it"
    weights = ckpt["network_weights"]
    fields: Fields = [("kind", "nnU-Net checkpoint"), ("file size", _size(path.stat().st_size))]
    fields += _trainer_fields(trainer)
    fields.append(("architecture", _architecture(plans, configuration, trainer, full=True) or "not recorded"))
    network = None
    if plans and configuration and dataset_json and trainer:
        try:
            network = build_network(trainer, plans, dataset_json, configuration)
            network.load_state_dict(weights)
        except Exception as e:  # a custom trainer or architecture: report what the weights alone say
            fields.append(("note", f"could not rebuild the network ({type(e).__name__}: {str(e)[:200]}); "
                                   "counts and fingerprint come from the stored weights"))
            network = None
    if network is not None:
        fields.append(("backbone", type(network).__name__))
    fields.append(("plans", str((plans or {}).get("plans_name", "not recorded"))))
    fields.append(("dataset", str((plans or {}).get("dataset_name", "not recorded"))))
    fields.append(("configuration", str(configuration or "not recorded")))
    fields.append(("fold", str(args.get("fold", "not recorded"))))
    fields.append(("epoch", str(ckpt.get("current_epoch", "not recorded"))))
    fields.append(("labels", _labels_text((dataset_json or {}).get("labels")) + (f" (from {labels_from})" if dataset_json else "")))
    fields.append(("channels", _labels_text(_channels(dataset_json))))
    if network is not None:
        fields += _trained_network_fields(network, trainer or "", None)
    elif any(".base_layer." in k for k in weights):
        fields.append(("base fingerprint", "unknown: the checkpoint holds adapters but not the plans to rebuild them"))
    else:
        fields.append(("parameters", f"{_count_unique(weights):,}"))
        fields.append(("fingerprint as a base", f"{base_fingerprint(weights)} (what adapters trained on these weights record)"))
    return {"path": str(path), "kind": "checkpoint", "fields": fields, "folds": []}


def _load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise ValueError(f"{path} is not an nnU-Net checkpoint (no 'network_weights'); expected a checkpoint_*.pth "
                         "written by nnUNetv2_train, apply-adapter or merge")
    return ckpt


def _count_unique(weights: dict) -> int:
    seen, n = set(), 0
    for v in weights.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
            if key not in seen:
                seen.add(key)
                n += v.numel()
    return n


# ------------------------------------------------------------------------------------- pieces
def _trainer_fields(trainer: str | None) -> Fields:
    from nnunet_peft.name_grammar import is_plugin_name, parse_trainer_name

    fields: Fields = [("trainer", str(trainer))]
    if trainer and is_plugin_name(trainer):
        spec = parse_trainer_name(trainer)
        if spec.peft_method is not None:
            cfg = spec.peft_config()
            fields += [("method", f"{cfg.method} ({spec.method})"), ("rank", str(cfg.rank)),
                       ("alpha", f"{cfg.alpha:g} (scale {cfg.scaling:g})"), ("placement", " + ".join(cfg.placement))]
        else:
            what = {"finetune": "fine-tuning", "seg_head": "segmentation heads only", "none": "no training"}[spec.baseline]
            fields += [("method", f"{spec.method} ({what}, no adapters)"), ("placement", " + ".join(spec.placement))]
    elif trainer:
        fields.append(("method", "nnU-Net's own trainer (no adapters)"))
    return fields


def _dataset_fields(plans: dict, dataset_json: dict | None) -> Fields:
    fields: Fields = [("dataset", str(plans.get("dataset_name", "?")))]
    fields.append(("labels", _labels_text((dataset_json or {}).get("labels"))))
    fields.append(("channels", _labels_text(_channels(dataset_json))))
    return fields


def _architecture(plans: dict | None, configuration: str | None, trainer: str | None,
                  full: bool = False) -> str | None:
    """The network ``trainer`` builds: its backbone token's, else the plans' class."""
    from nnunet_peft.architectures import network_description
    from nnunet_peft.name_grammar import is_plugin_name, parse_trainer_name

    token = None
    if trainer and is_plugin_name(trainer):
        try:
            token = parse_trainer_name(trainer).backbone
        except ValueError:
            pass
    return network_description(token, _plans_class(plans, configuration, full))


def _plans_class(plans: dict | None, configuration: str | None, full: bool = False) -> str | None:
    if not plans or not configuration:
        return None
    try:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        name = PlansManager(plans).get_configuration(configuration).network_arch_class_name
    except Exception:
        return None
    return name if full else name.rsplit(".", 1)[-1]


def _channels(dataset_json: dict | None) -> Any:
    if not dataset_json:
        return None
    return dataset_json.get("channel_names", dataset_json.get("modality"))


def _labels_text(labels: Any) -> str:
    if not labels:
        return "not recorded"
    if isinstance(labels, dict):
        return ", ".join(f"{k}={v}" for k, v in labels.items())
    return str(labels)


def _params_text(trainable: int, total: int | None) -> str:
    if not total:
        return f"{trainable:,}"
    return f"{trainable:,} of {total:,} ({100.0 * trainable / total:.2f}%)"


def _dice_text(dice: dict | None) -> str:
    if not dice:
        return "no validation summary"
    per_label = ", ".join(f"{k}: {v:.4f}" for k, v in dice.get("per_label", {}).items()
                          if k not in ("0", "background") and isinstance(v, (int, float)))
    text = f"{dice['foreground_mean']:.4f} (foreground mean over {dice.get('cases', '?')} cases"
    return text + (f"; {per_label})" if per_label else ")")


def _safetensors_text(path: Path) -> str:
    if not path.is_file():
        return "missing"
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        values = 0
        for k in keys:
            n = 1
            for s in f.get_slice(k).get_shape():
                n *= s
            values += n
    return f"{_size(path.stat().st_size)} ({len(keys)} tensors, {values:,} values)"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MiB"


def _first_json(folders: list[Path], name: str) -> dict | None:
    for folder in folders:
        if (folder / name).is_file():
            return read_json(folder / name)
    return None


def _read_json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------- printing
def format_info(info: dict[str, Any]) -> str:
    rows = info["fields"] + [(k, v) for fold in info["folds"] for k, v in fold["fields"]]
    width = max(len(k) for k, _ in rows) + 2
    lines = [info["path"]]
    lines += [f"  {k + ':':<{width + 2}}{v}" for k, v in info["fields"]]  # values of folder and folds align
    for fold in info["folds"]:
        lines.append(f"  {fold['name']}")
        lines += [f"    {k + ':':<{width}}{v}" for k, v in fold["fields"]]
    return "\n".join(lines)
