"""The "Multiview" 2-D network of the SAH study's laboratory, as a class nnU-Net's plans can name.

After the laboratory's public haemorrhage-segmentation code (github.com/KyleMa000/Hematoma-Segmentation,
``util/models/experiment/mv.py``, class ``MV``; Yao et al., Artificial Intelligence in Medicine 2020,
doi:10.1016/j.artmed.2020.101910). Its blocks, all 32 channels wide:

* a double convolution (3x3 conv, BatchNorm, ReLU, twice), the paper's M1, at every level of the
  encoder and decoder;
* max-pooling between encoder levels;
* on every skip path, and once at the bottom, a block of three 3x3 convolutions with dilations 1, 2
  and 4 (each with BatchNorm and ReLU) whose output is concatenated with its input (M2: 32 -> 64
  channels);
* decoder levels: a double convolution, bilinear upsampling, concatenation with the skip (96
  channels);
* the output block (M3): a double convolution and a 1x1 convolution to the classes.

What differs from ``MV`` and why:

* the pooling factor of each level is nnU-Net's planned stride (``strides``, nnU-Net's convention
  with a first entry of ones), so a view with thick slices in-plane (5 mm x 0.45 mm pixels) pools
  only along the fine axis until the pixels are roughly square, as nnU-Net's own 2-D U-Net does;
  with square pixels every stride is 2 x 2 as in ``MV``. Upsampling is bilinear to the skip's size;
* ``padding="same"`` is written as the numeric padding it equals (``dilation`` for 3x3 kernels),
  which the adapters need (docs/METHODS.md, section 1);
* deep supervision (nnU-Net's default, which its stock trainer turns on) adds one 1x1 head per
  decoder level below full resolution on the 96-channel concatenation, in nnU-Net's output order
  (full resolution first). Prediction builds the network without them, so a model trained with
  deep supervision predicts with exactly the ``MV`` computation;
* BatchNorm layers freeze their running statistics together with their affine parameters
  (``FrozenStatsBatchNorm2d``), so a frozen base stays bit-identical during adaptation.

Module names follow nnU-Net's U-Nets where the roles match (``encoder``, ``decoder``,
``decoder.seg_layers``, ``decoder.deep_supervision``), which nnU-Net's trainer relies on.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_peft.architectures.family import Family, Stage, from_nnunet_plans

DEFAULT_FEATURES = 32
DEFAULT_DILATIONS = (1, 2, 4)


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running statistics are frozen whenever its affine parameters are.

    nnU-Net calls ``network.train()`` every epoch, which would let a BatchNorm update its running
    mean and variance from the target's batches even when everything else is frozen: the base would
    drift, its fingerprint (docs/sharing.md) would no longer match the checkpoint's, and an
    exported adapter would predict differently on the receiver's copy of the checkpoint. A layer
    whose weight does not require a gradient therefore normalises with its stored statistics in
    training too (as in evaluation) and leaves them untouched; a trainable one (full fine-tuning,
    training from scratch) behaves as ``nn.BatchNorm2d``. Same state dict as ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.affine and not self.weight.requires_grad:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, momentum=0.0, eps=self.eps)
        return super().forward(x)


def _conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
            FrozenStatsBatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class DoubleConv(nn.Sequential):
    """M1: two 3x3 convolutions, each followed by BatchNorm and ReLU."""

    def __init__(self, in_channels: int, features: int) -> None:
        super().__init__(*_conv_bn_relu(in_channels, features), *_conv_bn_relu(features, features))


class DilatedSkip(nn.Module):
    """M2: three 3x3 convolutions with growing dilation, concatenated with the block's input."""

    def __init__(self, in_channels: int, features: int, dilations: Sequence[int] = DEFAULT_DILATIONS) -> None:
        super().__init__()
        layers, width = [], in_channels
        for d in dilations:
            layers += _conv_bn_relu(width, features, d)
            width = features
        self.convs = nn.Sequential(*layers)
        self.out_channels = in_channels + features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.convs(x)), dim=1)


class EncoderLevel(nn.Module):
    """One level of ``MV``'s ``Down``: the double convolution before pooling, and the skip block on its input."""

    def __init__(self, features: int, stride: Sequence[int], dilations: Sequence[int]) -> None:
        super().__init__()
        self.conv = DoubleConv(features, features)
        self.pool = nn.MaxPool2d(kernel_size=tuple(stride), stride=tuple(stride))
        self.skip = DilatedSkip(features, features, dilations)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool(self.conv(x)), self.skip(x)


class MultiviewEncoder(nn.Module):
    def __init__(self, input_channels: int, features: int, strides: Sequence[Sequence[int]],
                 dilations: Sequence[int]) -> None:
        super().__init__()
        self.stem = DoubleConv(input_channels, features)
        self.levels = nn.ModuleList(EncoderLevel(features, s, dilations) for s in strides)
        self.bottleneck = DilatedSkip(features, features, dilations)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        skips = []
        for level in self.levels:
            x, skip = level(x)
            skips.append(skip)
        return self.bottleneck(x), skips


class MultiviewDecoder(nn.Module):
    def __init__(self, features: int, n_levels: int, num_classes: int, deep_supervision: bool) -> None:
        super().__init__()
        skip_width, bottom_width = 2 * features, 2 * features
        widths = [bottom_width] + [features + skip_width] * (n_levels - 1)
        self.up_convs = nn.ModuleList(DoubleConv(w, features) for w in widths)  # MV's Up, deepest first
        self.output_block = DoubleConv(features + skip_width, features)  # M3 without its 1x1 head
        # seg_layers[-1] is the full-resolution head (M3's 1x1 convolution); the others serve deep
        # supervision only, on the concatenations of the levels below full resolution, deepest first
        self.seg_layers = nn.ModuleList(
            [nn.Conv2d(features + skip_width, num_classes, 1) for _ in range(n_levels - 1)]
            + [nn.Conv2d(features, num_classes, 1)])
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        outputs = []
        for i, (up_conv, skip) in enumerate(zip(self.up_convs, reversed(skips))):
            x = F.interpolate(up_conv(x), size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = torch.cat((x, skip), dim=1)
            if self.deep_supervision and i < len(self.seg_layers) - 1:
                outputs.append(self.seg_layers[i](x))
        out = self.seg_layers[-1](self.output_block(x))
        if not self.deep_supervision:
            return out
        return [out, *reversed(outputs)]  # nnU-Net's order: full resolution first


class MultiviewUNet(nn.Module):
    """The laboratory's 2-D "Multiview" network, built by nnU-Net from plans.

    ``strides``: nnU-Net's per-stage strides, the first ``[1, 1]`` (stage 0 does not pool); one
    pooling level per further entry. nnU-Net computes its deep-supervision scales from the same
    list, so the number of outputs matches its loss.
    """

    def __init__(self, input_channels: int, num_classes: int, strides: Sequence[Sequence[int]],
                 features: int = DEFAULT_FEATURES, dilations: Sequence[int] = DEFAULT_DILATIONS,
                 deep_supervision: bool = False) -> None:
        super().__init__()
        strides = [tuple(int(v) for v in s) for s in strides]
        if len(strides) < 2 or any(len(s) != 2 for s in strides) or any(v < 1 for s in strides for v in s):
            raise ValueError(f"strides must be nnU-Net's 2-D per-stage strides, at least two pairs of positive "
                             f"integers starting with [1, 1], got {strides}")
        if strides[0] != (1, 1):
            raise ValueError(f"the first stride is nnU-Net's full-resolution stage and must be [1, 1], got {strides[0]}")
        if features < 1 or not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"features must be >= 1 and dilations positive, got {features} and {list(dilations)}")
        self.strides = strides
        self.encoder = MultiviewEncoder(input_channels, features, strides[1:], dilations)
        self.decoder = MultiviewDecoder(features, len(strides) - 1, num_classes, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        bottom, skips = self.encoder(x)
        return self.decoder(bottom, skips)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's ``get_network_from_plans`` applies this to every module: He initialisation for
        the ReLU network (PyTorch's default would do too; named for parity with nnU-Net's networks)."""
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def multiview_architecture(strides: Sequence[Sequence[int]], features: int = DEFAULT_FEATURES,
                           dilations: Sequence[int] = DEFAULT_DILATIONS) -> dict:
    """The ``architecture`` entry of an nnU-Net plans configuration that builds ``MultiviewUNet``."""
    return {
        "network_class_name": f"{MultiviewUNet.__module__}.{MultiviewUNet.__name__}",
        "arch_kwargs": {"strides": [list(map(int, s)) for s in strides], "features": int(features),
                        "dilations": [int(d) for d in dilations]},
        "_kw_requires_import": [],
    }


def multiview_stages(network: MultiviewUNet) -> list[Stage]:
    """The placement map (docs/METHODS.md, "Placement"): encoder level ``i`` is its double convolution and
    the dilated block on its skip path (both see that level's encoder features; level 0 includes the
    stem), the bottleneck the dilated block at the bottom, decoder stage ``i`` the double convolution
    before the ``i``-th upsampling and the last one the output block's double convolution;
    ``decoder.seg_layers`` holds the 1x1 heads."""
    encoder, decoder = network.encoder, network.decoder
    stages = [Stage(f"encoder.{i}", "encoder", (encoder.stem, level) if i == 0 else (level,))
              for i, level in enumerate(encoder.levels)]
    stages.append(Stage("bottleneck", "bottleneck", (encoder.bottleneck,)))
    stages += [Stage(f"decoder.{i}", "decoder", (up,)) for i, up in enumerate(decoder.up_convs)]
    stages.append(Stage(f"decoder.{len(decoder.up_convs)}", "decoder", (decoder.output_block,)))
    stages.append(Stage("seg_layers", "seg_layers", (decoder.seg_layers,)))
    return stages


# nnU-Net builds it from the plans that name it (planning/view_planner.py writes them); no trainer-name token
FAMILY = Family(
    name="multiview",
    description="Multiview (the SAH laboratory's 2-D network)",
    stages=multiview_stages,
    classes=(f"{MultiviewUNet.__module__}.{MultiviewUNet.__name__}",),
    deep_supervision=True,
    nnunet_skips_heads=True,
    adapts_input_channels=True,
    from_plans=from_nnunet_plans,
)
