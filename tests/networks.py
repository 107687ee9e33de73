"""Tiny nnU-Net networks for the adapter tests, built the way nnU-Net builds them.

Every network comes from nnU-Net's own ``get_network_from_plans`` with plan-style
``arch_kwargs`` (strings resolved by import), so the tests see exactly the module
structure a trained checkpoint has: ``ConvDropoutNormReLU`` with its convolution under two
names, transposed-convolution upsamplers, residual stems and skip projections.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


@dataclass(frozen=True)
class NetSpec:
    """A tiny plan: architecture, dimensionality and the input patch it is run on."""

    arch: str  # "plain", "resenc", "token" (tests/token_networks.py: Linear layers, fused qkv) or a backbone token
    ndim: int  # 2 or 3
    in_channels: int = 2
    num_classes: int = 3

    @property
    def id(self) -> str:
        return f"{self.arch}{self.ndim}d"

    @property
    def patch(self) -> tuple[int, ...]:
        if self.arch in TINY_BACKBONES:
            return TINY_BACKBONES[self.arch][0]
        if self.arch == "token":  # two 2x downsamplings
            return (4, 8, 8) if self.ndim == 3 else (8, 8)
        # 3-D: the first axis is only halved twice (anisotropic first stage), so 8 slices suffice
        return (8, 16, 16) if self.ndim == 3 else (16, 16)


NET_SPECS = [NetSpec("plain", 2), NetSpec("plain", 3), NetSpec("resenc", 2), NetSpec("resenc", 3)]
TOKEN_SPECS = [NetSpec("token", 2), NetSpec("token", 3)]

# Tiny transformer backbones (nnunet_peft.architectures with small sizes), each at a patch it takes with
# more than one token per attention window (one token would leave q and k without a gradient).
# UNETR keeps MONAI's 12 ViT blocks (its skip taps are fixed); SwinUNETR is 2-D, whose Linear layers
# are those of the 3-D network (a 2x2 patch merging instead of 2x2x2) at a tenth of the 3-D cost of
# its smallest patch, 64x32x32; Primus (3-D only) without stochastic depth, so that a training step
# is deterministic.
TINY_BACKBONES: dict[str, tuple[tuple[int, ...], dict]] = {
    "unetr": ((16, 16, 32), {"feature_size": 4, "hidden_size": 24, "mlp_dim": 48, "num_heads": 2}),
    "swinunetr": ((64, 32), {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1),
                             "window_size": 4}),
    "primus": ((16, 16, 16), {"embed_dim": 48, "eva_depth": 2, "eva_numheads": 2, "drop_path_rate": 0.0}),
}
BACKBONE_SPECS = [NetSpec(token, len(patch), in_channels=1, num_classes=2) for token, (patch, _) in TINY_BACKBONES.items()]


def arch_kwargs(spec: NetSpec) -> dict:
    """Plan ``arch_kwargs`` for a 3-stage (2-D) or 4-stage (3-D) network with features 4..16.

    The 3-D plans start with an anisotropic stage (kernel 1x3x3, stride 1x2x2 in stage 1), as
    nnU-Net plans for thick-slice CT/MR, so kernels with a 1-wide axis are exercised.
    """
    d = spec.ndim
    if d == 3:
        n_stages, features = 4, [4, 8, 12, 16]
        kernels = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]
        strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    else:
        n_stages, features = 3, [4, 8, 16]
        kernels = [[3, 3]] * 3
        strides = [[1, 1], [2, 2], [2, 2]]
    kwargs = {
        "n_stages": n_stages,
        "features_per_stage": features,
        "conv_op": f"torch.nn.modules.conv.Conv{d}d",
        "kernel_sizes": kernels,
        "strides": strides,
        "n_conv_per_stage_decoder": [1] * (n_stages - 1),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{d}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if spec.arch == "plain":
        kwargs["n_conv_per_stage"] = [2] * n_stages
    else:
        kwargs["n_blocks_per_stage"] = [1, 2, 2, 2][:n_stages]
    return kwargs


def build_network(spec: NetSpec, seed: int = 0, deep_supervision: bool = True) -> nn.Module:
    """A freshly initialised network of ``spec``; the same seed gives the same weights."""
    torch.manual_seed(seed)
    if spec.arch in TINY_BACKBONES:  # no deep supervision: these networks have one output
        from nnunet_peft.architectures import build_backbone

        patch, kwargs = TINY_BACKBONES[spec.arch]
        return build_backbone(spec.arch, patch, spec.in_channels, spec.num_classes, **kwargs).float().eval()
    if spec.arch == "token":
        from token_networks import TokenUNet

        return TokenUNet(spec.ndim, spec.in_channels, spec.num_classes, deep_supervision).float().eval()
    net = get_network_from_plans(
        PLAIN if spec.arch == "plain" else RESENC, arch_kwargs(spec), REQUIRES_IMPORT,
        spec.in_channels, spec.num_classes, allow_init=True, deep_supervision=deep_supervision,
    )
    return net.float().eval()


_PRETRAINED: dict[tuple[NetSpec, int, bool], tuple[nn.Module, torch.Tensor]] = {}


def pretrained_network(spec: NetSpec, seed: int = 0, deep_supervision: bool = True) -> nn.Module:
    """A network whose weights look trained: biases and norm affines away from their init.

    nnU-Net initialises conv biases and InstanceNorm affines to 0 / 1; a real checkpoint does
    not, and adapters must be exact with non-trivial biases (DoRA subtracts the bias).

    Built once per arguments and handed out as copies (MONAI's networks take a while to build), with
    the global random state left as a fresh build leaves it, so adapter initialisation does not
    depend on the order the tests run in.
    """
    key = (spec, seed, deep_supervision)
    if key not in _PRETRAINED:
        net = build_network(spec, seed, deep_supervision)
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if not name.endswith("weight") or p.dim() == 1:
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
        _PRETRAINED[key] = (net, torch.random.get_rng_state())
    net, rng_state = _PRETRAINED[key]
    torch.random.set_rng_state(rng_state)
    return copy.deepcopy(net)


def random_input(spec: NetSpec, batch: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, spec.in_channels, *spec.patch), generator=g).to(dtype)


def outputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The network's outputs as a list (deep supervision returns several, highest resolution first)."""
    y = net(x)
    return list(y) if isinstance(y, (list, tuple)) else [y]
