"""Trainable-parameter accounting per stage, for the training log (like peft's print_trainable_parameters)."""
from __future__ import annotations

from torch import nn

from nnunet_peft.layers.base import AdapterLayer
from nnunet_peft.layers.tensor import TensorGroupAdapter
from nnunet_peft.placement import network_stages, unique_modules


def count_parameters(network: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` over the unique parameters of ``network``."""
    params = list(network.parameters())  # parameters() already yields each tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def stage_rows(network: nn.Module) -> list[dict]:
    """One row per stage: name, adapted layers, trainable and total parameters.

    The factors of a tensor group live on the network root; each layer of the group is charged its
    own slice (``L`` layers share ``L`` slices), so the rows add up to the network's total.
    """
    rows = []
    for stage in network_stages(network):
        seen, trainable, total = set(), 0, 0
        for module in stage.modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
                    trainable += p.numel() if p.requires_grad else 0
        adapters = [m for _, m in unique_modules(stage.modules, AdapterLayer)]
        for layer in adapters:
            if isinstance(layer, TensorGroupAdapter):
                share = layer.num_trainable_parameters()
                trainable += share
                total += share
        rows.append({"stage": stage.name, "adapted": len(adapters), "trainable": trainable, "total": total})
    return rows


def trainable_parameter_table(network: nn.Module) -> str:
    """The per-stage table as text: stage, layers adapted, trainable, total, percent."""
    rows = stage_rows(network)
    trainable, total = count_parameters(network)
    lines = [f"{'stage':<12} {'adapted':>7} {'trainable':>12} {'total':>12} {'percent':>8}"]
    for r in rows + [{"stage": "all", "adapted": sum(r["adapted"] for r in rows), "trainable": trainable, "total": total}]:
        pct = 100.0 * r["trainable"] / r["total"] if r["total"] else 0.0
        lines.append(f"{r['stage']:<12} {r['adapted']:>7} {r['trainable']:>12,} {r['total']:>12,} {pct:>7.3f}%")
    return "\n".join(lines)
