"""Saving and loading the adapter state alone: the config plus the tensors that differ from the base.

The state is every trainable tensor (adapters and segmentation heads) plus the frozen buffers the
adapters were built with (SVD / t-SVD / CUR parts). It is small, and together with the pretrained
checkpoint it reproduces the adapted network exactly, but only that checkpoint: the config records
a fingerprint of the base (``base_fingerprint``) and ``load_adapter`` refuses a network whose base
has another one.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nnunet_peft.adapter_state import adapter_layers, adapter_state_dict, get_config
from nnunet_peft.atomic import staged_folder
from nnunet_peft.config import PeftConfig
from nnunet_peft.injection import inject_adapters
from nnunet_peft.named_adapters import (active_adapter, adapter_names, check_adapter_plans, delete_adapter,
                                        disable_adapters, get_adapter, remembered_fingerprint, set_adapter,
                                        take_file_shapes)
from nnunet_peft.placement import HEAD_KEY
from nnunet_peft.summary import count_parameters

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FINGERPRINT_KEY = "base_fingerprint"
_BASE_LAYER = ".base_layer."


class BaseMismatchError(ValueError):
    """An adapter was asked to load onto a base other than the one it was trained on."""


class BaseFingerprintWarning(UserWarning):
    """An adapter was loaded onto a base that could not be checked, or that differs (when allowed)."""


# ------------------------------------------------------------------------------------ fingerprint
def base_state(source: nn.Module | Mapping[str, torch.Tensor], carried: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors the base fingerprint covers, keyed by their names in the stock (un-adapted) network.

    The base of an adapter is everything the adapted network computes with that the adapter file
    does not carry, i.e. what has to come from the pretrained checkpoint:

    * included: every entry of the network's state dict (parameters and persistent buffers:
      convolution kernels and biases, normalisation affines), with the frozen kernel of each
      adapter (``<conv>.base_layer.weight``) under its stock name ``<conv>.weight``. Names that
      address one tensor twice in nnU-Net's U-Nets (``.conv`` / ``.all_modules.0``, and the
      encoder again as ``decoder.encoder.*``) each appear, exactly as in a stock checkpoint, so a
      checkpoint's ``network_weights`` and the network built from it cover the same names;
    * excluded: every tensor the adapter file carries, which ``load_adapter`` overwrites: the
      adapters' parameters and the frozen buffers they were built with (SVD / t-SVD / CUR parts,
      ``peft_groups.*``), and the segmentation heads (``.seg_layers.``), which every adapter method
      trains and saves. The base's own heads, kept or re-initialised at the start of training,
      never reach the adapted model, so a base with other heads (another label set) has the same
      fingerprint.

    ``source`` is a network (adapted or stock) or a stock state dict (a checkpoint's
    ``network_weights``). ``carried`` names the tensors the adapter file holds; by default the
    adapter state of an adapted network (``adapter_state_dict``), or the segmentation heads for a
    stock network / state dict, which is the same set for every adapter method.
    """
    if isinstance(source, nn.Module):
        entries = source.state_dict(keep_vars=True)
        if carried is None:
            carried = adapter_state_dict(source) if get_config(source) is not None else [k for k in entries if HEAD_KEY in k]
        carried_ids = {id(entries[k]) for k in carried if k in entries}
        # a merged adapter layer holds W0 + dW in its kernel and keeps W0 aside
        unmerged = {id(layer.base_layer.weight): layer._unmerged_weight
                    for layer in adapter_layers(source) if layer.merged}
        state = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and id(value) not in carried_ids:
                state[key.replace(_BASE_LAYER, ".")] = unmerged.get(id(value), value).detach()
        return state
    if any(_BASE_LAYER in k for k in source):
        raise ValueError("these weights hold adapters; fingerprint the network built from them "
                         "(nnunet_peft.model_folder.build_network + load_state_dict) instead")
    carried = {k for k in source if HEAD_KEY in k} if carried is None else set(carried)
    return {k: v.detach() for k, v in source.items() if k not in carried and isinstance(v, torch.Tensor)}


def base_fingerprint(source: nn.Module | Mapping[str, torch.Tensor], carried: Iterable[str] | None = None) -> str:
    """``"sha256:<hex>"``: a digest of ``base_state(source, carried)`` that is the same on every device.

    Each tensor is first brought to one fixed representation: floating point as float32, integers
    and booleans as int64, complex as complex64; on the CPU, C-contiguous, little-endian bytes
    (numpy ``<f4`` / ``<i8`` / ``<c8``). The digest is the SHA-256 of, for each name in sorted
    order, ``name NUL kind NUL str(tuple(shape)) NUL`` (UTF-8) followed by the 32-byte SHA-256 of
    the tensor's bytes. So a float32 base gives one fingerprint on CPU and GPU, before and after
    save/load, and after a round trip through float64; changing any single value of the base
    changes it. (A float64 or float16 copy of the base is hashed at float32 precision.)
    """
    digest = hashlib.sha256()
    cache: dict[tuple, bytes] = {}
    for key, tensor in sorted(base_state(source, carried).items()):
        if tensor.is_meta:
            raise ValueError(f"{key} is on the meta device (it holds no values); load the base weights first")
        kind = _kind(tensor)
        # the same storage, offset, shape and strides hold the same values: hash aliases once
        where = (tensor.device, tensor.dtype, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                 tuple(tensor.shape), tuple(tensor.stride()))
        if where not in cache:
            values = tensor.detach().to("cpu", _KINDS[kind]).contiguous().numpy()
            cache[where] = hashlib.sha256(values.astype(kind, copy=False).tobytes()).digest()
        digest.update(f"{key}\0{kind}\0{tuple(tensor.shape)}\0".encode("utf-8"))
        digest.update(cache[where])
    return f"sha256:{digest.hexdigest()}"


_KINDS = {"<c8": torch.complex64, "<f4": torch.float32, "<i8": torch.int64}


def _kind(tensor: torch.Tensor) -> str:
    if tensor.is_complex():
        return "<c8"
    return "<f4" if tensor.is_floating_point() else "<i8"


def nnunet_metadata(trainer_name: str, plans: Mapping[str, Any], dataset_json: Mapping[str, Any],
                    configuration: str, fold: int | str | None = None) -> dict[str, Any]:
    """What an adapter was trained with, for ``save_adapter``'s metadata: trainer, plans, labels, channels."""
    meta = {
        "trainer_name": trainer_name,
        "plans_identifier": plans.get("plans_name"),
        "configuration": configuration,
        "dataset_name": plans.get("dataset_name"),
        "labels": dataset_json.get("labels"),
        "channels": dataset_json.get("channel_names", dataset_json.get("modality")),
    }
    if fold is not None:
        meta["fold"] = fold
    return meta


# ----------------------------------------------------------------------------------- save / load
def save_adapter(network: nn.Module, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into ``directory``.

    The config holds the ``PeftConfig``, the base fingerprint (``base_fingerprint``, see
    ``base_state``), the network class, the trainable and total parameter counts, and
    ``metadata`` (JSON-serialisable: trainer name, plans, labels, ...; see ``nnunet_metadata``).
    The folder is written under a temporary name and moved into place, replacing an older one
    only at the end.
    """
    config = get_config(network)
    if config is None:
        raise ValueError("the network holds no adapters (inject_adapters first)")
    state = adapter_state_dict(network)
    trainable, total = count_parameters(network)
    record = {
        "peft_config": config.to_dict(),
        **(metadata or {}),
        FINGERPRINT_KEY: base_fingerprint(network, carried=state),
        "network_class": type(network).__name__,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    with staged_folder(directory, overwrite=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a folder written by save_adapter / nnunet-peft export-adapter")
    return json.loads(path.read_text(encoding="utf-8"))


def load_adapter(network: nn.Module, directory: str | Path, *, allow_other_base: bool = False,
                 base_name: str | None = None, name: str | None = None) -> nn.Module:
    """Inject the saved adapters into ``network`` (which must hold the pretrained base) and load them.

    The base fingerprint of ``network`` must equal the one recorded when the adapter was saved;
    otherwise a ``BaseMismatchError`` (a ValueError) names both fingerprints. With
    ``allow_other_base=True`` it loads anyway and warns (``BaseFingerprintWarning``). An adapter
    saved before fingerprints were recorded loads with a warning that its base cannot be checked.
    ``base_name`` (e.g. the checkpoint path) names the base in those messages.

    ``name`` registers it as a named adapter beside the network's others and makes it active
    (``nnunet_peft.named_adapters``): its heads may then have another class count than the base's,
    and its plans (``plans.json`` beside it) must preprocess and build as the base's
    (``PlansMismatchError`` names each difference).
    """
    directory = Path(directory)
    record = read_adapter_config(directory)
    config = PeftConfig.from_dict(record["peft_config"])
    if name is not None:
        return load_named_adapter(network, directory, record, config, name, allow_other_base, base_name)
    if get_config(network) is not None and get_config(network) != config:
        raise ValueError(f"the network holds adapters {get_config(network)} but {directory} holds {config}")
    tensors = read_adapter_weights(directory)
    # before injecting anything, so that a refused base leaves the network as it was
    check_base(network, directory, record, carried=tensors.keys(), allow_other_base=allow_other_base,
               base_name=base_name)
    if get_config(network) is None:
        inject_adapters(network, config, init_weights=False)
    check_fits(network, tensors, directory / WEIGHTS_NAME)
    network.load_state_dict(tensors, strict=False)
    return network


def load_named_adapter(network: nn.Module, directory: Path, record: Mapping[str, Any], config: PeftConfig, name: str,
                       allow_other_base: bool = False, base_name: str | None = None) -> nn.Module:
    """``load_adapter(network, directory, name=name)``: checked against the base (fingerprint) and the plans,
    injected beside the other named adapters, loaded, and made active. A refused or unfitting adapter
    leaves the network as it was."""
    if name in adapter_names(network):
        raise ValueError(f"the network already holds an adapter named {name!r} (delete_adapter it first, or "
                         f"choose another name); it holds {adapter_names(network)}")
    tensors = read_adapter_weights(directory)
    with disable_adapters(network):  # the fingerprint is the stock base's, whichever adapter is active
        fingerprint = (remembered_fingerprint(network, tensors.keys(), base_fingerprint)
                       if FINGERPRINT_KEY in record else None)
        check_base(network, directory, record, carried=tensors.keys(), allow_other_base=allow_other_base,
                   base_name=base_name, fingerprint=fingerprint)
    check_adapter_plans(network, directory, record)
    previous = active_adapter(network)
    inject_adapters(network, config, init_weights=False, name=name)
    try:
        take_file_shapes(network, name, tensors)
        check_fits(network, tensors, directory / WEIGHTS_NAME)
        network.load_state_dict(tensors, strict=False)
    except Exception:
        delete_adapter(network, name)
        if previous is not None:
            set_adapter(network, previous)
        raise
    adapter = get_adapter(network, name)
    adapter.record, adapter.source = dict(record), directory
    return network


def read_adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the adapter folder is incomplete")
    return load_file(str(weights))


def check_fits(network: nn.Module, tensors: Mapping[str, torch.Tensor], weights: Path) -> None:
    """Refuse adapter ``tensors`` that are not exactly the adapter state of ``network`` (names and shapes)."""
    expected = adapter_state_dict(network)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(network.state_dict()))
    mismatched = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{weights} does not fit this network: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {mismatched[:5]}. Was it saved from a network built with the same plans?"
        )


def check_base(network: nn.Module, directory: Path, record: Mapping[str, Any], carried: Iterable[str],
               allow_other_base: bool = False, base_name: str | None = None,
               fingerprint: str | None = None) -> str | None:
    """Compare the base of ``network`` with the fingerprint ``record`` holds; raise, warn, or pass.

    ``carried``: the names of the tensors in the adapter file (excluded from the fingerprint, see
    ``base_state``); ``network`` may be stock or already hold these adapters. Returns the network's
    base fingerprint (None when nothing was recorded to compare with). ``fingerprint``: the network's,
    when the caller already has it (``base_fingerprint(network, carried)``).
    """
    base = f"the base {base_name}" if base_name else "the base weights in this network"
    recorded = record.get(FINGERPRINT_KEY)
    if recorded is None:
        warnings.warn(f"{directory / CONFIG_NAME} records no base fingerprint (saved by an older nnunet-peft), so "
                      f"whether {base} is the one it was trained on cannot be checked; loading it anyway.",
                      BaseFingerprintWarning, stacklevel=3)
        return None
    actual = fingerprint if fingerprint is not None else base_fingerprint(network, carried=carried)
    if recorded != actual:
        text = (f"the adapter {directory} was trained on a base with fingerprint {recorded}, but {base} has "
                f"fingerprint {actual}")
        if not allow_other_base:
            raise BaseMismatchError(
                f"{text}. An adapter reproduces its model only on the exact weights it was trained from (another "
                "epoch, fold or pretraining predicts something else). Use the checkpoint it was trained from, or "
                "accept this one explicitly: --allow-other-base (Python: allow_other_base=True).")
        warnings.warn(f"{text}; loading it anyway because another base was allowed (--allow-other-base / "
                      "allow_other_base=True). Its predictions are not those of the model it was exported from.",
                      BaseFingerprintWarning, stacklevel=3)
    return actual
