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
from nnunet_peft.layers.kinds import ADAPTABLE_TYPES, CONVOLUTION_TYPES, conv_layout_shape

# what an adapter can wrap (nnunet_peft.layers.kinds): every convolution and Linear layer of a placed stage
TARGET_TYPES = ADAPTABLE_TYPES
# the state-dict key fragment of a U-Net's segmentation heads (decoder.seg_layers.<i>.weight); other
# backbones' heads are found by head_modules
HEAD_KEY = ".seg_layers."
FUSED_ATTR = "peft_fused_blocks"
FUSED_QKV_NAME = "qkv"


@dataclass(frozen=True)
class Stage:
    """A named part of the network: ``encoder.0``, ..., ``bottleneck``, ``decoder.0``, ..., ``seg_layers``."""

    name: str
    placement: str  # "encoder", "bottleneck", "decoder" or "seg_layers"
    modules: tuple[nn.Module, ...]


def network_stages(network: nn.Module) -> list[Stage]:
    """The stages of a U-Net in forward order, or a transformer backbone's map; raises ValueError for
    other architectures."""
    if isinstance(network, MultiviewUNet):
        return multiview_stages(network)
    from nnunet_peft.backbones import backbone_family

    family = backbone_family(network)
    if family is not None:
        return _BACKBONE_MAPS[family](network)
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


# Modules whose forward reads a child layer's ``.weight`` instead of calling the layer: an adapter that
# replaces that layer would never run. Keyed by (module, class) as backbones.backbone_family is, so that
# timm need not be imported; the value says whether an instance does it, and how to avoid it.
def _timm_eva_fused_qkv_reads_weight(attn: nn.Module) -> tuple[nn.Module, str] | None:
    # timm's EvaAttention with qkv_fused=True and a q/v bias runs F.linear(x, self.qkv.weight, bias)
    if getattr(attn, "qkv", None) is None or getattr(attn, "q_bias", None) is None or attn.qkv_bias_separate:
        return None
    return attn.qkv, ("timm's EvaAttention with qkv_fused=True and qkv_bias=True computes F.linear(x, qkv.weight, "
                      "qkv_bias) without calling qkv. Build the Eva with qkv_fused=False (as dynamic_network_"
                      "architectures' Primus does), or set qkv_bias_separate = True on its attention modules "
                      "(the same function: qkv(x), then the bias added)")


WEIGHT_READERS = {("timm.models.eva", "EvaAttention"): _timm_eva_fused_qkv_reads_weight}


def check_called(network: nn.Module, targets: list[tuple[str, nn.Module]], method: str) -> None:
    """Raise ValueError if a target layer's parent reads its ``.weight`` instead of calling it.

    Such code bypasses whatever replaces the layer. An adapter does not expose an adapted ``weight``
    for it: HyPS's serial part and the chain / projected forward modes have no single weight, the
    tensor groups build their update once per step for calls, and a silently different function is
    worse than an error before anything changes.
    """
    where = {id(layer): name for name, layer in targets}
    names = {id(m): name for name, m in network.named_modules()}
    for module in network.modules():
        reader = WEIGHT_READERS.get((type(module).__module__, type(module).__name__))
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


# ------------------------------------------------------------------ transformer backbones
# The maps of docs/METHODS.md, "Placement on transformer backbones". A stage lists only modules that
# take part in the forward pass: adapters, Finetune's unfreezing and the liveness tests see nothing else.


def _transformer_block_parts(block: nn.Module) -> tuple[nn.Module, ...]:
    """A MONAI TransformerBlock without its cross-attention, which only runs with ``with_cross_attention``."""
    parts = (block.norm1, block.attn, block.norm2, block.mlp)
    if getattr(block, "with_cross_attention", False):
        parts += (block.norm_cross_attn, block.cross_attn)
    return parts


def unetr_stages(network: nn.Module) -> list[Stage]:
    """UNETR, split where MONAI's forward taps the ViT (outputs of blocks 3, 6 and 9 of 12 feed the skips).

    encoder.0 sees the input (the patch embedding with its position embedding, and ``encoder1``'s
    convolutions at full resolution); encoder.1-3 are the ViT blocks up to each tap with the
    convolutional path that tap feeds (``encoder2``-``encoder4``); the bottleneck is the ViT blocks
    after the last tap and the final LayerNorm, whose output is the deepest feature map; decoder.0-3
    are ``decoder5``-``decoder2``; the head is ``out``.
    """
    vit = network.vit
    blocks = list(vit.blocks)
    if len(blocks) != 12:
        raise ValueError(f"UNETR with {len(blocks)} ViT blocks: MONAI's UNETR has 12 (its skip taps are fixed)")
    stages = [Stage("encoder.0", "encoder", (vit.patch_embedding, network.encoder1))]
    start = 0
    for i, (tap, conv_path) in enumerate(zip((3, 6, 9), (network.encoder2, network.encoder3, network.encoder4)), 1):
        parts = tuple(p for b in blocks[start:tap + 1] for p in _transformer_block_parts(b))
        stages.append(Stage(f"encoder.{i}", "encoder", parts + (conv_path,)))
        start = tap + 1
    parts = tuple(p for b in blocks[start:] for p in _transformer_block_parts(b))
    stages.append(Stage("bottleneck", "bottleneck", parts + (vit.norm,)))
    for i, name in enumerate(("decoder5", "decoder4", "decoder3", "decoder2")):
        stages.append(Stage(f"decoder.{i}", "decoder", (getattr(network, name),)))
    stages.append(Stage("seg_layers", "seg_layers", (network.out,)))
    return stages


def swinunetr_stages(network: nn.Module) -> list[Stage]:
    """SwinUNETR by resolution: encoder.0 full (``encoder1``), encoder.1 1/2 (patch embedding,
    ``encoder2``), encoder.2-4 Swin layers 1-3 (each with its patch merging) with the convolutional skip
    path at their input's resolution (``encoder3``, ``encoder4``; layer 3's output feeds ``decoder5``
    directly); the bottleneck is Swin layer 4 and ``encoder10`` at 1/32; decoder.0-4 are
    ``decoder5``-``decoder1``; the head is ``out``."""
    swin = network.swinViT
    layers = [getattr(swin, f"layers{i}") for i in range(1, 5)]
    return [Stage("encoder.0", "encoder", (network.encoder1,)),
            Stage("encoder.1", "encoder", (swin.patch_embed, network.encoder2)),
            Stage("encoder.2", "encoder", (layers[0], network.encoder3)),
            Stage("encoder.3", "encoder", (layers[1], network.encoder4)),
            Stage("encoder.4", "encoder", (layers[2],)),
            Stage("bottleneck", "bottleneck", (layers[3], network.encoder10)),
            *[Stage(f"decoder.{i}", "decoder", (getattr(network, name),))
              for i, name in enumerate(("decoder5", "decoder4", "decoder3", "decoder2", "decoder1"))],
            Stage("seg_layers", "seg_layers", (network.out,))]


def primus_stages(network: nn.Module) -> list[Stage]:
    """Primus: encoder.0 the patch embedding, encoder.1 the Eva blocks but the last quarter, the
    bottleneck the last quarter with the final LayerNorm (Primus has no skips, so depth is its only
    structure), decoder.i the upsampling steps of the patch decoder, and its last transposed
    convolution (the one that outputs the classes) the head. ``eva.pos_embed`` is a bare parameter of
    ``eva``, in no stage: it trains under full Finetune only."""
    blocks = list(network.eva.blocks)
    split = len(blocks) - max(1, len(blocks) // 4)
    decode = list(network.up_projection.decode)
    stages = [Stage("encoder.0", "encoder", (network.down_projection,))]
    if split > 0:
        stages.append(Stage("encoder.1", "encoder", tuple(blocks[:split])))
    stages.append(Stage("bottleneck", "bottleneck", (*blocks[split:], network.eva.norm)))
    stages += [Stage(f"decoder.{i}", "decoder", (step,)) for i, step in enumerate(decode[:-1])]
    stages.append(Stage("seg_layers", "seg_layers", (decode[-1],)))
    return stages


_BACKBONE_MAPS = {"unetr": unetr_stages, "swinunetr": swinunetr_stages, "primus": primus_stages}
