"""Several named adapters on one frozen base, as in Hugging Face peft's multi-adapter API.

A named adapter is a set of module objects kept beside the network: its adapter layers (each wraps
the network's own frozen layer, shared by every adapter), its tensor groups (LoRA-PT, t-CUR), and its
own tensors at names the stock network also has (the segmentation heads, and layers an adapter trains
in full, such as a rebuilt first convolution). The network holds one adapter at a time: ``set_adapter``
swaps the modules and tensors of the active one out and those of another in. Nothing is copied or
recomputed, so an adapter computes exactly what it computed alone, and the base inside every adapter
layer is the same tensor for all of them.

``disable_adapters`` swaps the active adapter out for the duration of a ``with`` block: the network is
then literally the stock network it was before the first adapter (its own heads included), so its
output is bit-identical to the un-adapted base's.

Every ``inject_adapters`` and ``load_adapter`` call registers its adapter (under ``"default"`` without a
name), so the single-adapter use is unchanged: the default adapter owns the network's heads and trains
them; the base's heads are kept aside (a frozen copy) for ``disable_adapters``.

Plans. An adapter reproduces its model only with the input preprocessed as it was trained (spacing,
normalisation, axis order, patch size) and on the network built from the same architecture. Where
the plans are known (``model_folder.load_base`` records the checkpoint's; an export-adapter folder
holds its own), ``load_adapter(..., name=...)`` refuses an adapter whose plans differ in any of
these (``PlansMismatchError``, naming each difference). Targets planned with
``plan-from-checkpoint`` from one checkpoint share all of them.

Layering: the registry reads the network through ``adapter_state`` alone, so that ``injection``
(which registers what it injects) and ``adapter_io`` (whose ``load_adapter(..., name=...)`` checks,
injects and loads) both sit above it.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from nnunet_peft.adapter_state import CONFIG_ATTR, GROUPS_ATTR, adapter_layers, adapter_state_dict, get_config
from nnunet_peft.config import PeftConfig
from nnunet_peft.layers.base import AdapterLayer

REGISTRY_ATTR = "peft_named_adapters"
DEFAULT_ADAPTER = "default"


class PlansMismatchError(ValueError):
    """An adapter's plans would preprocess its input or build its network differently from the base's."""


@dataclass
class NamedAdapter:
    """One adapter's modules and tensors, held outside the network while another one is active."""

    name: str
    config: PeftConfig
    layers: list[AdapterLayer]
    groups: nn.Module | None
    # the adapter's own tensor at each stock-network name it carries (heads, layers trained in full)
    owned: dict[str, torch.Tensor]
    record: dict[str, Any] = field(default_factory=dict)  # adapter_config.json, when loaded from a folder
    source: Path | None = None


@dataclass
class _Registry:
    adapters: dict[str, NamedAdapter] = field(default_factory=dict)
    active: str | None = None
    base: dict[str, torch.Tensor] = field(default_factory=dict)  # the base's own tensor at every owned name
    plans: tuple[dict, str, str] | None = None  # (plans, configuration, where they came from)
    # base fingerprints by (names the adapter file carries, the base tensors' identities and versions): hashing
    # a large base takes a while, and every fold of every adapter asks for it
    fingerprints: dict[tuple, str] = field(default_factory=dict)


def _registry(network: nn.Module, create: bool = False) -> _Registry | None:
    reg = network.__dict__.get(REGISTRY_ATTR)
    if reg is None and create:
        reg = _Registry()
        object.__setattr__(network, REGISTRY_ATTR, reg)  # a plain attribute: not a module, not in the state dict
    return reg


def adapter_names(network: nn.Module) -> list[str]:
    """The names of the adapters registered on ``network``, in the order they were added."""
    reg = _registry(network)
    return [] if reg is None else list(reg.adapters)


def active_adapter(network: nn.Module) -> str | None:
    """The name of the adapter the network computes with now (None: the base alone)."""
    reg = _registry(network)
    return None if reg is None else reg.active


def get_adapter(network: nn.Module, name: str) -> NamedAdapter:
    reg = _registry(network)
    if reg is None or name not in reg.adapters:
        raise ValueError(f"no adapter named {name!r} on this network; it holds {adapter_names(network)}")
    return reg.adapters[name]


# ------------------------------------------------------------------------------ swapping modules
def _swap_modules(network: nn.Module, mapping: dict[int, nn.Module]) -> None:
    """Replace every registration of each module whose id is in ``mapping``, in one walk (aliases included)."""
    if not mapping:
        return
    for parent in list(network.modules()):
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in mapping:
                parent._modules[key] = mapping[id(child)]


def _set_tensor(network: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` (a Parameter or a buffer) at state-dict name ``key``; its shape may differ (heads of
    another class count), so the module's recorded sizes follow it."""
    prefix, _, attr = key.rpartition(".")
    module = network.get_submodule(prefix)
    if attr in module._parameters:
        module._parameters[attr] = tensor
    elif attr in module._buffers:
        module._buffers[attr] = tensor
    else:
        raise ValueError(f"{key} is neither a parameter nor a buffer of the network")
    if attr == "weight":
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            module.out_channels, module.in_channels = tensor.shape[0], tensor.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = tensor.shape


def _tensor_at(network: nn.Module, key: str) -> torch.Tensor:
    prefix, _, attr = key.rpartition(".")
    module = network.get_submodule(prefix)
    return module._parameters[attr] if attr in module._parameters else module._buffers[attr]


def _deactivate(network: nn.Module, reg: _Registry) -> None:
    """Swap the active adapter out: the network becomes the stock base."""
    if reg.active is None:
        return
    adapter = reg.adapters[reg.active]
    for layer in adapter.layers:
        layer.unmerge()  # a merged layer holds W0 + dW in the base kernel every adapter shares
    _swap_modules(network, {id(layer): layer.base_layer for layer in adapter.layers})
    if GROUPS_ATTR in network._modules:
        del network._modules[GROUPS_ATTR]
    for key in adapter.owned:
        _set_tensor(network, key, reg.base[key])
    network.__dict__.pop(CONFIG_ATTR, None)
    reg.active = None


def _activate(network: nn.Module, reg: _Registry, name: str) -> None:
    adapter = reg.adapters[name]
    for layer in adapter.layers:  # it computes in the mode the network is in now (eval / train differ)
        layer.train(network.training)
    if adapter.groups is not None:
        adapter.groups.train(network.training)
    _swap_modules(network, {id(layer.base_layer): layer for layer in adapter.layers})
    if adapter.groups is not None:
        network._modules[GROUPS_ATTR] = adapter.groups
    for key, tensor in adapter.owned.items():
        _set_tensor(network, key, tensor)
    object.__setattr__(network, CONFIG_ATTR, adapter.config)
    reg.active = name


# --------------------------------------------------------------------------------- the public API
def set_adapter(network: nn.Module, name: str | None) -> nn.Module:
    """Make ``name`` the adapter ``network`` computes with (the others stay registered); returns ``network``.
    ``None``: the base alone until another is set (``disable_adapters`` does it for a block)."""
    reg = _registry(network)
    if name is None:
        if reg is not None:
            _deactivate(network, reg)
        return network
    if reg is None or name not in reg.adapters:
        raise ValueError(f"no adapter named {name!r} on this network; it holds {adapter_names(network)} "
                         "(inject_adapters / load_adapter with name=... registers one)")
    if reg.active != name:
        _deactivate(network, reg)
        _activate(network, reg, name)
    return network


@contextmanager
def disable_adapters(network: nn.Module) -> Iterator[nn.Module]:
    """``with disable_adapters(network):`` the network computes the base alone, bit for bit: the active
    adapter's layers are swapped for the frozen layers they wrap and the base's own heads are put back.
    The adapter is active again after the block (also after an exception)."""
    reg = _registry(network)
    if reg is None or reg.active is None:
        if reg is None and (get_config(network) is not None or adapter_layers(network)):
            raise ValueError("these adapters were not registered (built before named adapters existed?); "
                             "inject_adapters / load_adapter register theirs")
        yield network
        return
    name = reg.active
    _deactivate(network, reg)
    try:
        yield network
    finally:
        _deactivate(network, reg)  # in case the block activated another
        _activate(network, reg, name)


def delete_adapter(network: nn.Module, name: str) -> nn.Module:
    """Remove the adapter ``name``. Deleting the active one leaves the base alone active (``set_adapter``
    another to use it); deleting the last one leaves the stock network, as before the first adapter."""
    reg = _registry(network)
    if reg is None or name not in reg.adapters:
        raise ValueError(f"no adapter named {name!r} on this network; it holds {adapter_names(network)}")
    if reg.active == name:
        _deactivate(network, reg)
    del reg.adapters[name]
    if not reg.adapters:  # the stock network again, its base tensors its own; the base's plans stay recorded
        object.__setattr__(network, REGISTRY_ATTR, _Registry(plans=reg.plans))
    return network


def register_injected(network: nn.Module, name: str | None) -> None:
    """Called by ``inject_adapters`` after it injected: register the network's adapters as ``name``.

    The tensors the adapter carries at stock-network names (heads, layers trained in full) become its
    own: the first adapter keeps the network's objects (so single-adapter training is unchanged) and the
    base keeps a frozen copy; a later one gets a copy of the base's, to train or to load into.
    """
    named, name = name is not None, DEFAULT_ADAPTER if name is None else name
    reg = _registry(network, create=True)
    layers = adapter_layers(network)
    groups = network._modules.get(GROUPS_ATTR)
    if named:  # in the network's mode, as a switched-in adapter is (unnamed injection keeps its old behaviour)
        for module in [*layers, *([groups] if groups is not None else [])]:
            module.train(network.training)
    internal = {id(t) for layer in layers for n, t in [*layer.named_parameters(), *layer.named_buffers()]
                if not n.startswith("base_layer.")}
    if groups is not None:
        internal |= {id(t) for t in [*groups.parameters(), *groups.buffers()]}
    owned: dict[str, torch.Tensor] = {}
    for key, value in adapter_state_dict(network).items():
        tensor = _tensor_at(network, key)
        if id(tensor) in internal:
            continue
        if key in reg.base:  # the base's object is in the network now: this adapter gets its own copy
            tensor = nn.Parameter(tensor.detach().clone(), requires_grad=tensor.requires_grad) \
                if isinstance(tensor, nn.Parameter) else tensor.detach().clone()
            _set_tensor(network, key, tensor)
            reg.base[key].requires_grad_(False)  # set_trainable just unfroze it with the heads it found
        else:
            reg.base[key] = nn.Parameter(tensor.detach().clone(), requires_grad=False) \
                if isinstance(tensor, nn.Parameter) else tensor.detach().clone()
        owned[key] = tensor
    reg.adapters[name] = NamedAdapter(name, get_config(network), layers, groups, owned)
    reg.active = name


def prepare_injection(network: nn.Module, name: str | None) -> None:
    """Called by ``inject_adapters`` before it injects: with a ``name``, a network holding other named
    adapters is first brought back to its stock base (they stay registered)."""
    reg = _registry(network)
    if name is None:
        if reg is not None and reg.adapters and reg.active is None:
            raise ValueError(f"the network holds the adapters {adapter_names(network)}; give the new one a name "
                             "(inject_adapters(..., name=...))")
        return  # inject_adapters refuses a network that holds an adapter, as it always has
    if not isinstance(name, str) or not name:
        raise ValueError(f"an adapter name must be a non-empty string, got {name!r}")
    if reg is None:
        if get_config(network) is not None or adapter_layers(network):
            raise ValueError("the network holds adapters that were not registered; build a fresh network")
        return
    if name in reg.adapters:
        raise ValueError(f"the network already holds an adapter named {name!r} (delete_adapter it first, or "
                         f"choose another name); it holds {adapter_names(network)}")
    _deactivate(network, reg)


def forget_adapters(network: nn.Module) -> None:
    """Called by ``merge_adapters``: folding the active adapter into the base kernels leaves the other
    adapters without their base, so merging is refused while others are registered."""
    reg = _registry(network)
    if reg is None:
        return
    others = [n for n in reg.adapters if n != reg.active]
    if others:
        raise ValueError(f"merging the adapter {reg.active!r} would change the base the adapters {others} were "
                         "trained on; delete_adapter them first (or merge a network holding one adapter)")
    network.__dict__.pop(REGISTRY_ATTR, None)


# ------------------------------------------------------------------------------------------ plans
def preprocessing_differences(reference: Mapping[str, Any], reference_configuration: str,
                              plans: Mapping[str, Any], configuration: str) -> list[str]:
    """Each way in which ``plans`` would preprocess an image or build the network differently from
    ``reference`` (as ``"what: reference vs plans"``); empty when both compute the same.

    Compared: target spacing, patch size, normalisation schemes and their masks (and the foreground
    intensity statistics of schemes that read them, ``CTNormalization``), the data resampling, the
    preprocessor, the image reader, the axis transposition and the architecture (class and arguments).
    Names, labels, median shapes and the resampling of the outputs may differ.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    def configuration_of(p, c):
        pm = PlansManager(dict(p))
        if c not in pm.available_configurations:
            raise PlansMismatchError(f"the plans {p.get('plans_name')!r} hold no configuration {c!r}")
        return pm.get_configuration(c).configuration

    ref, other = configuration_of(reference, reference_configuration), configuration_of(plans, configuration)
    differences = []

    def compare(what: str, a: Any, b: Any) -> None:
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            differences.append(f"{what}: {a} vs {b}")

    for key in ("spacing", "patch_size", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data",
                "resampling_fn_data_kwargs", "preprocessor_name", "architecture"):
        compare(key, ref.get(key), other.get(key))
    for key in ("transpose_forward", "transpose_backward", "image_reader_writer"):
        compare(key, reference.get(key), plans.get(key))
    props = "foreground_intensity_properties_per_channel"
    for channel, scheme in enumerate(ref.get("normalization_schemes") or []):
        if scheme == "CTNormalization":
            compare(f"{props}[{channel}] ({scheme} reads them)", (reference.get(props) or {}).get(str(channel)),
                    (plans.get(props) or {}).get(str(channel)))
    return differences


def check_plans(reference: tuple[Mapping[str, Any], str, str], plans: Mapping[str, Any], configuration: str,
                what: str) -> None:
    """Raise a ``PlansMismatchError`` naming every difference between ``plans`` and the ``reference``."""
    ref_plans, ref_configuration, origin = reference
    differences = preprocessing_differences(ref_plans, ref_configuration, plans, configuration)
    if differences:
        shown = "\n  ".join(differences)
        raise PlansMismatchError(
            f"{what} was planned differently from {origin} (the first value is {origin}'s):\n  {shown}\n"
            "Its input would be preprocessed, or its network built, differently, so it cannot share this base. "
            "Plan every target from the base checkpoint (nnunet-peft plan-from-checkpoint) and train on those plans.")


def set_base_plans(network: nn.Module, plans: Mapping[str, Any], configuration: str, origin: str = "the base") -> None:
    """Record the plans the base was trained with; adapters loaded later by name are checked against them."""
    reg = _registry(network, create=True)
    reg.plans = (dict(plans), configuration, origin)


def adapter_plans(directory: Path) -> dict | None:
    """The plans beside an adapter folder: its own ``plans.json`` or, for a fold of an export-adapter folder,
    the export's."""
    for candidate in (Path(directory) / "plans.json", Path(directory).parent / "plans.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    return None


def check_adapter_plans(network: nn.Module, directory: Path, record: Mapping[str, Any]) -> None:
    """Compare the plans beside ``directory`` with those recorded for the base (or, without those, with the
    first adapter's that had some), which become the reference when none was recorded."""
    plans = adapter_plans(directory)
    configuration = record.get("configuration")
    if plans is None or configuration is None:
        return
    reg = _registry(network, create=True)
    if reg.plans is None:
        reg.plans = (plans, configuration, f"the adapter {directory}")
        return
    check_plans(reg.plans, plans, configuration, f"the adapter {directory}")


def take_file_shapes(network: nn.Module, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """The adapter ``name``'s own tensors at stock names take the shape of those in its file (heads of
    another class count, a first convolution rebuilt for other input channels), so that it loads."""
    adapter = get_adapter(network, name)
    state = network.state_dict(keep_vars=True)
    owned = {id(t): key for key, t in adapter.owned.items()}
    for key, value in tensors.items():
        current = state.get(key)
        if current is not None and id(current) in owned and current.shape != value.shape:
            replacement = nn.Parameter(value.to(current.device, current.dtype), requires_grad=current.requires_grad)
            adapter.owned[owned[id(current)]] = replacement
            _set_tensor(network, owned[id(current)], replacement)


def move_adapters(network: nn.Module, device: torch.device | str) -> nn.Module:
    """``network.to(device)``, and every registered adapter and the base's own tensors with it (those not
    active are outside the network). Parameters keep their identity (``.data`` moves)."""
    network.to(device)
    reg = _registry(network)
    if reg is None:
        return network
    for adapter in reg.adapters.values():
        for layer in adapter.layers:
            layer.to(device)  # its base layer is the network's, already there
        if adapter.groups is not None:
            adapter.groups.to(device)
    for tensor in [*reg.base.values(), *(t for a in reg.adapters.values() for t in a.owned.values())]:
        tensor.data = tensor.data.to(device)
    return network


def remembered_fingerprint(network: nn.Module, carried: Iterable[str],
                           fingerprint: Callable[..., str]) -> str:
    """``fingerprint(network, carried=carried)`` (``adapter_io.base_fingerprint``) of the stock network,
    remembered while no base tensor changes (a tensor's version counter moves with every in-place change)."""
    reg = _registry(network, create=True)
    state = network.state_dict(keep_vars=True)
    key = (frozenset(k for k in carried if k in state), tuple((k, id(v), v._version) for k, v in state.items()))
    if key not in reg.fingerprints:
        reg.fingerprints = {key: fingerprint(network, carried=carried)}  # only the latest base is worth keeping
    return reg.fingerprints[key]
