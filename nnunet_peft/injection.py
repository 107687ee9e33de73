"""Putting adapters into a network, folding them back out, and choosing what trains."""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from nnunet_peft.adapter_state import CONFIG_ATTR, GROUPS_ATTR, adapter_layers, get_config
from nnunet_peft.config import METHODS, PLACEMENTS, PeftConfig
from nnunet_peft.layers.base import AdapterLayer, check_adaptable
from nnunet_peft.layers.kinds import conv_layout_weight
from nnunet_peft.layers.tensor import TensorGroupAdapter
from nnunet_peft.named_adapters import forget_adapters, prepare_injection, register_injected
from nnunet_peft.placement import (check_called, fused_blocks, input_convolution, module_names, network_stages,
                                   replace_module, target_modules)

# The methods with one adapter per layer (every family but the tensor one, whose layers share groups),
# read from the registry nnunet_peft.config.METHODS
LAYER_CLASSES: dict[str, type[AdapterLayer]] = {
    method: spec.layer_class for method, spec in METHODS.items() if spec.family != "tensor"}


def inject_adapters(network: nn.Module, config: PeftConfig, *, init_weights: bool = True,
                    name: str | None = None) -> nn.Module:
    """Wrap the placed convolutions and Linear layers of ``network`` in adapters of ``config.method``, in place.

    Everything is frozen except the adapters, the segmentation heads (which every method trains) and the
    stages of ``config.train_fully``, which train every weight.
    Adapters that derive from the kernels (DoRA magnitudes, SVD / t-SVD / CUR parts) are computed from
    the weights the network holds now, so load the pretrained weights first. ``init_weights=False``
    only allocates the adapter tensors (for loading a saved state, where computing them is wasted).
    ``name`` registers the adapter under that name beside the network's other named adapters and makes
    it the active one (``nnunet_peft.named_adapters``); without one it is ``"default"``.
    """
    if not isinstance(config, PeftConfig):
        raise ValueError(f"config must be a PeftConfig, got {type(config).__name__}")
    prepare_injection(network, name)
    if get_config(network) is not None or adapter_layers(network):
        raise ValueError("the network already holds adapters; build a fresh network (or merge_adapters first)")
    targets = target_modules(network, config.placement)
    if config.train_input_conv:
        first = input_convolution(network)
        targets = [(where, conv) for where, conv in targets if conv is not first]
    if not targets:
        raise ValueError(f"placement {config.placement} selects no convolution or Linear layer in "
                         f"{type(network).__name__}")
    for where, conv in targets:  # validate everything before changing anything
        check_adaptable(conv, config.method, where)
    check_called(network, targets, config.method)

    if config.spec.family == "tensor":
        wrappers = _tensor_wrappers(network, targets, config, init_weights)
    else:
        cls = config.spec.layer_class
        wrappers = [cls(conv, config, init_weights=init_weights) for _, conv in targets]
    for (_, conv), wrapper in zip(targets, wrappers):
        # the factors are allocated in float32; they must follow the kernel (a float64 or half network)
        replace_module(network, conv, wrapper.to(device=conv.weight.device, dtype=conv.weight.dtype))

    set_trainable(network, adapters=True, heads=True, placement=config.train_fully,
                  input_conv=config.train_input_conv)
    object.__setattr__(network, CONFIG_ATTR, config)  # plain attribute: not a module, not in the state dict
    register_injected(network, name)
    return network


def _tensor_wrappers(network, targets, config, init_weights) -> list[AdapterLayer]:
    """One group per conv-layout matrix shape, across stages (docs/METHODS.md, "The tensor family").

    A fused q/k/v projection (``fused_blocks``) contributes its three row blocks as three matrices, so
    q, k and v group with the other square projections of the same width.
    """
    names = module_names(network)
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = defaultdict(list)
    slots: list[list[tuple[tuple[int, ...], int]]] = []  # per target: (shape, index in its group) per block
    for _, layer in targets:
        blocks = fused_blocks(layer, names.get(id(layer), []))
        slots.append([])
        for kernel in conv_layout_weight(layer).detach().chunk(blocks, dim=0):
            shape = tuple(kernel.shape)
            slots[-1].append((shape, len(by_shape[shape])))
            by_shape[shape].append(kernel)
    groups = nn.ModuleDict()
    built = {}
    for g, (shape, kernels) in enumerate(by_shape.items()):
        built[shape] = config.spec.layer_class(kernels, config, init_weights=init_weights).to(kernels[0].device)
        groups[f"group{g}"] = built[shape]
    network.add_module(GROUPS_ATTR, groups)
    return [TensorGroupAdapter(layer, config, [(built[shape], index) for shape, index in slot])
            for (_, layer), slot in zip(targets, slots)]


def set_trainable(network: nn.Module, *, adapters: bool = False, heads: bool = False,
                  placement: tuple[str, ...] = (), everything: bool = False, input_conv: bool = False) -> None:
    """Freeze ``network``, then unfreeze the adapters, the heads, the first convolution and/or whole placed stages."""
    network.requires_grad_(everything)
    if everything:
        return
    if adapters:
        for layer in adapter_layers(network):
            for p in layer.adapter_parameters():
                p.requires_grad_(True)
        if hasattr(network, GROUPS_ATTR):
            getattr(network, GROUPS_ATTR).requires_grad_(True)
    for stage in network_stages(network):
        if (heads and stage.placement == "seg_layers") or stage.placement in placement:
            for module in stage.modules:
                module.requires_grad_(True)
    if adapters:  # unfreezing a placed stage must not unfreeze the frozen kernels inside its adapters
        for layer in adapter_layers(network):
            layer.base_layer.requires_grad_(False)
    if input_conv:
        input_convolution(network).requires_grad_(True)


def configure_finetuning(network: nn.Module, mode: str, placement: tuple[str, ...] = PLACEMENTS,
                         input_conv: bool = False) -> nn.Module:
    """The standard baselines: ``"finetune"`` (placed stages + heads, or all), ``"seg_head"``, ``"none"``.

    ``input_conv``: the first convolution trains too (its input channels were rebuilt); not for ``"none"``.
    """
    if mode == "finetune":
        if tuple(sorted(placement)) == tuple(sorted(PLACEMENTS)):
            set_trainable(network, everything=True)
        else:
            set_trainable(network, heads=True, placement=placement, input_conv=input_conv)
    elif mode == "seg_head":
        set_trainable(network, heads=True, input_conv=input_conv)
    elif mode == "none":
        set_trainable(network)
    else:
        raise ValueError(f"mode must be 'finetune', 'seg_head' or 'none', got {mode!r}")
    return network


@torch.no_grad()
def merge_adapters(network: nn.Module) -> nn.Module:
    """Fold every adapter into its kernel and remove it, in place; returns ``network``.

    The result is a stock network of the original class whose ``state_dict`` loads strictly into a
    freshly built one. All parameters are trainable again, as in a stock network. HyPS cannot be
    folded (its serial adapter is a function of the activations) and raises a ValueError.
    """
    config = get_config(network)
    layers = adapter_layers(network)
    if config is None and not layers:
        raise ValueError("the network holds no adapters to merge")
    if config is not None and not config.spec.mergeable:
        raise ValueError(
            f"{config.method} cannot be merged into a stock network: its serial adapter acts on the "
            "activations, not on a kernel. Keep the adapted network (the plugin's trainer predicts with it)."
        )
    forget_adapters(network)
    for layer in layers:
        base = layer.base_layer
        base.weight.copy_(layer.from_conv_layout(layer.adapted_weight()).to(base.weight.dtype))
        replace_module(network, layer, base)
    if hasattr(network, GROUPS_ATTR):
        delattr(network, GROUPS_ATTR)
    if CONFIG_ATTR in network.__dict__:
        del network.__dict__[CONFIG_ATTR]
    network.requires_grad_(True)
    return network
