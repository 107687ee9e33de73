"""SwinUNETR (MONAI), as in the HyPS paper and MONAI's BraTS 2021 model (feature size 48).

Patch sizes: multiples of 32 (patch 2 and four 2x merges; MONAI checks divisibility by 2**5), and at
least 64 along one axis, so that the 1/32 bottleneck's InstanceNorm sees more than one voxel in
training.

SwinUNETR is built with MONAI's ``downsample="merging"`` (``PatchMerging``). MONAI 1.5 changed what
that module concatenates in 3-D: before 1.5 it took the sub-volumes (0,1,0) and (0,0,1) twice and
never (1,1,0) or (0,1,1); from 1.5 on it takes all eight. The shapes are the same, so a checkpoint
trained with MONAI < 1.5 (such as the published BraTS 2021 SwinUNETR) loads without any error and
then computes something else, and no re-ordering of its weights can repair that (the LayerNorm
before the reduction sees other features). ``{"downsample": "merging_pre15"}`` in ``backbone_kwargs``
builds the pre-1.5 module (``LegacyPatchMerging``) for such checkpoints; ``"mergingv2"`` is MONAI's
third order. Load a checkpoint only into the merging it was trained with.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from nnunet_peft.architectures.family import Backbone, Family, Stage

LEGACY_MERGING = "merging_pre15"
_BOTTLENECK_STRIDE = 32


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


def _one_voxel_bottleneck(patch_size: tuple[int, ...]) -> str | None:
    if math.prod(s // _BOTTLENECK_STRIDE for s in patch_size) < 2:
        return (f"the 1/32 bottleneck of {list(patch_size)} has one voxel, where InstanceNorm fails in training; "
                "one axis must be at least 64")
    return None


def _grow_bottleneck(adjusted: list[int], planned: Sequence[int]) -> list[int]:
    # grow the axis that was largest in the plans: the least relative change
    axis = max(range(len(adjusted)), key=lambda i: planned[i])
    return [2 * _BOTTLENECK_STRIDE if i == axis else s for i, s in enumerate(adjusted)]


def legacy_patch_merging() -> type[nn.Module]:
    """MONAI's 3-D ``PatchMerging`` as it was before MONAI 1.5, for SwinUNETR checkpoints trained then."""
    import torch
    import torch.nn.functional as F
    from monai.networks.nets.swin_unetr import PatchMerging

    class LegacyPatchMerging(PatchMerging):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if len(x.shape) != 5:  # the 2-D order did not change
                return super().forward(x)
            _, d, h, w, _ = x.shape
            if d % 2 or h % 2 or w % 2:
                x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
            # MONAI 1.4's slices, (0,1,0) and (0,0,1) twice on purpose: that is what its weights saw
            parts = [x[:, i::2, j::2, k::2, :] for i, j, k in
                     ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))]
            return self.reduction(self.norm(torch.cat(parts, -1)))

    return LegacyPatchMerging


def _constructor():
    from monai.networks.nets import SwinUNETR  # here: MONAI takes seconds to import

    return SwinUNETR


def _construct(cls, backbone: Backbone, patch_size: tuple[int, ...], in_channels: int, out_channels: int,
               kwargs: dict) -> nn.Module:
    if kwargs.get("downsample") == LEGACY_MERGING:
        kwargs = {**kwargs, "downsample": legacy_patch_merging()}
    return cls(in_channels, out_channels, spatial_dims=len(patch_size), **kwargs)


FAMILY = Family(
    name="swinunetr",
    description="SwinUNETR (MONAI)",
    stages=swinunetr_stages,
    classes=("monai.networks.nets.swin_unetr.SwinUNETR",),
    backbones=(
        Backbone("swinunetr", "swinunetr", _BOTTLENECK_STRIDE, {
            "feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "norm_name": "instance",
            "downsample": "merging", "use_v2": False}, description="SwinUNETR (MONAI)"),
    ),
    constructor=_constructor,
    fixed_arguments=("in_channels", "out_channels", "spatial_dims"),
    construct=_construct,
    patch_rule=_one_voxel_bottleneck,
    patch_fix=_grow_bottleneck,
)
