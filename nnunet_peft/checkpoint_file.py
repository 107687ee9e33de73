"""nnU-Net checkpoint files (``checkpoint_*.pth``): reading one, and checking that its weights fit a network.

Below the trainers: the trainer's ``-pretrained_weights``, named adapters' bases and serving all open
checkpoints through here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from nnunet_peft.architectures import find_family
from nnunet_peft.placement import HEAD_KEY, head_modules


def load_checkpoint_file(path: str | Path) -> dict:
    """The whole checkpoint dict (``network_weights``, ``init_args``, ...) of an nnU-Net checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"-pretrained_weights {path}: no such file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ValueError(f"{path} is not an nnU-Net checkpoint (no 'network_weights'); expected a checkpoint_*.pth "
                         "written by nnUNetv2_train")
    return checkpoint


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``network_weights`` of an nnU-Net checkpoint."""
    return load_checkpoint_file(path)["network_weights"]


def check_pretrained_compatible(network: nn.Module, path: str | Path, dataset_name: str = "TARGET",
                                weights: dict[str, torch.Tensor] | None = None, replaced: Iterable[str] = ()) -> None:
    """Raise a ValueError listing the first mismatching tensors if ``path`` (or its ``weights``) does not fit ``network``.

    ``replaced``: keys of ``network.state_dict()`` whose value comes from elsewhere (an adapter file that
    carries a rebuilt first convolution), so the checkpoint's shape for them does not matter.
    """
    replaced = set(replaced)
    weights = load_weights(path) if weights is None else weights
    if any(".base_layer." in k for k in weights):
        raise ValueError(
            f"{path} holds adapters (it was trained by an nnunet-peft adapter trainer). Fold them into a stock "
            "checkpoint first: nnunet-peft merge -m <its model folder> -o <merged folder>, then pass "
            "<merged folder>/fold_K/checkpoint_final.pth as -pretrained_weights.")
    family = find_family(network)
    # the heads are mapped to the target's classes, so their shapes may differ; nnU-Net's own heads are
    # skipped by HEAD_KEY, other families' by their names
    other_heads = family is not None and not family.nnunet_skips_heads
    heads = tuple(f"{prefix}." for prefix, _ in head_modules(network)) if other_heads else ()
    problems = []
    for key, value in network.state_dict().items():
        if HEAD_KEY in key or key.startswith(heads) or key in replaced:
            continue
        if key not in weights:
            problems.append(f"{key}: missing from the checkpoint (network has {tuple(value.shape)})")
        elif weights[key].shape != value.shape:
            problems.append(f"{key}: checkpoint {tuple(weights[key].shape)} vs network {tuple(value.shape)}")
    if problems and family is not None and not family.nnunet_builds:  # built from a trainer-name token
        shown = "\n  ".join(problems[:8])
        raise ValueError(
            f"the pretrained checkpoint {path} does not fit the {type(network).__name__} planned for {dataset_name} "
            f"({len(problems)} mismatching tensors), first:\n  {shown}\n"
            f"A {type(network).__name__} checkpoint loads into a trainer with the same backbone token (and the same "
            "size token for Primus), built for the same patch size: the position embedding fixes it. Plan the "
            f"target with the checkpoint's patch size:\n  nnunet-peft plan-from-checkpoint -d {dataset_name} "
            f"--checkpoint {path}\nand train with -p nnUNetPlans_pretrained and the checkpoint trainer's backbone "
            "token (a U-Net checkpoint needs a trainer name without one).")
    if problems:
        shown = "\n  ".join(problems[:8])
        raise ValueError(
            f"the pretrained checkpoint {path} does not match the network planned for {dataset_name} "
            f"({len(problems)} mismatching tensors), first:\n  {shown}\n"
            f"The target must be planned with the checkpoint's architecture. Run\n"
            f"  nnunet-peft plan-from-checkpoint -d {dataset_name} --checkpoint {path}\n"
            "and train with the plans it prints (-p nnUNetPlans_pretrained), or, if you have the source's "
            "preprocessed folder, nnUNetv2_move_plans_between_datasets.")
