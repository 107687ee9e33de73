"""Where adapters go, whatever the network (docs/METHODS.md, "Placement").

The stage map of each network family (``encoder.i``, ``bottleneck``, ``decoder.i``, ``seg_layers``) is
its family module's (``nnunet_peft.architectures``); what is done with a map is here: the layers an
adapter goes on, the heads, the first convolution, fused q/k/v projections, and the modules that would
bypass an adapter.
"""
from __future__ import annotations

from torch import nn

from nnunet_peft.architectures import family_of, weight_readers
from nnunet_peft.architectures.family import Stage  # noqa: F401  (callers find Stage here)
from nnunet_peft.config import PLACEMENTS
from nnunet_peft.layers.kinds import ADAPTABLE_TYPES, CONVOLUTION_TYPES, conv_layout_shape

# what an adapter can wrap (nnunet_peft.layers.kinds): every convolution and Linear layer of a placed stage
TARGET_TYPES = ADAPTABLE_TYPES
# the state-dict key fragment of a U-Net's segmentation heads (decoder.seg_layers.<i>.weight); other
# backbones' heads are found by head_modules
HEAD_KEY = ".seg_layers."
FUSED_ATTR = "peft_fused_blocks"
FUSED_QKV_NAME = "qkv"


def network_stages(network: nn.Module) -> list[Stage]:
    """The stages of ``network`` in forward order, from its family's map; raises ValueError for a network
    of no registered family."""
    return family_of(network).stages(network)


def unique_modules(modules: tuple[nn.Module, ...], kind: type | tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """Submodules of ``kind`` in ``modules``, each once even when registered under two names."""
    seen: set[int] = set()
    found = []
    for root in modules:
        for name, m in root.named_modules():
            if isinstance(m, kind) and id(m) not in seen:
                seen.add(id(m))
                found.append((name, m))
    return found


def target_modules(network: nn.Module, placement: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """``(stage name/module name, layer)`` for every convolution and Linear layer an adapter goes on.

    The layers are those of ``TARGET_TYPES`` inside the modules the placed stages list, so a stage
    map leaves a module out of adaptation (one that takes no part in the forward pass, such as MONAI's
    switched-off cross-attention) by not listing it.
    """
    for p in placement:
        if p not in PLACEMENTS:
            raise ValueError(f"placement must be a subset of {PLACEMENTS}, got {p!r}")
    return [
        (f"{stage.name}/{name}", layer)
        for stage in network_stages(network) if stage.placement in placement
        for name, layer in unique_modules(stage.modules, TARGET_TYPES)
    ]


target_convolutions = target_modules  # the name from before Linear layers were targets


def mark_fused(layer: nn.Module, blocks: int) -> nn.Module:
    """Declare that ``layer``'s output rows are ``blocks`` equal matrices stacked (3 for a fused q/k/v
    projection, in that order; 1 for a layer named ``qkv`` that is not one). Returns ``layer``.

    The tensor methods (LoRA-PT, tCURLoRA) group each block as a matrix of its own; every other method
    adapts the layer as one matrix. A plain attribute on the layer, not in its state dict.
    """
    rows = conv_layout_shape(layer)[0]
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1 or rows % blocks:
        raise ValueError(f"blocks must be an integer >= 1 dividing the {rows} output rows of "
                         f"{type(layer).__name__}, got {blocks!r}")
    setattr(layer, FUSED_ATTR, blocks)
    return layer


def fused_blocks(layer: nn.Module, names: list[str]) -> int:
    """Into how many matrices the tensor groups split ``layer`` (registered in the network as ``names``).

    A marker set by ``mark_fused`` decides; otherwise a Linear registered under the name ``qkv`` whose
    output is three equal blocks (MONAI's ``SABlock`` and SwinUNETR's ``WindowAttention``, timm's and
    dynamic_network_architectures' fused Eva attention: ``out_features = 3 * inner_dim``) is a fused
    q/k/v projection; any other layer is one matrix.
    """
    marked = getattr(layer, FUSED_ATTR, None)
    if marked is not None:
        return marked
    named_qkv = any(name.rsplit(".", 1)[-1] == FUSED_QKV_NAME for name in names)
    if isinstance(layer, nn.Linear) and named_qkv and layer.out_features % 3 == 0:
        return 3
    return 1


def check_called(network: nn.Module, targets: list[tuple[str, nn.Module]], method: str) -> None:
    """Raise ValueError if a target layer's parent reads its ``.weight`` instead of calling it.

    Such code bypasses whatever replaces the layer. An adapter does not expose an adapted ``weight``
    for it: HyPS's serial part and the chain / projected forward modes have no single weight, the
    tensor groups build their update once per step for calls, and a silently different function is
    worse than an error before anything changes.
    """
    where = {id(layer): name for name, layer in targets}
    names = {id(m): name for name, m in network.named_modules()}
    readers = weight_readers()  # the families' (module, class) keys: nothing is imported to look
    for module in network.modules():
        reader = readers.get((type(module).__module__, type(module).__name__))
        found = reader(module) if reader is not None else None
        if found is not None and id(found[0]) in where:
            layer, why = found
            raise ValueError(f"{method}: {where[id(layer)]} ({names.get(id(layer), '?')}) cannot take an adapter: "
                             f"its parent reads its weight directly, so the adapter would never run. {why}; or "
                             "leave its stage out of the placement.")


def module_names(network: nn.Module) -> dict[int, list[str]]:
    """Every name each module is registered under in ``network`` (aliases included), by ``id``."""
    names: dict[int, list[str]] = {}
    for name, m in network.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    return names


def input_convolution(network: nn.Module) -> nn.Module:
    """The first convolution in forward order (the residual stem's, or stage 0's first): the only one
    that sees the network's input channels."""
    convs = unique_modules(network_stages(network)[0].modules, CONVOLUTION_TYPES)
    if not convs:
        raise ValueError(f"{type(network).__name__}: no convolution in its first stage")
    return convs[0][1]


def head_modules(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(state-dict prefix, conv)`` of every segmentation head: the convolutions of the placement map's
    ``seg_layers`` stage (a U-Net's ``decoder.seg_layers.i``, UNETR's ``out.conv.conv``, ...)."""
    stage = next(s for s in network_stages(network) if s.placement == "seg_layers")
    names = {id(m): name for name, m in network.named_modules()}
    return [(names[id(m)], m) for _, m in unique_modules(stage.modules, CONVOLUTION_TYPES)]


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> int:
    """Replace every registration of ``old`` under ``root`` by ``new``; returns how many.

    ``ConvDropoutNormReLU`` holds its convolution as ``.conv`` and as ``.all_modules[0]`` and runs the
    latter; replacing one name only would leave the adapter out of the computation.
    """
    count = 0
    # listed before replacing: the new module wraps ``old`` and must not be walked into
    for parent in list(root.modules()):
        if parent is new:  # the wrapper holds ``old`` as its base layer; that reference must stay
            continue
        for name, child in list(parent._modules.items()):
            if child is old:
                parent._modules[name] = new
                count += 1
    if count == 0:
        raise ValueError(f"{type(old).__name__} is not a submodule of {type(root).__name__}")
    return count
