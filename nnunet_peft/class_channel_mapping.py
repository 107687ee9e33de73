"""Starting from the checkpoint you have: classes mapped by name, input channels adapted.

nnU-Net's ``-pretrained_weights`` loads every tensor whose name and shape match and throws the
segmentation heads away. Two things users need are missing there, and live here:

**Classes.** The heads (``decoder.seg_layers.*``, one per deep-supervision level) are rebuilt for
the target's classes from the checkpoint's, matched by *name* between the checkpoint's
``dataset.json`` labels and the target's (nnU-Net orders output channels by label value):

1. ``NNUNET_PEFT_LABEL_MAP="target=checkpoint,..."`` pairs a target class with a checkpoint class
   of another name (``target=`` with nothing after it makes the class new even if a checkpoint
   class has its name). Several target classes may start from one checkpoint class (a split).
2. Other target classes take the checkpoint class of the same name (case-insensitive).
3. If no foreground class matched and both have the same number of classes, all are matched by
   position: the binary-to-binary case (``haemorrhage`` to ``subarachnoid haemorrhage``), where
   heads of the same shape were kept before label mapping existed.
4. The rest are new. A new class's row of every head is the mean of the matched rows and its bias
   the mean of their biases minus ``NEW_CLASS_LOGIT_MARGIN``. Its logit is then the mean of the
   matched classes' logits minus the margin, which is below their maximum at every voxel of every
   input, so the argmax (the segmentation) is exactly the pretrained network's on the matched
   classes. A constant bias (zero weights) cannot promise that: the matched logits have no lower
   bound, and a bias low enough to be safe (-1e4) is too far away for SGD to bring the class in.
   The new rows get gradients from the first step.

Checkpoint classes absent from the target are dropped. Region-based label sets (sigmoid outputs)
are not mapped: their heads are kept when the shapes match, otherwise re-initialised.

**Input channels.** When the target has other input channels than the checkpoint, the first
convolution (the only layer that sees the input) is rebuilt; the trainer-name token says how
(``chzero``, ``chrepeat``, ``chcopy<i>``; see ``CHANNEL_MODES``). Target channels are matched to
the checkpoint's by name (case-insensitive) or, when no name is shared, by position.

The trainer (``nnunet_peft.training.trainer``) applies all of this when it starts; the old-task test
of the benchmark maps the classes the same way, which is why it lives below the trainers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnunet_peft.layers.kinds import TRANSPOSED_TYPES
# head_modules is placement's (where the heads are) and stays importable from here, where they are mapped
from nnunet_peft.placement import head_modules, input_convolution, replace_module  # noqa: F401
from nnunet_peft.checkpoint_file import load_checkpoint_file

LABEL_MAP_ENV = "NNUNET_PEFT_LABEL_MAP"
# a new class's logit starts this far below the mean of the matched classes' logits
NEW_CLASS_LOGIT_MARGIN = 5.0

CHANNEL_MODES = {
    "zero": "matched channels keep their kernels, new channels start at zero (output unchanged at step 0 "
            "on the matched channels)",
    "repeat": "every channel gets the sum of the checkpoint's channel kernels divided by the number of target "
              "channels (an input with all channels equal gives the checkpoint's response)",
    "copy": "matched channels keep their kernels, new channels copy the kernel of one checkpoint channel",
}


# ------------------------------------------------------------------ the checkpoint's side

@dataclass
class Source:
    """A pretrained checkpoint: its weights and the dataset.json it was trained with (if found)."""

    path: Path
    weights: dict[str, torch.Tensor]
    dataset_json: dict[str, Any] | None
    dataset_json_origin: str  # where dataset_json came from, or why there is none


def read_source(path: str | Path) -> Source:
    """Load ``path`` and find its dataset.json: the checkpoint's ``init_args``, else the model folder's file.

    nnU-Net stores the training dataset.json in every checkpoint; a checkpoint copied out of its
    model folder still has it. The model folder's ``dataset.json`` (checkpoint's parent's parent) is
    the fallback for checkpoints written without ``init_args``.
    """
    path = Path(path)
    checkpoint = load_checkpoint_file(path)
    init_args = checkpoint.get("init_args")
    folder_json = path.resolve().parent.parent / "dataset.json"
    if isinstance(init_args, dict) and isinstance(init_args.get("dataset_json"), dict):
        dataset_json, origin = init_args["dataset_json"], "the checkpoint's init_args"
    elif folder_json.is_file():
        import json

        dataset_json, origin = json.loads(folder_json.read_text(encoding="utf-8")), str(folder_json)
    else:
        dataset_json, origin = None, f"no dataset.json (none in the checkpoint's init_args, no {folder_json})"
    return Source(path, checkpoint["network_weights"], dataset_json, origin)


# ------------------------------------------------------------------ classes

def output_class_names(dataset_json: dict[str, Any]) -> list[str] | None:
    """Names of the network's output channels in order (label value order), or None for region-based labels."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict):
        return None
    if any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        return None
    by_value: dict[int, str] = {}
    for name, value in labels.items():
        if name == "ignore":
            continue
        value = int(value[0] if isinstance(value, (list, tuple)) else value)
        by_value.setdefault(value, str(name))
    return [by_value[v] for v in sorted(by_value)]


def parse_label_map(text: str | None) -> dict[str, str | None]:
    """``"target=checkpoint,other="`` -> ``{"target": "checkpoint", "other": None}`` (None: a new class)."""
    mapping: dict[str, str | None] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"{LABEL_MAP_ENV}: {item.strip()!r} is not target=checkpoint; write e.g. "
                             f"{LABEL_MAP_ENV}='lesion=tumour,cyst='")
        target, source = (s.strip() for s in item.split("=", 1))
        if target in mapping:
            raise ValueError(f"{LABEL_MAP_ENV}: target class {target!r} appears twice")
        mapping[target] = source or None
    return mapping


def label_map_from_env() -> dict[str, str | None]:
    return parse_label_map(os.environ.get(LABEL_MAP_ENV))


@dataclass(frozen=True)
class ClassMapping:
    """For every target output channel, the checkpoint channel it starts from (None: new) and why."""

    target_names: list[str]
    source_names: list[str]
    sources: list[int | None]
    how: list[str]  # "name", "map", "position" or "new"

    @property
    def identity(self) -> bool:
        return self.sources == list(range(len(self.source_names)))

    def describe(self) -> str:
        parts = []
        for name, src, how in zip(self.target_names, self.sources, self.how):
            if src is None:
                parts.append(f"{name} (new)")
            else:
                note = {"name": "", "map": f" ({LABEL_MAP_ENV})", "position": " (by position)"}[how]
                parts.append(f"{name} <- {self.source_names[src]}{note}")
        dropped = [n for i, n in enumerate(self.source_names) if i not in self.sources]
        text = ", ".join(parts)
        return text + (f"; dropped from the checkpoint: {', '.join(dropped)}" if dropped else "")


def map_classes(source_json: dict[str, Any] | None, target_json: dict[str, Any],
                label_map: dict[str, str | None] | None = None) -> tuple[ClassMapping | None, str]:
    """The class mapping, or None and the reason it cannot be made (module docstring, "Classes")."""
    label_map = label_map or {}
    if source_json is None:
        if label_map:
            raise ValueError(f"{LABEL_MAP_ENV} is set but the checkpoint's classes are unknown (no dataset.json)")
        return None, "the checkpoint's classes are unknown (no dataset.json)"
    source, target = output_class_names(source_json), output_class_names(target_json)
    if source is None or target is None:
        if label_map:
            raise ValueError(f"{LABEL_MAP_ENV} is set but the labels are region-based, which are not mapped")
        return None, "region-based labels are not mapped by name"
    unknown_t = [t for t in label_map if t not in target]
    unknown_s = [s for s in label_map.values() if s is not None and s not in source]
    if unknown_t or unknown_s:
        raise ValueError(f"{LABEL_MAP_ENV}: " + "; ".join(
            [f"{unknown_t} not among the target's classes {target}"] * bool(unknown_t)
            + [f"{unknown_s} not among the checkpoint's classes {source}"] * bool(unknown_s)))
    folded = {}
    for i, name in enumerate(source):
        folded.setdefault(name.casefold(), i)
    sources: list[int | None] = []
    how: list[str] = []
    for name in target:
        if name in label_map:
            value = label_map[name]
            sources.append(None if value is None else source.index(value))
            how.append("map" if value is not None else "new")
        elif name.casefold() in folded:
            sources.append(folded[name.casefold()])
            how.append("name")
        else:
            sources.append(None)
            how.append("new")
    if not label_map and len(source) == len(target) and all(s is None for s in sources[1:]):
        sources, how = list(range(len(target))), ["position"] * len(target)
    return ClassMapping(target, source, sources, how), ""


def _out_first(weight: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """A head's kernel with output channels first (a transposed convolution stores them second)."""
    return weight.transpose(0, 1) if isinstance(head, TRANSPOSED_TYPES) else weight


def checkpoint_output_channels(network: nn.Module, weights: dict[str, torch.Tensor]) -> int | None:
    """The class count of the checkpoint's first head, found under this network's head names."""
    prefix, head = head_modules(network)[0]
    w = weights.get(f"{prefix}.weight")
    return None if w is None else int(_out_first(w, head).shape[0])


def resize_heads(network: nn.Module, num_classes: int) -> set[int]:
    """Give every head ``num_classes`` outputs, freshly initialised (PyTorch's default), where it has another
    count; returns the ids of the new tensors. Every head must then be written (``map_heads``) or trained."""
    new_ids: set[int] = set()
    for _, head in head_modules(network):
        if head.out_channels == num_classes:
            continue
        kwargs = dict(kernel_size=head.kernel_size, stride=head.stride, padding=head.padding,
                      dilation=head.dilation, bias=head.bias is not None)
        if isinstance(head, TRANSPOSED_TYPES):
            kwargs["output_padding"] = head.output_padding
        fresh = type(head)(head.in_channels, num_classes, **kwargs).to(device=head.weight.device,
                                                                       dtype=head.weight.dtype)
        fresh.requires_grad_(head.weight.requires_grad)
        replace_module(network, head, fresh)
        new_ids.update(id(p) for p in fresh.parameters())
    return new_ids


@torch.no_grad()
def map_heads(network: nn.Module, source: Source, target_json: dict[str, Any],
              label_map: dict[str, str | None] | None = None) -> dict[int, tuple[str, str]]:
    """Write every head of ``network`` from the checkpoint's heads; ``{id(tensor): (status, reason)}``.

    Heads that cannot be mapped (unknown or region-based classes) are kept if their shapes match
    and otherwise keep the network's fresh initialisation, as nnU-Net's own loader leaves them.
    """
    mapping, why_not = map_classes(source.dataset_json, target_json, label_map)
    heads = head_modules(network)
    theirs = {p: (source.weights.get(f"{p}.weight"), source.weights.get(f"{p}.bias")) for p, _ in heads}
    statuses: dict[int, tuple[str, str]] = {}
    missing = [p for p, (w, _) in theirs.items() if w is None]
    if missing:
        for _, head in heads:
            for t in head.parameters():
                statuses[id(t)] = ("re-initialised", f"the checkpoint has no head {missing[0]}")
        return statuses
    if mapping is None:
        fits = all(w.shape == h.weight.shape for (p, h), (w, _) in zip(heads, theirs.values()))
        for (p, head), (w, b) in zip(heads, theirs.values()):
            if fits:
                head.weight.copy_(w.to(head.weight))
                if head.bias is not None and b is not None:
                    head.bias.copy_(b.to(head.bias))
            for t in head.parameters():
                statuses[id(t)] = (("loaded", f"{why_not}; same shape, kept by position") if fits else
                                   ("re-initialised", f"{why_not}; checkpoint {tuple(w.shape[:2])} vs network "
                                                      f"{tuple(head.weight.shape[:2])}"))
        return statuses
    n_theirs = _out_first(theirs[heads[0][0]][0], heads[0][1]).shape[0]
    if len(mapping.source_names) != n_theirs:
        raise ValueError(f"{source.path}: its dataset.json ({source.dataset_json_origin}) lists "
                         f"{len(mapping.source_names)} classes but its heads have {n_theirs} "
                         "outputs; the dataset.json does not belong to this checkpoint")
    kept = [i for i, s in enumerate(mapping.sources) if s is not None]
    new = [i for i, s in enumerate(mapping.sources) if s is None]
    status = "loaded" if mapping.identity else "mapped"
    same = mapping.identity and all(h == "name" for h in mapping.how)
    reason = "same classes in the same order" if same else f"classes: {mapping.describe()}"
    if new:
        reason += f"; new classes: mean of the matched rows, bias - {NEW_CLASS_LOGIT_MARGIN:g}"
    for (p, head), (w, b) in zip(heads, theirs.values()):
        if _out_first(w, head).shape[1:] != _out_first(head.weight, head).shape[1:]:
            raise ValueError(f"{p}.weight: checkpoint {tuple(w.shape)} vs network {tuple(head.weight.shape)}: the "
                             "decoder differs, so the checkpoint does not fit this architecture")
        w = _out_first(w, head)
        weight = torch.empty_like(_out_first(head.weight, head))
        bias = None if head.bias is None else torch.empty_like(head.bias)
        for i in kept:
            weight[i] = w[mapping.sources[i]].to(weight)
            if bias is not None:
                bias[i] = b[mapping.sources[i]].to(bias) if b is not None else 0.0
        if new:
            if not kept or bias is None:
                raise ValueError("new classes need at least one matched class and head biases")
            weight[new] = weight[kept].mean(0, keepdim=True)
            bias[new] = bias[kept].mean() - NEW_CLASS_LOGIT_MARGIN
        head.weight.copy_(_out_first(weight, head))
        if bias is not None:
            head.bias.copy_(bias)
        for t in head.parameters():
            statuses[id(t)] = (status, reason)
    return statuses


def class_summary(source: Source | None, target_json: dict[str, Any],
                  label_map: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The class mapping as plain data for the load report."""
    if source is None:
        return {"mapping": None, "reason": "no -pretrained_weights"}
    mapping, why_not = map_classes(source.dataset_json, target_json, label_map)
    if mapping is None:
        return {"mapping": None, "reason": why_not}
    return {"mapping": [{"target": t, "checkpoint": None if s is None else mapping.source_names[s], "how": h}
                        for t, s, h in zip(mapping.target_names, mapping.sources, mapping.how)],
            "dropped": [n for i, n in enumerate(mapping.source_names) if i not in mapping.sources],
            "identity": mapping.identity, "text": mapping.describe(), "label_map": label_map or {}}


# ------------------------------------------------------------------ input channels

def tensor_names(network: nn.Module, tensor: torch.Tensor) -> list[str]:
    """Every state-dict name of ``tensor`` in ``network`` (a convolution can be registered under several)."""
    return [k for k, v in network.state_dict(keep_vars=True).items() if v is tensor]


def checkpoint_input_channels(network: nn.Module, weights: dict[str, torch.Tensor]) -> int | None:
    """The input channel count of the checkpoint's first convolution, found under this network's names."""
    for key in tensor_names(network, input_convolution(network).weight):
        if key in weights:
            return int(weights[key].shape[1])
    return None


def channel_names(dataset_json: dict[str, Any] | None) -> list[str] | None:
    if dataset_json is None:
        return None
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(names, dict):
        return None
    return [str(names[k]) for k in sorted(names, key=int)]


def match_channels(source: list[str] | None, target: list[str], n_source: int) -> tuple[list[int | None], str]:
    """For every target channel, the checkpoint channel with its name (case-insensitive), else None.

    Without names in common (or without the checkpoint's names), channel ``i`` matches channel
    ``i`` for the channels both have.
    """
    if source is not None:
        folded = {}
        for i, name in enumerate(source):
            folded.setdefault(name.casefold(), i)
        by_name = [folded.get(name.casefold()) for name in target]
        if any(i is not None for i in by_name):
            return by_name, "by name"
    return [i if i < n_source else None for i in range(len(target))], (
        "by position (no channel names in common)" if source is not None else "by position (checkpoint's names unknown)")


@torch.no_grad()
def adapt_input_conv(conv: nn.Module, mode: str, sources: list[int | None], copy_channel: int | None = None) -> str:
    """Give ``conv`` ``len(sources)`` input channels from its current kernel; returns the reason for the report.

    The kernel is replaced by a new Parameter (every registration of the module sees it, being one
    module). ``sources[t]`` is the checkpoint channel target channel ``t`` matched, or None.
    """
    if mode not in CHANNEL_MODES:
        raise ValueError(f"channel mode must be one of {sorted(CHANNEL_MODES)}, got {mode!r}")
    if isinstance(conv, TRANSPOSED_TYPES) or conv.groups != 1:
        raise ValueError("the first layer must be an ungrouped convolution")
    old = conv.weight
    n_source, n_target = old.shape[1], len(sources)
    new = torch.zeros((old.shape[0], n_target, *old.shape[2:]), dtype=old.dtype, device=old.device)
    if mode == "repeat":
        new[:] = old.sum(1, keepdim=True) / n_target
        reason = f"{n_source} -> {n_target} channels, repeat: sum of the kernels / {n_target} for every channel"
    else:
        if mode == "copy" and (copy_channel is None or not 0 <= copy_channel < n_source):
            raise ValueError(f"chcopy{copy_channel}: the checkpoint has channels 0..{n_source - 1}")
        for t, s in enumerate(sources):
            if s is not None:
                new[:, t] = old[:, s]
            elif mode == "copy":
                new[:, t] = old[:, copy_channel]
        pairs = ", ".join(f"{t}<-{s}" if s is not None else
                          (f"{t}<-{copy_channel} (copy)" if mode == "copy" else f"{t}: zero")
                          for t, s in enumerate(sources))
        reason = f"{n_source} -> {n_target} channels, {mode}: {pairs}"
    conv.weight = nn.Parameter(new, requires_grad=old.requires_grad)
    conv.in_channels = n_target
    return reason

