"""Primus (dynamic_network_architectures), the sizes nnU-Net 2.8.1's ``nnUNet_Primus_{S,B,M,L}_Trainer`` build.

An Eva transformer (timm's blocks) between a patch embedding of 8 and a patch decoder, with no skips.
Patch sizes: multiples of 8, 3-D only; the absolute position embedding fixes the input size as in UNETR.
"""
from __future__ import annotations

from torch import nn

from nnunet_peft.architectures.family import Backbone, Family, Stage

PATCH_EMBEDDING = 8

# Primus sizes exactly as nnU-Net 2.8.1's nnUNet_Primus_{S,B,M,L}_Trainer build them
_SIZES = {"S": (396, 12, 6), "B": (792, 12, 12), "M": (864, 16, 12), "L": (1056, 24, 16)}
_COMMON = {"drop_path_rate": 0.2, "scale_attn_inner": True, "init_values": 0.1}


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


def _timm_eva_fused_qkv_reads_weight(attn: nn.Module) -> tuple[nn.Module, str] | None:
    # timm's EvaAttention with qkv_fused=True and a q/v bias runs F.linear(x, self.qkv.weight, bias)
    if getattr(attn, "qkv", None) is None or getattr(attn, "q_bias", None) is None or attn.qkv_bias_separate:
        return None
    return attn.qkv, ("timm's EvaAttention with qkv_fused=True and qkv_bias=True computes F.linear(x, qkv.weight, "
                      "qkv_bias) without calling qkv. Build the Eva with qkv_fused=False (as dynamic_network_"
                      "architectures' Primus does), or set qkv_bias_separate = True on its attention modules "
                      "(the same function: qkv(x), then the bias added)")


def _constructor():
    from dynamic_network_architectures.architectures.primus import Primus

    return Primus


def _construct(cls, backbone: Backbone, patch_size: tuple[int, ...], in_channels: int, out_channels: int,
               kwargs: dict) -> nn.Module:
    kwargs = dict(kwargs)
    embed_dim = kwargs.pop("embed_dim")
    return cls(in_channels, embed_dim, (PATCH_EMBEDDING,) * len(patch_size), out_channels, input_shape=patch_size,
               **kwargs)


FAMILY = Family(
    name="primus",
    description="Primus (dynamic_network_architectures)",
    stages=primus_stages,
    classes=("dynamic_network_architectures.architectures.primus.Primus",),
    backbones=tuple(
        # one token per size; Primus-S is plain "primus"
        Backbone(f"primus{'' if size == 'S' else size}", "primus", PATCH_EMBEDDING,
                 {"embed_dim": dim, "eva_depth": depth, "eva_numheads": heads, **_COMMON}, dims=(3,),
                 description=f"Primus-{size} (dynamic_network_architectures)")
        for size, (dim, depth, heads) in _SIZES.items()),
    constructor=_constructor,
    fixed_arguments=("input_channels", "num_classes", "input_shape", "patch_embed_size"),
    construct=_construct,
    # keyed by (module, class) as the families recognise networks, so that timm need not be imported
    weight_readers={("timm.models.eva", "EvaAttention"): _timm_eva_fused_qkv_reads_weight},
)
