"""What of a network is its adapters: the adapter layers, the tensor groups, the config, and the state.

Below the injection, the named-adapter registry and the adapter files, which all read these: the
injection puts the adapters in, the registry swaps them, ``adapter_io`` saves and loads them.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_peft.config import PeftConfig
from nnunet_peft.layers.base import AdapterLayer

# the tensor family's groups are a module of the network under this name; the config a plain attribute
GROUPS_ATTR = "peft_groups"
CONFIG_ATTR = "peft_config"


def adapter_layers(network: nn.Module) -> list[AdapterLayer]:
    """Every adapter layer of ``network``, once each."""
    return [m for m in network.modules() if isinstance(m, AdapterLayer)]


def get_config(network: nn.Module) -> PeftConfig | None:
    return getattr(network, CONFIG_ATTR, None)


def adapter_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter state, keyed as in ``network.state_dict()``; a tensor registered twice appears once.

    Every trainable tensor (adapters and segmentation heads) plus the frozen buffers the adapters
    were built with (SVD / t-SVD / CUR parts).
    """
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
