"""The load report: every tensor of the network as it starts training, where it came from and why.

Statuses: ``loaded`` (the checkpoint's tensor of the same name and shape, as nnU-Net's
``-pretrained_weights`` copied it), ``mapped`` (built from checkpoint tensors through the class or
channel mapping), ``re-initialised`` (nnU-Net's random initialisation), ``adapter`` (created by the
method when it was injected). A tensor registered under several names (nnU-Net's
``ConvDropoutNormReLU`` holds its convolution twice; the decoder refers to the encoder) is listed
once, under its first name.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

STATUSES = ("loaded", "mapped", "re-initialised", "adapter")
HEADING = "load report"


def build_load_report(network: nn.Module, statuses: dict[int, tuple[str, str]], stock_ids: set[int], *,
                      source: str | None,
                      default: tuple[str, str], adapter_reason: str = "adapter",
                      classes: dict[str, Any] | None = None, channels: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of ``network`` now; ``statuses`` maps ``id(tensor)`` of the stock tensors to (status, reason).

    Tensors of the stock network (``stock_ids``) without an entry get ``default``; the others were
    created with the adapters.
    """
    tensors, seen = [], set()
    for name, value in network.state_dict(keep_vars=True).items():
        if id(value) in seen:
            continue
        seen.add(id(value))
        if id(value) in statuses:
            status, reason = statuses[id(value)]
        elif id(value) in stock_ids:
            status, reason = default
        else:
            status, reason = "adapter", adapter_reason
        tensors.append({"name": name, "shape": list(value.shape), "status": status, "reason": reason,
                        "trainable": bool(isinstance(value, nn.Parameter) and value.requires_grad)})
    counts = {s: {"tensors": 0, "values": 0, "trainable_values": 0} for s in STATUSES}
    for t in tensors:
        numel = int(torch.Size(t["shape"]).numel())
        c = counts[t["status"]]
        c["tensors"] += 1
        c["values"] += numel
        c["trainable_values"] += numel if t["trainable"] else 0
    return {"pretrained_weights": source, "classes": classes, "input_channels": channels, "counts": counts,
            "tensors": tensors}


def format_load_report(report: dict[str, Any]) -> str:
    """The report as the block that starts the training log."""
    lines = [f"{HEADING}: -pretrained_weights {report['pretrained_weights'] or '(none)'}"]
    classes = report.get("classes")
    if classes is not None:
        if classes.get("mapping") is None:
            lines.append(f"  classes: not mapped ({classes['reason']})")
        elif classes.get("identity") and all(m["how"] == "name" for m in classes["mapping"]):
            lines.append(f"  classes: Segmentation heads kept (same classes in the same order: "
                         f"{', '.join(m['target'] for m in classes['mapping'])})")
        else:
            lines.append(f"  classes: {classes['text']}")
    channels = report.get("input_channels")
    if channels is not None:
        lines.append(f"  input channels: {channels['text']}")
    width = max([len(t["name"]) for t in report["tensors"]] + [6])
    shape_width = max([len(str(tuple(t["shape"]))) for t in report["tensors"]] + [5])
    lines.append(f"  {'tensor':<{width}}  {'shape':<{shape_width}}  {'status':<14}  {'trains':<6}  reason")
    for t in report["tensors"]:
        lines.append(f"  {t['name']:<{width}}  {str(tuple(t['shape'])):<{shape_width}}  {t['status']:<14}  "
                     f"{'yes' if t['trainable'] else 'no':<6}  {t['reason']}")
    lines.append("  counts: " + "; ".join(
        f"{status} {c['tensors']} tensors ({c['values']:,} values, {c['trainable_values']:,} trainable)"
        for status, c in report["counts"].items()))
    return "\n".join(lines)
