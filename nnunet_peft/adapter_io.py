"""Saving and loading the adapter state alone: the config plus the tensors that differ from the base.

The state is every trainable tensor (adapters and segmentation heads) plus the frozen buffers the
adapters were built with (SVD / t-SVD / CUR parts). It is small, and together with the pretrained
checkpoint it reproduces the adapted network exactly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nnunet_peft.atomic import staged_folder
from nnunet_peft.config import PeftConfig
from nnunet_peft.injection import GROUPS_ATTR, adapter_layers, get_config, inject_adapters

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def adapter_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter state, keyed as in ``network.state_dict()``; a tensor registered twice appears once."""
    keep = {id(p) for p in network.parameters() if p.requires_grad}
    for layer in adapter_layers(network):
        keep |= {id(b) for name, b in layer.named_buffers() if not name.startswith("base_layer.")}
    if hasattr(network, GROUPS_ATTR):
        keep |= {id(b) for b in getattr(network, GROUPS_ATTR).buffers()}
    state, seen = {}, set()
    for key, value in network.state_dict(keep_vars=True).items():
        if id(value) in keep and id(value) not in seen:
            seen.add(id(value))
            state[key] = value.detach().cpu().contiguous()
    return state


def save_adapter(network: nn.Module, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into ``directory``.

    ``metadata`` (JSON-serialisable: trainer name, plans, ...) is stored beside the config. The folder
    is written under a temporary name and moved into place, replacing an older one only at the end.
    """
    config = get_config(network)
    if config is None:
        raise ValueError("the network holds no adapters (inject_adapters first)")
    with staged_folder(directory, overwrite=True) as tmp:
        save_file(adapter_state_dict(network), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps({"peft_config": config.to_dict(), **(metadata or {})}, indent=2), encoding="utf-8")
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a folder written by save_adapter / nnunet-peft export-adapter")
    return json.loads(path.read_text(encoding="utf-8"))


def load_adapter(network: nn.Module, directory: str | Path) -> nn.Module:
    """Inject the saved adapters into ``network`` (which must hold the pretrained base) and load them."""
    directory = Path(directory)
    config = PeftConfig.from_dict(read_adapter_config(directory)["peft_config"])
    if get_config(network) is None:
        inject_adapters(network, config, init_weights=False)
    elif get_config(network) != config:
        raise ValueError(f"the network holds adapters {get_config(network)} but {directory} holds {config}")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the adapter folder is incomplete")
    tensors = load_file(str(weights))
    expected = adapter_state_dict(network)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(network.state_dict()))
    mismatched = [k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{weights} does not fit this network: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {sorted(mismatched)[:5]}. Was it saved from a network built with the same plans?"
        )
    network.load_state_dict(tensors, strict=False)
    return network
