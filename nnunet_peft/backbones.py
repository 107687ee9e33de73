"""Transformer backbones built for nnU-Net's trainers: UNETR, SwinUNETR (MONAI) and Primus (nnU-Net's own).

A backbone token in the trainer name (``nnUNetTrainerLoRAPT_unetr``) replaces the U-Net nnU-Net's
plans describe by one of these networks; everything else (data, augmentation, loss, sliding-window
prediction) stays nnU-Net's. Each network constrains the patch size:

=============  ==========  ==================================================================
backbone       divisor     why
=============  ==========  ==================================================================
UNETR          16          ViT patch 16; the position embedding fixes the input size, so a
                           checkpoint only fits the patch size it was trained with
SwinUNETR      32          patch 2 and four 2x merges (MONAI checks divisibility by 2**5); at
                           least 64 along one axis, so that the 1/32 bottleneck's InstanceNorm
                           sees more than one voxel in training
Primus         8           patch embedding 8 (3-D only); the absolute position embedding fixes
                           the input size as in UNETR
=============  ==========  ==================================================================

The trainer moves a planned patch size to the nearest one the backbone takes (``adjust_patch_size``)
and records it in the plans it writes to the model folder, which is what ``nnUNetv2_predict``
reads. Sizes default to the papers' configurations; a plans configuration may override
constructor arguments under ``"backbone_kwargs": {"unetr": {...}}`` (nnU-Net keeps architecture
sizes in the plans, and prediction reads the same plans, so both build the same network).

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

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch import nn

logger = logging.getLogger(__name__)

PLANS_KEY = "backbone_kwargs"


@dataclass(frozen=True)
class Backbone:
    """A trainer-name token and how to build its network."""

    token: str
    family: str  # the key under PLANS_KEY and the network's kind: "unetr", "swinunetr" or "primus"
    divisor: int
    defaults: dict[str, Any] = field(default_factory=dict)
    dims: tuple[int, ...] = (2, 3)
    description: str = ""


# Primus sizes exactly as nnU-Net 2.8.1's nnUNet_Primus_{S,B,M,L}_Trainer build them
_PRIMUS = {"S": (396, 12, 6), "B": (792, 12, 12), "M": (864, 16, 12), "L": (1056, 24, 16)}
_PRIMUS_COMMON = {"drop_path_rate": 0.2, "scale_attn_inner": True, "init_values": 0.1}

BACKBONES: dict[str, Backbone] = {
    # UNETR as in the LoRA-PT / tCURLoRA papers (MONAI's defaults): ViT-B/16 encoder
    "unetr": Backbone("unetr", "unetr", 16, {
        "feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12, "proj_type": "conv",
        "norm_name": "instance", "res_block": True, "dropout_rate": 0.0}, description="UNETR (MONAI)"),
    # SwinUNETR as in the HyPS paper and MONAI's BraTS 2021 model: feature size 48
    "swinunetr": Backbone("swinunetr", "swinunetr", 32, {
        "feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "norm_name": "instance",
        "downsample": "merging", "use_v2": False}, description="SwinUNETR (MONAI)"),
    **{f"primus{'' if size == 'S' else size}": Backbone(
        f"primus{'' if size == 'S' else size}", "primus", 8,
        {"embed_dim": dim, "eva_depth": depth, "eva_numheads": heads, **_PRIMUS_COMMON}, dims=(3,),
        description=f"Primus-{size} (dynamic_network_architectures)")
       for size, (dim, depth, heads) in _PRIMUS.items()},
}


def get_backbone(token: str) -> Backbone:
    if token not in BACKBONES:
        raise ValueError(f"unknown backbone {token!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[token]


# ------------------------------------------------------------------ patch sizes

def patch_size_problem(token: str, patch_size: Sequence[int]) -> str | None:
    """Why ``token`` cannot take ``patch_size``, or None if it can."""
    backbone = get_backbone(token)
    patch_size = tuple(int(s) for s in patch_size)
    if len(patch_size) not in backbone.dims:
        return f"{backbone.description} takes {' or '.join(f'{d}-D' for d in backbone.dims)} patches, got {patch_size}"
    if any(s < backbone.divisor or s % backbone.divisor for s in patch_size):
        return f"every axis must be a positive multiple of {backbone.divisor}, got {list(patch_size)}"
    if backbone.family == "swinunetr" and math.prod(s // 32 for s in patch_size) < 2:
        return (f"the 1/32 bottleneck of {list(patch_size)} has one voxel, where InstanceNorm fails in training; "
                "one axis must be at least 64")
    return None


def adjust_patch_size(token: str, patch_size: Sequence[int]) -> tuple[int, ...]:
    """The patch size nearest to ``patch_size`` that ``token`` takes (each axis to its nearest multiple)."""
    backbone = get_backbone(token)
    d = backbone.divisor
    adjusted = [max(d, int(math.floor(s / d + 0.5)) * d) for s in patch_size]
    if backbone.family == "swinunetr" and math.prod(s // 32 for s in adjusted) < 2:
        # grow the axis that was largest in the plans: the least relative change
        axis = max(range(len(adjusted)), key=lambda i: patch_size[i])
        adjusted[axis] = 64
    problem = patch_size_problem(token, adjusted)
    if problem is not None:
        raise ValueError(f"{backbone.description}: {problem}")
    return tuple(adjusted)


def plans_with_backbone_patch_size(plans: dict, configuration: str, token: str) -> tuple[dict, str | None]:
    """``plans`` (a deep copy when changed) whose ``configuration`` has a patch size ``token`` takes.

    Returns the plans and a message for the training log when the patch size changed. The trainer
    passes these plans on to nnU-Net, which writes them to the model folder's plans.json (read by
    ``nnUNetv2_predict``) and into every checkpoint's ``init_args`` (read by plan-from-checkpoint).
    """
    import copy

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if configuration not in plans.get("configurations", {}):
        return plans, None  # nnU-Net's own error names the missing configuration
    planned = tuple(PlansManager(plans).get_configuration(configuration).patch_size)
    if patch_size_problem(token, planned) is None:
        return plans, None
    adjusted = adjust_patch_size(token, planned)
    plans = copy.deepcopy(plans)
    plans["configurations"][configuration]["patch_size"] = list(adjusted)
    message = (f"{get_backbone(token).description}: patch size {list(planned)} of the plans' {configuration} "
               f"is not one it takes ({patch_size_problem(token, planned)}); training and prediction use "
               f"{list(adjusted)}, recorded in the plans.json of the model folder")
    logger.info(message)
    return plans, message


# ------------------------------------------------------------------ building

def _constructor(family: str) -> Callable[..., nn.Module]:
    # imported here: MONAI takes seconds to import, and U-Net runs never need it
    if family == "unetr":
        from monai.networks.nets import UNETR
        return UNETR
    if family == "swinunetr":
        from monai.networks.nets import SwinUNETR
        return SwinUNETR
    from dynamic_network_architectures.architectures.primus import Primus
    return Primus


LEGACY_MERGING = "merging_pre15"


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


def build_backbone(token: str, patch_size: Sequence[int], in_channels: int, out_channels: int,
                   **overrides: Any) -> nn.Module:
    """The network of ``token`` for inputs of ``patch_size``: the paper's configuration, updated by ``overrides``.

    ``overrides`` are constructor arguments of the backbone's class (smaller sizes for tests or CPUs);
    the patch size, channels and spatial dimensions come from the arguments.
    """
    backbone = get_backbone(token)
    patch_size = tuple(int(s) for s in patch_size)
    problem = patch_size_problem(token, patch_size)
    if problem is not None:
        raise ValueError(f"{backbone.description} cannot take patch size {list(patch_size)}: {problem}. nnU-Net "
                         f"trainers with the {token!r} token adjust the plans' patch size themselves; in Python use "
                         f"adjust_patch_size({token!r}, {list(patch_size)}) = {list(adjust_patch_size(token, patch_size))}")
    cls = _constructor(backbone.family)
    fixed = {"unetr": ("in_channels", "out_channels", "img_size", "spatial_dims"),
             "swinunetr": ("in_channels", "out_channels", "spatial_dims"),
             "primus": ("input_channels", "num_classes", "input_shape", "patch_embed_size")}[backbone.family]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", *fixed}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(f"{backbone.description}: unknown argument(s) {unknown}; expected some of {sorted(accepted)}")
    kwargs = {**backbone.defaults, **overrides}
    if backbone.family == "unetr":
        return cls(in_channels, out_channels, patch_size, spatial_dims=len(patch_size), **kwargs)
    if backbone.family == "swinunetr":
        if kwargs.get("downsample") == LEGACY_MERGING:
            kwargs["downsample"] = legacy_patch_merging()
        return cls(in_channels, out_channels, spatial_dims=len(patch_size), **kwargs)
    embed_dim = kwargs.pop("embed_dim")
    return cls(in_channels, embed_dim, (8,) * len(patch_size), out_channels, input_shape=patch_size, **kwargs)


def backbone_overrides(configuration: dict, token: str) -> dict[str, Any]:
    """The constructor overrides a plans configuration holds for ``token``'s family (empty by default)."""
    entry = configuration.get(PLANS_KEY) or {}
    if not isinstance(entry, dict):
        raise ValueError(f"plans: {PLANS_KEY!r} must map a backbone ({', '.join(sorted({b.family for b in BACKBONES.values()}))}) "
                         f"to constructor arguments, got {entry!r}")
    return dict(entry.get(get_backbone(token).family) or {})


def build_from_plans(token: str, configuration_manager, in_channels: int, out_channels: int) -> nn.Module:
    """``build_backbone`` with the patch size and overrides of an nnU-Net ConfigurationManager."""
    return build_backbone(token, configuration_manager.patch_size, in_channels, out_channels,
                          **backbone_overrides(configuration_manager.configuration, token))


def backbone_family(network: nn.Module) -> str | None:
    """``"unetr"``, ``"swinunetr"``, ``"primus"`` for those networks (or subclasses), else None.

    Recognised by class and module name, so that U-Net code paths never import MONAI.
    """
    known = {("monai.networks.nets.unetr", "UNETR"): "unetr",
             ("monai.networks.nets.swin_unetr", "SwinUNETR"): "swinunetr",
             ("dynamic_network_architectures.architectures.primus", "Primus"): "primus"}
    for cls in type(network).__mro__:
        family = known.get((cls.__module__, cls.__name__))
        if family is not None:
            return family
    return None
