"""UNETR (MONAI), as in the LoRA-PT and tCURLoRA papers: a ViT-B/16 encoder with a convolutional decoder.

Patch sizes: multiples of 16 (the ViT patch); the position embedding fixes the input size, so a
checkpoint only fits the patch size it was trained with. MONAI is imported only when one is built.
"""
from __future__ import annotations

from torch import nn

from nnunet_peft.architectures.family import Backbone, Family, Stage


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


def _constructor():
    from monai.networks.nets import UNETR  # here: MONAI takes seconds to import

    return UNETR


def _construct(cls, backbone: Backbone, patch_size: tuple[int, ...], in_channels: int, out_channels: int,
               kwargs: dict) -> nn.Module:
    return cls(in_channels, out_channels, patch_size, spatial_dims=len(patch_size), **kwargs)


FAMILY = Family(
    name="unetr",
    description="UNETR (MONAI)",
    stages=unetr_stages,
    classes=("monai.networks.nets.unetr.UNETR",),
    backbones=(
        # MONAI's defaults, the papers' ViT-B/16
        Backbone("unetr", "unetr", 16, {
            "feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12, "proj_type": "conv",
            "norm_name": "instance", "res_block": True, "dropout_rate": 0.0}, description="UNETR (MONAI)"),
    ),
    constructor=_constructor,
    fixed_arguments=("in_channels", "out_channels", "img_size", "spatial_dims"),
    construct=_construct,
)
