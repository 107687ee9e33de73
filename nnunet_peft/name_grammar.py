"""Trainer names are the configuration: ``nnUNetTrainer<Method>[_<token>]...``.

``-tr`` carries only a class name and inference rebuilds the network from that name alone, so
everything that changes the network or the schedule is spelled in the name. The grammar is below
the trainers (``nnunet_peft.training``) because more than they read it: rebuilding a model folder's
network, planning from a checkpoint, the benchmark's classification of names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from nnunet_peft.architectures import BACKBONES, family_for_token
from nnunet_peft.config import METHODS, PLACEMENTS, PeftConfig

PREFIX = "nnUNetTrainer"

ADAPTER_METHODS = {spec.token: method for method, spec in METHODS.items()}  # Method token -> PeftConfig.method
BASELINES = {"Finetune": "finetune", "SegHead": "seg_head", "NoFinetune": "none"}
METHOD_TOKENS = tuple(sorted([*ADAPTER_METHODS, *BASELINES], key=len, reverse=True))  # longest match first

# Defaults for plain names, chosen for fine-tuning on tens of cases (docs/trainer_names.md, "Defaults"):
DEFAULT_RANK = 8
DEFAULT_EPOCHS = 250
DEFAULT_ITERATIONS = 250
# Initial learning rate of nnU-Net's SGD (Nesterov momentum 0.99, poly decay), per family of methods,
# from the LPBA40 sweep on validation folds (docs/results/lpba40.md): Finetune best at nnU-Net's 1e-2
# (of 1e-3, 3e-3, 1e-2); LoRA-C and CP-LoRA best at 3e-2 (of 1e-2, 3e-2, 1e-1): a zero-initialised
# low-rank update needs larger steps to move as far as full weights do.
DEFAULT_LEARNING_RATES = {"adapter": 3e-2, "finetune": 1e-2}

GRAMMAR = f"""\
    {PREFIX}<Method>[_<token>]...
    Method: {' '.join(ADAPTER_METHODS)}
            Finetune   (standard fine-tuning of the placed modules, or all)
            SegHead    (only the segmentation heads train)
            NoFinetune (the pretrained network as it is; 0 epochs, then validation)
    tokens: enc | bn | dec   placement: encoder, bottleneck, decoder (any subset; default all)
            r<int>           rank (adapters only; default {DEFAULT_RANK})
            a<int>           alpha (adapters only; default = rank)
            <int>ep          number of epochs (default {DEFAULT_EPOCHS})
            <int>it          training iterations per epoch (default {DEFAULT_ITERATIONS})
            lr<int>p<int>    initial learning rate, 'p' for the decimal point (a class name cannot
                             hold '.' or '-'): lr0p01 = 0.01, lr0p003 = 0.003 (default
                             {DEFAULT_LEARNING_RATES["adapter"]:g} for adapters, {DEFAULT_LEARNING_RATES["finetune"]:g} for Finetune and SegHead)
            scratch          Finetune only: train from random initialisation, refusing
                             -pretrained_weights (the from-scratch baseline, same schedule)
            ftdec            adapters only: the decoder takes no adapters and trains every weight, at
                             Finetune's learning rate, as in Finetune; the adapters go to the encoder
                             and bottleneck (or the enc / bn tokens given). The adapter file holds
                             the trained decoder
            chzero | chrepeat | chcopy<int>
                             the target has other input channels than the checkpoint: how the first
                             convolution is rebuilt (chzero: new channels start at zero; chrepeat:
                             summed kernel / channel count for every channel; chcopy<i>: new
                             channels copy checkpoint channel i). That layer then trains fully
                             under every method instead of taking an adapter (U-Nets only)
            {' | '.join(BACKBONES)}
                             a transformer backbone instead of the plans' U-Net: UNETR, SwinUNETR,
                             Primus-S (primusB/M/L: Primus-B/M/L); the patch size is adjusted to one
                             the backbone takes
    e.g. nnUNetTrainerCPLoRA_dec_r64_a64_100ep, nnUNetTrainerCPLoRA_ftdec, nnUNetTrainerLoRAPT_unetr"""

_PLACEMENT_TOKENS = {"enc": "encoder", "bn": "bottleneck", "dec": "decoder"}
_LEARNING_RATE = re.compile(r"lr(\d+)p(\d+)")
_CHANNEL_COPY = re.compile(r"chcopy(\d+)")
_CHANNEL_TOKENS = {"chzero": "zero", "chrepeat": "repeat"}
_NUMBERED = [("rank", re.compile(r"r(\d+)")), ("alpha", re.compile(r"a(\d+)")),
             ("epochs", re.compile(r"(\d+)ep")), ("iterations", re.compile(r"(\d+)it"))]


class TrainerNameError(ValueError):
    pass


@dataclass(frozen=True)
class TrainerSpec:
    """What a trainer name says."""

    name: str
    method: str  # the Method token, e.g. "CPLoRA"
    placement: tuple[str, ...] = PLACEMENTS
    rank: int = DEFAULT_RANK
    alpha: int | None = None
    epochs: int = DEFAULT_EPOCHS
    iterations: int = DEFAULT_ITERATIONS
    scratch: bool = False
    learning_rate: float | None = None  # None: the family's default
    input_channels: str | None = None  # "zero", "repeat" or "copy": how the first convolution is adapted
    copy_channel: int | None = None  # the checkpoint channel "copy" takes
    backbone: str | None = None  # a token of nnunet_peft.architectures.BACKBONES; None: the plans' U-Net
    train_decoder: bool = False  # ftdec: the decoder trains fully instead of taking adapters

    @property
    def input_channel_token(self) -> str | None:
        if self.input_channels is None:
            return None
        return f"chcopy{self.copy_channel}" if self.input_channels == "copy" else f"ch{self.input_channels}"

    @property
    def initial_lr(self) -> float:
        """The learning rate the name asks for, or its family's default."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATES["adapter" if self.peft_method is not None else "finetune"]

    @property
    def full_lr(self) -> float:
        """The learning rate of the layers that train fully beside adapters (``ftdec``): Finetune's."""
        return DEFAULT_LEARNING_RATES["finetune"]

    @property
    def peft_method(self) -> str | None:
        """The adapter method id, or None for the fine-tuning baselines."""
        return ADAPTER_METHODS.get(self.method)

    @property
    def baseline(self) -> str | None:
        """``"finetune"``, ``"seg_head"`` or ``"none"`` for the baselines, else None."""
        return BASELINES.get(self.method)

    def peft_config(self) -> PeftConfig:
        if self.peft_method is None:
            raise ValueError(f"{self.name} trains no adapters")
        return PeftConfig(self.peft_method, rank=self.rank, alpha=self.alpha, placement=self.placement,
                          train_input_conv=self.input_channels is not None,
                          train_fully=("decoder",) if self.train_decoder else ())


def is_plugin_name(name: str) -> bool:
    """Whether ``name`` claims to be one of ours: ``nnUNetTrainer<Method>`` followed by nothing or ``_``."""
    if not name.startswith(PREFIX):
        return False
    rest = name[len(PREFIX):]
    return any(rest == m or rest.startswith(m + "_") for m in METHOD_TOKENS)


def parse_trainer_name(name: str) -> TrainerSpec:
    """Parse a trainer name; raises TrainerNameError (a ValueError) that shows the grammar."""

    def fail(why: str) -> TrainerNameError:
        return TrainerNameError(f"cannot parse trainer name {name!r}: {why}.\nTrainer names follow\n{GRAMMAR}")

    if not is_plugin_name(name):
        raise fail(f"it must start with {PREFIX} followed by one of {', '.join(sorted(METHOD_TOKENS))}")
    rest = name[len(PREFIX):]
    method = next(m for m in METHOD_TOKENS if rest == m or rest.startswith(m + "_"))
    tokens = rest[len(method):].split("_")[1:]
    placement: list[str] = []
    values: dict[str, int] = {}
    scratch = False
    learning_rate: float | None = None
    input_channels: str | None = None
    copy_channel: int | None = None
    backbone: str | None = None
    train_decoder = False
    for token in tokens:
        if token in BACKBONES:
            if backbone is not None:
                raise fail(f"the backbone is given twice ({backbone!r} and {token!r})")
            backbone = token
            continue
        copy = _CHANNEL_COPY.fullmatch(token)
        if token in _CHANNEL_TOKENS or copy:
            if input_channels is not None:
                raise fail("the input-channel mode (chzero / chrepeat / chcopy<int>) is given twice")
            input_channels = "copy" if copy else _CHANNEL_TOKENS[token]
            copy_channel = int(copy.group(1)) if copy else None
            continue
        if token == "scratch":
            if method != "Finetune" or scratch:
                raise fail("'scratch' is a Finetune token and appears at most once")
            scratch = True
            continue
        if token == "ftdec":
            if method not in ADAPTER_METHODS or train_decoder:
                raise fail("'ftdec' (the decoder trains fully beside adapters) is an adapter-method token and "
                           "appears at most once; Finetune_dec trains the decoder alone")
            train_decoder = True
            continue
        if token in _PLACEMENT_TOKENS:
            if _PLACEMENT_TOKENS[token] in placement:
                raise fail(f"placement token {token!r} appears twice")
            placement.append(_PLACEMENT_TOKENS[token])
            continue
        if match := _LEARNING_RATE.fullmatch(token):
            if learning_rate is not None:
                raise fail("the learning rate is given twice")
            learning_rate = float(f"{match.group(1)}.{match.group(2)}")
            if not 0 < learning_rate < 1:
                raise fail(f"the learning rate must be above 0 and below 1, got {token!r}")
            continue
        for field, pattern in _NUMBERED:
            match = pattern.fullmatch(token)
            if match:
                if field in values:
                    raise fail(f"{field} is given twice")
                value = int(match.group(1))
                if value < 1:  # NoFinetune is the way to run no epoch
                    raise fail(f"{field} must be >= 1, got {token!r}"
                               + (f" (to evaluate the checkpoint as it is, use {PREFIX}NoFinetune)"
                                  if field == "epochs" else ""))
                values[field] = value
                break
        else:
            raise fail(f"unknown token {token!r}" if token else "empty token (two underscores in a row, or a trailing one)")

    if method not in ADAPTER_METHODS and ({"rank", "alpha"} & set(values)):
        raise fail(f"{method} trains no adapters, so it takes no r<int>/a<int> tokens")
    if scratch and input_channels is not None:
        raise fail("'scratch' loads no checkpoint, so it takes no chzero/chrepeat/chcopy<int> token")
    if input_channels is not None and not family_for_token(backbone).adapts_input_channels:
        raise fail(f"the {backbone!r} backbone takes no chzero/chrepeat/chcopy<int> token: its input reaches "
                   "more than the first convolution, which is all the channel adaptation rebuilds; give the "
                   "target the checkpoint's channels")
    if method in ("SegHead", "NoFinetune") and placement:
        raise fail(f"{method} takes no placement tokens (it trains {'the heads only' if method == 'SegHead' else 'nothing'})")
    if method == "NoFinetune" and ({"epochs", "iterations"} & set(values) or learning_rate is not None):
        raise fail("NoFinetune runs 0 epochs, so it takes no <int>ep/<int>it/lr tokens")
    if train_decoder and "decoder" in placement:
        raise fail("'ftdec' trains the decoder fully, so the decoder cannot take adapters too: drop 'dec'")
    # canonical order, so that the placement tuple does not depend on the order of the tokens
    ordered = tuple(p for p in PLACEMENTS if p in placement) or PLACEMENTS
    if train_decoder and not placement:
        ordered = tuple(p for p in PLACEMENTS if p != "decoder")
    spec = TrainerSpec(
        name=name, method=method, placement=ordered,
        rank=values.get("rank", DEFAULT_RANK), alpha=values.get("alpha"),
        epochs=0 if method == "NoFinetune" else values.get("epochs", DEFAULT_EPOCHS),
        iterations=values.get("iterations", DEFAULT_ITERATIONS), scratch=scratch, learning_rate=learning_rate,
        input_channels=input_channels, copy_channel=copy_channel, backbone=backbone, train_decoder=train_decoder,
    )
    if spec.peft_method is not None:
        spec.peft_config()  # validate rank/alpha/placement eagerly with the library's own rules
    return spec
