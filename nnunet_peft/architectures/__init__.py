"""Network families, one module each, and the registry the rest of the package asks about a network.

=============  ====================================================================================
module         family
=============  ====================================================================================
unet           nnU-Net's U-Nets (PlainConvUNet, ResidualEncoderUNet); what a trainer name without a
               backbone token builds, through nnU-Net's own builder and whatever class the plans name
multiview      the SAH laboratory's 2-D Multiview network, named in plans (planning/view_planner.py)
unetr          UNETR (MONAI), trainer-name token ``unetr``
swinunetr      SwinUNETR (MONAI), token ``swinunetr``
primus         Primus-S/B/M/L (dynamic_network_architectures), tokens ``primus``, ``primusB/M/L``
=============  ====================================================================================

Every family is a ``Family`` (``family.py``): how it is recognised, its placement map, its heads'
naming, deep supervision, input-channel adaptation, how it is built from plans and, for a backbone
token, its sizes and patch-size rules. Callers ask ``family_of(network)`` or
``family_for_token(token)`` and read the answer; none of them names a family.

A backbone token in the trainer name (``nnUNetTrainerLoRAPT_unetr``) replaces the U-Net nnU-Net's
plans describe by that network; everything else (data, augmentation, loss, sliding-window
prediction) stays nnU-Net's. The trainer moves a planned patch size to the nearest one the backbone
takes (``adjust_patch_size``) and records it in the plans it writes to the model folder, which is
what ``nnUNetv2_predict`` reads. Sizes default to the papers' configurations; a plans configuration
may override constructor arguments under ``"backbone_kwargs": {"unetr": {...}}`` (nnU-Net keeps
architecture sizes in the plans, and prediction reads the same plans, so both build the same network).

Adding a network: a module with a ``FAMILY`` and one ``register`` line below. MONAI is imported only
when one of its networks is built (it takes seconds), so U-Net runs never import it.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

from torch import nn

from nnunet_peft.architectures import multiview, primus, swinunetr, unet, unetr
from nnunet_peft.architectures.family import PLANS_KEY, Backbone, Family, Stage, WeightReader

__all__ = ["BACKBONES", "FAMILIES", "PLANS_KEY", "Backbone", "Family", "Stage", "adjust_patch_size",
           "backbone_family", "build_backbone", "build_network", "family_for_token", "family_of", "find_family",
           "get_backbone", "network_description", "patch_size_problem", "plans_with_backbone_patch_size", "register", "unregister", "weight_readers"]

logger = logging.getLogger(__name__)

FAMILIES: dict[str, Family] = {}
BACKBONES: dict[str, Backbone] = {}  # every family's trainer-name tokens


def register(family: Family) -> Family:
    """Add ``family`` (and its backbone tokens) to the registry; returns it."""
    if not isinstance(family, Family):
        raise ValueError(f"expected a nnunet_peft.architectures.Family, got {type(family).__name__}")
    if family.name in FAMILIES:
        raise ValueError(f"a family named {family.name!r} is registered already")
    taken = [b.token for b in family.backbones if b.token in BACKBONES]
    if taken:
        raise ValueError(f"family {family.name!r}: backbone token(s) {taken} belong to another family")
    FAMILIES[family.name] = family
    BACKBONES.update((b.token, b) for b in family.backbones)
    return family


def unregister(name: str) -> Family:
    """Remove the family ``name`` and its tokens (for tests that register one of their own)."""
    if name not in FAMILIES:
        raise ValueError(f"no family named {name!r}; registered: {', '.join(FAMILIES)}")
    family = FAMILIES.pop(name)
    for backbone in family.backbones:
        BACKBONES.pop(backbone.token, None)
    return family


# the registry: one line per family. The U-Net family comes first: it is what a name without a token builds
register(unet.FAMILY)
register(multiview.FAMILY)
register(unetr.FAMILY)
register(swinunetr.FAMILY)
register(primus.FAMILY)
PLANS_NETWORK = unet.FAMILY.name  # the family of a trainer name without a backbone token


# ------------------------------------------------------------------ asking about a network

def find_family(network: nn.Module) -> Family | None:
    """The family of ``network``, or None: by class name first (the most derived class that a family names),
    then by structure."""
    for cls in type(network).__mro__:
        name = f"{cls.__module__}.{cls.__name__}"
        for family in FAMILIES.values():
            if name in family.classes:
                return family
    for family in FAMILIES.values():
        if family.matches is not None and family.matches(network):
            return family
    return None


def family_of(network: nn.Module) -> Family:
    """The family of ``network``; raises ValueError for a network of none."""
    family = find_family(network)
    if family is None:
        raise ValueError(f"{unet.not_a_unet(network)}, or a network of a registered family "
                         f"({', '.join(f.description for f in FAMILIES.values())})")
    return family


def weight_readers() -> dict[tuple[str, str], WeightReader]:
    """Every family's modules that read a child layer's weight instead of calling it, by (module, class)."""
    return {key: reader for family in FAMILIES.values() for key, reader in family.weight_readers.items()}


def backbone_family(network: nn.Module) -> str | None:
    """The family name of a network built from a backbone token (``"unetr"``, ``"swinunetr"``, ``"primus"``),
    else None."""
    family = find_family(network)
    return family.name if family is not None and family.backbones else None


# ------------------------------------------------------------------ asking about a trainer-name token

def get_backbone(token: str) -> Backbone:
    if token not in BACKBONES:
        raise ValueError(f"unknown backbone {token!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[token]


def family_for_token(token: str | None) -> Family:
    """The family a trainer name's backbone token builds; None (no token): the plans' network's builder."""
    return FAMILIES[PLANS_NETWORK if token is None else get_backbone(token).family]


def network_description(token: str | None, plans_class: str | None) -> str | None:
    """What a trainer name builds, in words: its backbone token's network, else the plans' class."""
    return plans_class if token is None else get_backbone(token).description


def patch_size_problem(token: str, patch_size: Sequence[int]) -> str | None:
    """Why ``token`` cannot take ``patch_size``, or None if it can."""
    backbone = get_backbone(token)
    return FAMILIES[backbone.family].patch_size_problem(backbone, patch_size)


def adjust_patch_size(token: str, patch_size: Sequence[int]) -> tuple[int, ...]:
    """The patch size nearest to ``patch_size`` that ``token`` takes (each axis to its nearest multiple)."""
    backbone = get_backbone(token)
    return FAMILIES[backbone.family].adjust_patch_size(backbone, patch_size)


def plans_with_backbone_patch_size(plans: dict, configuration: str, token: str | None) -> tuple[dict, str | None]:
    """``plans`` (a deep copy when changed) whose ``configuration`` has a patch size ``token`` takes.

    Returns the plans and a message for the training log when the patch size changed; without a
    token (the plans' own network) the plans as they are. The trainer passes these plans on to
    nnU-Net, which writes them to the model folder's plans.json (read by ``nnUNetv2_predict``) and
    into every checkpoint's ``init_args`` (read by plan-from-checkpoint).
    """
    if token is None or configuration not in plans.get("configurations", {}):
        return plans, None  # nnU-Net's own error names a missing configuration
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    planned = tuple(PlansManager(plans).get_configuration(configuration).patch_size)
    problem = patch_size_problem(token, planned)
    if problem is None:
        return plans, None
    adjusted = adjust_patch_size(token, planned)
    plans = copy.deepcopy(plans)
    plans["configurations"][configuration]["patch_size"] = list(adjusted)
    message = (f"{get_backbone(token).description}: patch size {list(planned)} of the plans' {configuration} "
               f"is not one it takes ({problem}); training and prediction use "
               f"{list(adjusted)}, recorded in the plans.json of the model folder")
    logger.info(message)
    return plans, message


def build_backbone(token: str, patch_size: Sequence[int], in_channels: int, out_channels: int,
                   **overrides: Any) -> nn.Module:
    """The network of ``token`` for inputs of ``patch_size``: the paper's configuration, updated by ``overrides``.

    ``overrides`` are constructor arguments of the backbone's class (smaller sizes for tests or CPUs);
    the patch size, channels and spatial dimensions come from the arguments.
    """
    backbone = get_backbone(token)
    return FAMILIES[backbone.family].build(backbone, patch_size, in_channels, out_channels, **overrides)


def build_network(token: str | None, plans_manager, configuration_manager, in_channels: int, out_channels: int,
                  deep_supervision: bool = True, shapes_only: bool = False) -> nn.Module:
    """The network a trainer name with backbone ``token`` (None: none) builds from nnU-Net's plans, without
    adapters. ``shapes_only``: the caller reads shapes alone, so a family may skip allocation."""
    return family_for_token(token).build_from_plans(token, plans_manager, configuration_manager, in_channels,
                                                    out_channels, deep_supervision, shapes_only)
