"""Where adapters go in dynamic_network_architectures U-Nets (docs/METHODS.md, "Placement").

Networks are recognised by structure (``encoder.stages``, ``decoder.stages``,
``decoder.transpconvs``, ``decoder.seg_layers``), so PlainConvUNet, ResidualEncoderUNet and
subclasses that keep that structure all work, in 2-D and 3-D.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from nnunet_peft.architectures.multiview import MultiviewUNet
from nnunet_peft.config import PLACEMENTS
from nnunet_peft.layers.kinds import conv_layout_shape

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# what an adapter can wrap (nnunet_peft.layers.kinds): every convolution and Linear layer of a placed stage
TARGET_TYPES = _CONVS + (nn.Linear,)
FUSED_ATTR = "peft_fused_blocks"
FUSED_QKV_NAME = "qkv"


@dataclass(frozen=True)
class Stage:
    """A named part of the network: ``encoder.0``, ..., ``bottleneck``, ``decoder.0``, ..., ``seg_layers``."""

    name: str
    placement: str  # "encoder", "bottleneck", "decoder" or "seg_layers"
    modules: tuple[nn.Module, ...]


def network_stages(network: nn.Module) -> list[Stage]:
    """The stages of a U-Net in forward order; raises ValueError for other architectures."""
    if isinstance(network, MultiviewUNet):
        return multiview_stages(network)
    encoder = getattr(network, "encoder", None)
    decoder = getattr(network, "decoder", None)
    missing = [
        name for name, ok in [
            ("encoder.stages", encoder is not None and hasattr(encoder, "stages")),
            ("decoder.stages", decoder is not None and hasattr(decoder, "stages")),
            ("decoder.transpconvs", decoder is not None and hasattr(decoder, "transpconvs")),
            ("decoder.seg_layers", decoder is not None and hasattr(decoder, "seg_layers")),
        ] if not ok
    ]
    if missing:
        raise ValueError(
            f"{type(network).__name__} is not a dynamic_network_architectures U-Net (missing {', '.join(missing)}); "
            "expected a PlainConvUNet or ResidualEncoderUNet as built by nnU-Net's get_network_from_plans"
        )
    enc = list(encoder.stages)
    stages: list[Stage] = []
    stem = getattr(encoder, "stem", None)
    for i, stage in enumerate(enc[:-1]):
        # the stem of a residual encoder runs before stage 0 at the same resolution
        modules = (stem, stage) if i == 0 and stem is not None else (stage,)
        stages.append(Stage(f"encoder.{i}", "encoder", modules))
    stages.append(Stage("bottleneck", "bottleneck", (enc[-1],)))
    for i, (up, stage) in enumerate(zip(decoder.transpconvs, decoder.stages)):
        stages.append(Stage(f"decoder.{i}", "decoder", (up, stage)))
    stages.append(Stage("seg_layers", "seg_layers", (decoder.seg_layers,)))
    return stages


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


def module_names(network: nn.Module) -> dict[int, list[str]]:
    """Every name each module is registered under in ``network`` (aliases included), by ``id``."""
    names: dict[int, list[str]] = {}
    for name, m in network.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    return names


def input_convolution(network: nn.Module) -> nn.Module:
    """The first convolution in forward order (the residual stem's, or stage 0's first): the only one
    that sees the network's input channels."""
    convs = unique_modules(network_stages(network)[0].modules, _CONVS)
    if not convs:
        raise ValueError(f"{type(network).__name__}: no convolution in its first stage")
    return convs[0][1]


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


def multiview_stages(network: MultiviewUNet) -> list[Stage]:
    """The SAH laboratory's Multiview network (docs/METHODS.md, "Placement"): encoder level ``i`` is its
    double convolution and the dilated block on its skip path (both see that level's encoder features;
    level 0 includes the stem), the bottleneck the dilated block at the bottom, decoder stage ``i`` the
    double convolution before the ``i``-th upsampling and the last one the output block's double
    convolution; ``decoder.seg_layers`` holds the 1x1 heads."""
    encoder, decoder = network.encoder, network.decoder
    stages = [Stage(f"encoder.{i}", "encoder", (encoder.stem, level) if i == 0 else (level,))
              for i, level in enumerate(encoder.levels)]
    stages.append(Stage("bottleneck", "bottleneck", (encoder.bottleneck,)))
    stages += [Stage(f"decoder.{i}", "decoder", (up,)) for i, up in enumerate(decoder.up_convs)]
    stages.append(Stage(f"decoder.{len(decoder.up_convs)}", "decoder", (decoder.output_block,)))
    stages.append(Stage("seg_layers", "seg_layers", (decoder.seg_layers,)))
    return stages
