"""What every network family answers: the interface the registry (``nnunet_peft.architectures``) and its
callers rely on, so that placement, the trainer and the commands never ask which network they hold.

A *family* is a kind of network (nnU-Net's U-Nets, UNETR, SwinUNETR, Primus, the Multiview network);
a *backbone* is a trainer-name token that builds a family's network in place of the plans' one
(``nnUNetTrainerLoRAPT_unetr``; Primus has four, one per size). Families that nnU-Net builds from the
plans themselves have no token.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import nn

# the key of a plans configuration under which constructor overrides are kept, per family name
PLANS_KEY = "backbone_kwargs"


@dataclass(frozen=True)
class Stage:
    """A named part of the network: ``encoder.0``, ..., ``bottleneck``, ``decoder.0``, ..., ``seg_layers``."""

    name: str
    placement: str  # "encoder", "bottleneck", "decoder" or "seg_layers"
    modules: tuple[nn.Module, ...]


@dataclass(frozen=True)
class Backbone:
    """A trainer-name token and how to build its network."""

    token: str
    family: str  # the key under PLANS_KEY and the name of the network's Family
    divisor: int
    defaults: dict[str, Any] = field(default_factory=dict)
    dims: tuple[int, ...] = (2, 3)
    description: str = ""


# a reader says whether a module reads a child layer's ``.weight`` instead of calling it, and what to do
WeightReader = Callable[[nn.Module], "tuple[nn.Module, str] | None"]


@dataclass(frozen=True, eq=False)
class Family:
    """One kind of network and everything the package needs to know about it.

    Recognition is by class and module name (``classes``, subclasses included) so that no family's
    library is imported to look at another's network (MONAI takes seconds); ``matches`` recognises by
    structure, for families whose classes vary (nnU-Net's U-Nets), and is asked after every family's
    class names.
    """

    name: str
    description: str
    stages: Callable[[nn.Module], list[Stage]]  # the placement map, in forward order, ending with seg_layers
    classes: tuple[str, ...] = ()  # "module.Class" of the networks it recognises
    matches: Callable[[nn.Module], bool] | None = None
    deep_supervision: bool = False  # whether the network has nnU-Net's deep-supervision outputs
    # the heads are ``decoder.seg_layers.*``, which nnU-Net's -pretrained_weights loader skips; other heads
    # are compared by shape there, so the trainer builds them with the checkpoint's class count first
    nnunet_skips_heads: bool = False
    # the input reaches one convolution (placement.input_convolution), which a ch* token can rebuild
    adapts_input_channels: bool = False
    # (token, plans_manager, configuration_manager, in, out, deep_supervision, shapes_only) -> network
    from_plans: Callable[..., nn.Module] | None = None
    # the trainer-name tokens that build this family instead of the plans' network
    backbones: tuple[Backbone, ...] = ()
    constructor: Callable[[], Callable[..., nn.Module]] | None = None  # imports the class when called
    fixed_arguments: tuple[str, ...] = ()  # constructor arguments taken from the patch size and channels
    # (class, backbone, patch size, in, out, kwargs) -> network
    construct: Callable[..., nn.Module] | None = None
    patch_rule: Callable[[tuple[int, ...]], str | None] | None = None  # beyond divisor and dims
    patch_fix: Callable[[list[int], Sequence[int]], list[int]] | None = None  # repairs what patch_rule refuses
    weight_readers: Mapping[tuple[str, str], WeightReader] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"a family name must be an identifier (the key under {PLANS_KEY!r}), got {self.name!r}")
        for backbone in self.backbones:
            if backbone.family != self.name:
                raise ValueError(f"backbone {backbone.token!r} names family {backbone.family!r}, not {self.name!r}")
        if self.backbones and (self.constructor is None or self.construct is None):
            raise ValueError(f"family {self.name!r} has backbone tokens but no constructor/construct to build them")
        if not self.backbones and self.from_plans is None:
            raise ValueError(f"family {self.name!r} can be built neither from plans (from_plans) nor from a "
                             "trainer-name token (backbones)")

    @property
    def nnunet_builds(self) -> bool:
        """Whether nnU-Net's own trainer builds it from the plans (else only a trainer-name token does)."""
        return self.from_plans is not None

    def recognises(self, network: nn.Module) -> bool:
        """Whether ``network`` is of one of ``classes`` (or a subclass), by name."""
        return any(f"{cls.__module__}.{cls.__name__}" in self.classes for cls in type(network).__mro__)

    # ------------------------------------------------------------------ patch sizes

    def patch_size_problem(self, backbone: Backbone, patch_size: Sequence[int]) -> str | None:
        """Why ``backbone`` cannot take ``patch_size``, or None if it can."""
        patch_size = tuple(int(s) for s in patch_size)
        if len(patch_size) not in backbone.dims:
            return (f"{backbone.description} takes {' or '.join(f'{d}-D' for d in backbone.dims)} patches, "
                    f"got {patch_size}")
        if any(s < backbone.divisor or s % backbone.divisor for s in patch_size):
            return f"every axis must be a positive multiple of {backbone.divisor}, got {list(patch_size)}"
        return None if self.patch_rule is None else self.patch_rule(patch_size)

    def adjust_patch_size(self, backbone: Backbone, patch_size: Sequence[int]) -> tuple[int, ...]:
        """The patch size nearest to ``patch_size`` that ``backbone`` takes (each axis to its nearest multiple)."""
        d = backbone.divisor
        adjusted = [max(d, int(math.floor(s / d + 0.5)) * d) for s in patch_size]
        if self.patch_fix is not None and self.patch_rule is not None and self.patch_rule(tuple(adjusted)):
            adjusted = self.patch_fix(adjusted, patch_size)
        problem = self.patch_size_problem(backbone, adjusted)
        if problem is not None:
            raise ValueError(f"{backbone.description}: {problem}")
        return tuple(adjusted)

    # ------------------------------------------------------------------ building from a token

    def build(self, backbone: Backbone, patch_size: Sequence[int], in_channels: int, out_channels: int,
              **overrides: Any) -> nn.Module:
        """The network of ``backbone`` for ``patch_size``: its defaults updated by constructor ``overrides``."""
        patch_size = tuple(int(s) for s in patch_size)
        problem = self.patch_size_problem(backbone, patch_size)
        if problem is not None:
            raise ValueError(
                f"{backbone.description} cannot take patch size {list(patch_size)}: {problem}. nnU-Net trainers with "
                f"the {backbone.token!r} token adjust the plans' patch size themselves; in Python use adjust_patch_size"
                f"({backbone.token!r}, {list(patch_size)}) = {list(self.adjust_patch_size(backbone, patch_size))}")
        cls = self.constructor()
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", *self.fixed_arguments}
        unknown = sorted(set(overrides) - accepted)
        if unknown:
            raise ValueError(f"{backbone.description}: unknown argument(s) {unknown}; expected some of {sorted(accepted)}")
        return self.construct(cls, backbone, patch_size, in_channels, out_channels, {**backbone.defaults, **overrides})


    def backbone(self, token: str) -> Backbone:
        for backbone in self.backbones:
            if backbone.token == token:
                return backbone
        raise ValueError(f"{self.description} has no backbone token {token!r}; expected one of "
                         f"{[b.token for b in self.backbones]}")

    # ------------------------------------------------------------------ building from plans

    def build_from_plans(self, token: str | None, plans_manager, configuration_manager, in_channels: int,
                         out_channels: int, deep_supervision: bool = True, shapes_only: bool = False) -> nn.Module:
        """The network a trainer builds from nnU-Net's plans: ``from_plans`` where the family has its own way,
        else the backbone ``token`` with the configuration's patch size and overrides (``PLANS_KEY``), which
        has no deep-supervision outputs whatever nnU-Net asks for. ``shapes_only``: the caller reads shapes
        alone (a family may then build on the meta device)."""
        if self.from_plans is not None:
            return self.from_plans(token, plans_manager, configuration_manager, in_channels, out_channels,
                                   deep_supervision, shapes_only)
        return self.build(self.backbone(token), configuration_manager.patch_size, in_channels, out_channels,
                          **overrides_in(configuration_manager.configuration, self.name))


def overrides_in(configuration: dict, family: str) -> dict[str, Any]:
    """The constructor overrides a plans configuration holds for ``family`` (empty by default)."""
    entry = configuration.get(PLANS_KEY) or {}
    if not isinstance(entry, dict):
        raise ValueError(f"plans: {PLANS_KEY!r} must map a backbone family to constructor arguments, "
                         f"e.g. {{\"unetr\": {{\"feature_size\": 16}}}}, got {entry!r}")
    return dict(entry.get(family) or {})


def from_nnunet_plans(token: str | None, plans_manager, configuration_manager, in_channels: int,
                      out_channels: int, deep_supervision: bool = True, shapes_only: bool = False) -> nn.Module:
    """The network the plans name, as nnU-Net's ``nnUNetTrainer.build_network_architecture`` builds it (for the
    families nnU-Net builds itself; ``token`` is unused); ``shapes_only``: on the meta device, without
    initialisation (no memory)."""
    import contextlib

    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    with torch.device("meta") if shapes_only else contextlib.nullcontext():
        return get_network_from_plans(configuration_manager.network_arch_class_name,
                                      configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      in_channels, out_channels, allow_init=not shapes_only,
                                      deep_supervision=deep_supervision)
