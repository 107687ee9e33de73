"""Sharing trained adapters: a model folder's adapters alone (``export_adapter``), a model folder rebuilt
from them and the pretrained base (``apply_adapter``), and one with them folded into the kernels, which
stock nnU-Net predicts with (``merge_model_folder``). The commands ``export-adapter``, ``apply-adapter``
and ``merge`` (``nnunet_peft.commands.adapters``) and the demo call these.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nnunet_peft.adapter_io import (CONFIG_NAME, WEIGHTS_NAME, load_adapter, nnunet_metadata, read_adapter_config,
                                    save_adapter)
from nnunet_peft.atomic import staged_folder
from nnunet_peft.checkpoint_file import check_pretrained_compatible, load_weights
from nnunet_peft.injection import get_config, merge_adapters
from nnunet_peft.model_folder import (CHECKPOINT, build_network, checkpoint_dict, copy_folder_files, fold_dirs,
                                      load_fold, read_json, validation_dice)
from nnunet_peft.name_grammar import PREFIX
from nnunet_peft.placement import HEAD_KEY

STOCK_TRAINER = PREFIX  # nnU-Net's own trainer, which a merged model folder names


def export_adapter(model_folder: Path, out: Path, overwrite: bool = False) -> list[Path]:
    """Write every fold's adapter state with the trainer name, configuration, plans and dataset.json.

    Each fold's ``adapter_config.json`` also records the base fingerprint (computed from the fold's
    frozen base), plans identifier, labels, channels and the fold's validation Dice where present.
    """
    model_folder = Path(model_folder)
    written = []
    with staged_folder(out, overwrite) as tmp:
        copy_folder_files(model_folder, tmp)
        for fold_dir in fold_dirs(model_folder):
            network, ckpt = load_fold(model_folder, fold_dir)
            if get_config(network) is None:
                raise ValueError(
                    f"{fold_dir / CHECKPOINT} was trained by {ckpt['trainer_name']}, which trains no adapters; "
                    "its whole checkpoint is the model to share")
            args = ckpt["init_args"]
            meta = nnunet_metadata(ckpt["trainer_name"], read_json(model_folder / "plans.json"),
                                   read_json(model_folder / "dataset.json"), args["configuration"], args.get("fold"))
            meta["inference_allowed_mirroring_axes"] = _jsonable(ckpt.get("inference_allowed_mirroring_axes"))
            meta["validation_dice"] = validation_dice(fold_dir)
            save_adapter(network, tmp / fold_dir.name, meta)
            written.append(Path(out) / fold_dir.name / WEIGHTS_NAME)
    return written


def apply_adapter(adapter: Path, pretrained: Path, out: Path, overwrite: bool = False,
                  allow_other_base: bool = False, configuration: str | None = None) -> Path:
    """Rebuild a model folder from an exported adapter and the pretrained checkpoint it was trained from.

    A checkpoint whose base fingerprint differs from the one each fold recorded is refused
    (``BaseMismatchError``, nothing written) unless ``allow_other_base``, which warns instead.
    ``configuration``, when given, must be the one the adapter records (a check, not a choice).
    """
    adapter = Path(adapter)
    folds = export_folds(adapter)
    plans, dataset_json = read_json(adapter / "plans.json"), read_json(adapter / "dataset.json")
    if configuration is not None:
        recorded = sorted({read_adapter_config(d).get("configuration") for d in folds})
        if recorded != [configuration]:
            raise ValueError(f"{adapter} was trained as configuration {', '.join(map(str, recorded))}, not "
                             f"{configuration!r}; leave -c out (the adapter records its configuration)")
    base = load_weights(pretrained)
    with staged_folder(out, overwrite) as tmp:
        copy_folder_files(adapter, tmp)
        for fold_dir in folds:
            meta = read_adapter_config(fold_dir)
            network = build_network(stock_trainer(meta["trainer_name"]), plans, dataset_json, meta["configuration"])
            replaced = _rebuilt_in_full(network, fold_dir)
            check_pretrained_compatible(network, pretrained, plans.get("dataset_name", "TARGET"), replaced=replaced)
            network.load_state_dict({k: v for k, v in base.items() if HEAD_KEY not in k and k not in replaced},
                                    strict=False)
            load_adapter(network, fold_dir, allow_other_base=allow_other_base, base_name=str(pretrained))
            (tmp / fold_dir.name).mkdir()
            torch.save(checkpoint_dict(network.state_dict(), meta["trainer_name"], plans, dataset_json,
                                       meta["configuration"], meta.get("fold", fold_dir.name[5:]),
                                       _axes(meta.get("inference_allowed_mirroring_axes"))),
                       tmp / fold_dir.name / CHECKPOINT)
    return Path(out)


def export_folds(adapter: Path) -> list[Path]:
    """The fold folders of an export-adapter folder, after checking that it is one.

    Checked before anything is read, so that a wrong ``-a`` is reported as the folder it is, with
    what such a folder holds, rather than as the first file missing from it.
    """
    holds = (f"an adapter folder is one written by export-adapter, holding plans.json, dataset.json and "
             f"fold_K/{CONFIG_NAME} with fold_K/{WEIGHTS_NAME} for every fold")
    if not adapter.is_dir():
        raise FileNotFoundError(f"adapter folder {adapter} {'is a file' if adapter.exists() else 'does not exist'}; "
                                f"{holds}")
    folds = sorted(d for d in adapter.glob("fold_*") if (d / CONFIG_NAME).is_file())
    if not folds:
        raise FileNotFoundError(f"{adapter} holds no fold_*/{CONFIG_NAME}; {holds}")
    missing = [name for name in ("plans.json", "dataset.json") if not (adapter / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{adapter} has no {' and no '.join(missing)}; {holds}")
    return folds


def _rebuilt_in_full(network: torch.nn.Module, fold_dir: Path) -> set[str]:
    """Keys of the stock ``network`` that the adapter file carries whole, heads aside: a first convolution
    rebuilt for the target's input channels (chzero/chrepeat/chcopy) trains in full, so the checkpoint's
    kernel, of the source's channel count, must give way to the file's. Every alias of such a tensor is
    included (nnU-Net registers its convolutions twice)."""
    from safetensors import safe_open

    with safe_open(str(fold_dir / WEIGHTS_NAME), framework="pt") as f:
        names = set(f.keys())
    state = network.state_dict(keep_vars=True)
    carried = {id(state[k]) for k in names if k in state}
    return {k for k, v in state.items() if id(v) in carried and HEAD_KEY not in k}


def stock_trainer(trainer_name: str) -> str:
    """The trainer whose network is ``trainer_name``'s without adapters: nnU-Net's own for the U-Nets;
    for a transformer backbone, which nnU-Net cannot build from plans, ``nnUNetTrainerNoFinetune_<backbone>``."""
    from nnunet_peft.architectures import family_for_token
    from nnunet_peft.name_grammar import is_plugin_name, parse_trainer_name

    backbone = parse_trainer_name(trainer_name).backbone if is_plugin_name(trainer_name) else None
    return STOCK_TRAINER if family_for_token(backbone).nnunet_builds else f"{PREFIX}NoFinetune_{backbone}"


def merge_model_folder(model_folder: Path, out: Path, overwrite: bool = False) -> Path:
    """A model folder of stock ``nnUNetTrainer`` checkpoints with the adapters folded into the kernels
    (``nnUNetTrainerNoFinetune_<backbone>`` ones for a transformer backbone, predicted with the plugin)."""
    model_folder = Path(model_folder)
    with staged_folder(out, overwrite) as tmp:
        copy_folder_files(model_folder, tmp)
        for fold_dir in fold_dirs(model_folder):
            network, ckpt = load_fold(model_folder, fold_dir)
            if get_config(network) is not None:
                merge_adapters(network)
            args = ckpt["init_args"]
            (tmp / fold_dir.name).mkdir()
            torch.save(checkpoint_dict(network.state_dict(), stock_trainer(ckpt["trainer_name"]), args["plans"],
                                       args["dataset_json"], args["configuration"], args.get("fold"),
                                       ckpt.get("inference_allowed_mirroring_axes")),
                       tmp / fold_dir.name / CHECKPOINT)
    return Path(out)


def _jsonable(axes):
    return None if axes is None else [int(a) for a in axes]


def _axes(axes):
    return None if axes is None else tuple(axes)
