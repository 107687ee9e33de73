"""The registry of adapter methods (``METHODS``) and the adapter configuration: which method, how large, where."""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

PLACEMENTS = ("encoder", "bottleneck", "decoder")
FORWARD_MODES = ("chain", "reconstruct", "projected")
# Not a fourth computation: each layer runs one of the method's modes, the fastest measured for its
# shape when training starts (nnunet_peft.mode_tuning), its method's untuned mode until then.
AUTO_MODE = "auto"
FAMILIES = ("lowrank", "tensor", "hyps")


@dataclass(frozen=True)
class MethodSpec:
    """One adapter method: all that the injection, the trainer names and the scripts know of it.

    ``METHODS`` below is the one registry of methods; adding a method is its layer class under
    ``nnunet_peft/layers/`` and one entry there (docs/development.md).
    """

    token: str  # the trainer-name token: nnUNetTrainer<token>[_...]
    display: str  # the name the docs and reports give it
    family: str  # one of FAMILIES
    # "<module of nnunet_peft.layers>.<class>": the AdapterLayer per layer, or for the tensor family the
    # TensorGroup the per-layer TensorGroupAdapters read from. Named, not imported, because the layer
    # modules import this one; ``layer_class`` imports it on first use.
    layer: str
    forward_modes: tuple[str, ...]
    # the mode an "auto" layer runs until nnunet_peft.mode_tuning has timed it (a library user's own
    # training loop that never calls choose_forward_modes keeps it)
    untuned_mode: str
    dora: bool = False  # the update is a direction plus a learned per-output-channel magnitude
    mergeable: bool = True

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if not self.forward_modes or any(m not in FORWARD_MODES for m in self.forward_modes):
            raise ValueError(f"forward_modes must be a non-empty subset of {FORWARD_MODES}, "
                             f"got {self.forward_modes!r}")
        if self.untuned_mode not in self.forward_modes:
            raise ValueError(f"untuned_mode must be one of forward_modes {self.forward_modes}, "
                             f"got {self.untuned_mode!r}")
        if self.layer.count(".") != 1:
            raise ValueError(f"layer must read '<module of nnunet_peft.layers>.<class>', got {self.layer!r}")

    @property
    def default_forward_mode(self) -> str:
        """What ``PeftConfig(forward_mode=None)`` takes: ``"auto"`` wherever there is a choice."""
        return AUTO_MODE if len(self.forward_modes) > 1 else self.forward_modes[0]

    @property
    def layer_class(self) -> type:
        """The class ``layer`` names (imported here, not at the import of this module)."""
        module, name = self.layer.split(".")
        return getattr(importlib.import_module(f"nnunet_peft.layers.{module}"), name)


_RECONSTRUCT = ("reconstruct",)
# Every method with a choice of forward modes defaults to "auto": scripts/benchmark_adapters.py on a 2-core
# CPU (docs/results/speed_and_memory.md; docs/benchmarks/unet_cpu_48.md) found each mode fastest for some layer
# shapes of a 3d_fullres U-Net (reconstruct at full resolution, the chain at the coarse stages, projected in
# between), and the per-layer choice faster than any one mode for every method. The untuned modes are the
# fixed ones that did best over ranks 8 and 32 there, in time and in memory.
# The order is the docs' (and the trainer-name grammar's).
METHODS: dict[str, MethodSpec] = {
    "lora_c": MethodSpec("LoRAC", "LoRA-C", "lowrank", "lowrank.LoRACAdapter", FORWARD_MODES, "reconstruct"),
    "conv_lora": MethodSpec("ConvLoRA", "convLoRA", "lowrank", "lowrank.ConvLoRAAdapter", _RECONSTRUCT, "reconstruct"),
    "cp_lora": MethodSpec("CPLoRA", "CP-LoRA", "lowrank", "lowrank.CPLoRAAdapter", FORWARD_MODES, "projected"),
    "dora_c": MethodSpec("DoRAC", "DoRA-C", "lowrank", "lowrank.LoRACAdapter", FORWARD_MODES, "reconstruct",
                         dora=True),
    "conv_dora": MethodSpec("ConvDoRA", "convDoRA", "lowrank", "lowrank.ConvLoRAAdapter", _RECONSTRUCT, "reconstruct",
                            dora=True),
    "cp_dora": MethodSpec("CPDoRA", "CP-DoRA", "lowrank", "lowrank.CPLoRAAdapter", FORWARD_MODES, "projected",
                          dora=True),
    "lora_pt": MethodSpec("LoRAPT", "LoRA-PT", "tensor", "tensor.LoRAPTGroup", _RECONSTRUCT, "reconstruct"),
    "tcur_lora": MethodSpec("TCURLoRA", "tCURLoRA", "tensor", "tensor.TCURGroup", _RECONSTRUCT, "reconstruct"),
    "hyps": MethodSpec("HyPS", "HyPS", "hyps", "hyps.HyPSAdapter", FORWARD_MODES, "reconstruct", mergeable=False),
}

CP_INITS = ("random", "parafac")


@dataclass
class PeftConfig:
    """Configuration of the adapters injected into an nnU-Net network.

    Args:
        method: one of ``METHODS`` (``lora_c``, ``conv_lora``, ``cp_lora``, ``dora_c``,
            ``conv_dora``, ``cp_dora``, ``lora_pt``, ``tcur_lora``, ``hyps``).
        rank: adapter rank ``r``. Ranks above a layer's dimensions are allowed for the
            factorised methods (the SAH study found over-parameterised ranks better); the
            t-SVD / CUR methods cannot select more than ``min(Cout, Cin*K)`` and use that.
        alpha: scaling numerator; the update is scaled by ``alpha / rank``. Defaults to
            ``rank`` (scale 1), keeping ``alpha / r`` constant across ranks as LoRA-C advises.
        placement: any non-empty subset of ``("encoder", "bottleneck", "decoder")``.
        forward_mode: ``"chain"`` runs the factors as thin convolutions beside the frozen
            one, ``"reconstruct"`` builds ``W0 + dW`` and runs one convolution, ``"projected"``
            runs that one convolution but computes the factors' gradients from the output
            gradient projected onto the rank-``r`` subspace, without the kernel's full weight
            gradient (``nnunet_peft.layers.projected``; methods with an ``s * B @ A`` update:
            LoRA-C, CP-LoRA, their DoRA variants, HyPS). ``"auto"`` times the method's modes per
            layer shape once, when training starts (``nnunet_peft.mode_tuning``), and runs each
            layer in its fastest; every mode computes the same function and gradients. ``None``
            takes the method's default.
        serial_width: HyPS bottleneck width ``d``; defaults to ``rank``.
        cp_init: CP-LoRA / CP-DoRA factor initialisation: ``"random"`` (unit-scale random
            columns) or ``"parafac"`` (input and spatial factors from a CP decomposition of
            the pretrained kernel, computed with tensorly). The output factor starts at zero
            either way, so the network is unchanged at initialisation.
        dora_eps: floor of the DoRA column norm, so that an all-zero output channel stays finite.
        train_input_conv: the network's first convolution takes no adapter and trains fully
            (set when its input channels were rebuilt for another dataset: new channels need a
            full-rank update). Changes the structure, so it is part of the saved config.
        train_fully: placements that take no adapters and train every weight instead, as in full
            fine-tuning (disjoint from ``placement``): ``("decoder",)`` with adapters in the encoder and
            bottleneck is the hybrid of few-shot segmentation studies, adapters where the pretrained
            features should be kept and a fully trained decoder for new structures. Their weights
            are saved with the adapter.
    """

    method: str
    rank: int = 8
    alpha: float | None = None
    placement: tuple[str, ...] = PLACEMENTS
    forward_mode: str | None = None
    serial_width: int | None = None
    cp_init: str = "random"
    dora_eps: float = 1e-6
    train_input_conv: bool = False
    train_fully: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is None:
            self.alpha = float(self.rank)
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if isinstance(self.placement, str):
            self.placement = (self.placement,)
        self.placement = tuple(self.placement)
        if not self.placement:
            raise ValueError(f"placement must name at least one of {PLACEMENTS}, got an empty placement")
        unknown = [p for p in self.placement if p not in PLACEMENTS]
        if unknown or len(set(self.placement)) != len(self.placement):
            raise ValueError(f"placement must be distinct values from {PLACEMENTS}, got {self.placement!r}")
        spec = METHODS[self.method]
        if self.forward_mode is None:
            self.forward_mode = spec.default_forward_mode
        if self.forward_mode == AUTO_MODE and len(spec.forward_modes) == 1:
            self.forward_mode = spec.forward_modes[0]  # nothing to choose between
        if self.forward_mode not in (*spec.forward_modes, AUTO_MODE):
            raise ValueError(f"method {self.method!r} supports forward_mode in {(*spec.forward_modes, AUTO_MODE)}, "
                             f"got {self.forward_mode!r}")
        if self.serial_width is not None and (not isinstance(self.serial_width, int) or self.serial_width < 1):
            raise ValueError(f"serial_width must be an integer >= 1 or None, got {self.serial_width!r}")
        if self.cp_init not in CP_INITS:
            raise ValueError(f"cp_init must be one of {CP_INITS}, got {self.cp_init!r}")
        if not self.dora_eps > 0:
            raise ValueError(f"dora_eps must be > 0, got {self.dora_eps!r}")
        if not isinstance(self.train_input_conv, bool):
            raise ValueError(f"train_input_conv must be a bool, got {self.train_input_conv!r}")
        if isinstance(self.train_fully, str):
            self.train_fully = (self.train_fully,)
        self.train_fully = tuple(self.train_fully)
        if any(p not in PLACEMENTS for p in self.train_fully) or len(set(self.train_fully)) != len(self.train_fully):
            raise ValueError(f"train_fully must be distinct values from {PLACEMENTS}, got {self.train_fully!r}")
        if both := [p for p in self.train_fully if p in self.placement]:
            raise ValueError(f"{', '.join(both)} cannot both take adapters (placement {self.placement}) and train "
                             f"fully (train_fully {self.train_fully}); name each part in one of them")

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank

    @property
    def spec(self) -> MethodSpec:
        return METHODS[self.method]

    @property
    def uses_dora(self) -> bool:
        return self.spec.dora

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["placement"] = list(self.placement)
        d["train_fully"] = list(self.train_fully)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PeftConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PeftConfig fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**{**d, "placement": tuple(d.get("placement", PLACEMENTS)),
                      "train_fully": tuple(d.get("train_fully", ()))})
