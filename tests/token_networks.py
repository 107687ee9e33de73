"""A tiny transformer U-Net: the Linear layers of UNETR, SwinUNETR and Primus in nnU-Net's U-Net layout.

It keeps the structure the U-Net placement recognises (``encoder.stages``, ``decoder.transpconvs``,
``decoder.stages``, ``decoder.seg_layers``), so the adapter harness runs on Linear layers through
the same injection path as on the CNNs, with no stage map of its own:

* ``encoder.0``: a 3x3 convolution (a CNN stem, as UNETR's encoder convolutions);
* ``encoder.1``: a strided patch-embedding convolution and a pre-norm transformer block whose
  attention has a *fused* ``qkv`` projection (MONAI ``SABlock``: ``Linear(C, 3C)``, q, k, v stacked)
  with biases, an output projection and a two-layer MLP, run on tokens ``(B, N, C)`` for attention
  and on the channels-last map ``(B, *spatial, C)`` for the MLP (Linear inputs of 3 and 4-5 axes);
* ``bottleneck``: SwinUNETR-style patch merging (``LayerNorm`` and a bias-free ``Linear`` reduction
  of ``2^d`` neighbours) and a block with separate bias-free ``q``, ``k``, ``v`` projections
  (Primus' Eva attention);
* ``decoder.i``: a transposed convolution, a 3x3 convolution and a channels-last ``Linear`` mix;
* ``decoder.seg_layers``: 1x1 convolution heads, highest resolution first under deep supervision.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, fused: bool, bias: bool) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        else:
            self.q, self.k, self.v = (nn.Linear(dim, dim, bias=bias) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        if self.fused:  # MONAI's "b h (qkv l d) -> qkv b l h d"
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = (m(x).reshape(b, n, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        weights = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block on a channels-last map ``(B, *spatial, C)``."""

    def __init__(self, dim: int, heads: int = 2, fused: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused, bias)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim, bias=bias), nn.GELU(), nn.Linear(4 * dim, dim, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])
        x = (tokens + self.attn(self.norm1(tokens))).reshape(x.shape)
        return x + self.mlp(self.norm2(x))


class EmbedStage(nn.Module):
    def __init__(self, ndim: int, cin: int, dim: int) -> None:
        super().__init__()
        self.embed = _CONV[ndim](cin, dim, 2, stride=2)
        self.blocks = nn.ModuleList([Block(dim, fused=True, bias=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).movedim(1, -1)
        for block in self.blocks:
            x = block(x)
        return x.movedim(-1, 1)


class MergeStage(nn.Module):
    def __init__(self, ndim: int, cin: int, dim: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.norm = nn.LayerNorm(2 ** ndim * cin)
        self.reduction = nn.Linear(2 ** ndim * cin, dim, bias=False)
        self.blocks = nn.ModuleList([Block(dim, fused=False, bias=False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1)
        parts = [x[(slice(None), *(slice(o, None, 2) for o in offsets))]
                 for offsets in itertools.product((0, 1), repeat=self.ndim)]
        x = self.reduction(self.norm(torch.cat(parts, dim=-1)))
        for block in self.blocks:
            x = block(x)
        return x.movedim(-1, 1)


class DecoderStage(nn.Module):
    def __init__(self, ndim: int, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _CONV[ndim](cin, cout, 3, padding=1)
        self.act = nn.LeakyReLU()
        self.mix = nn.Linear(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        return x + self.mix(x.movedim(1, -1)).movedim(-1, 1)


class TokenUNet(nn.Module):
    def __init__(self, ndim: int, in_channels: int, num_classes: int, deep_supervision: bool = True) -> None:
        super().__init__()
        conv, conv_t = _CONV[ndim], _CONV_T[ndim]
        self.deep_supervision = deep_supervision
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.stages = nn.ModuleList([
            nn.Sequential(conv(in_channels, 8, 3, padding=1), nn.LeakyReLU()),
            EmbedStage(ndim, 8, 16),
            MergeStage(ndim, 16, 32),
        ])
        self.decoder.transpconvs = nn.ModuleList([conv_t(32, 16, 2, stride=2), conv_t(16, 8, 2, stride=2)])
        self.decoder.stages = nn.ModuleList([DecoderStage(ndim, 32, 16), DecoderStage(ndim, 16, 8)])
        self.decoder.seg_layers = nn.ModuleList([conv(16, num_classes, 1), conv(8, num_classes, 1)])
        # nnU-Net's He initialisation (InitWeights_He), as its CNNs get: with PyTorch's smaller defaults the
        # gradient reaching the attention's q and k after two SGD steps is below float32 resolution
        for m in self.modules():
            if isinstance(m, (nn.Linear, *_CONV.values(), *_CONV_T.values())):
                nn.init.kaiming_normal_(m.weight, a=1e-2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor):
        skips = []
        for stage in self.encoder.stages:
            x = stage(x)
            skips.append(x)
        x, outputs = skips.pop(), []
        for up, stage, head in zip(self.decoder.transpconvs, self.decoder.stages, self.decoder.seg_layers):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
            outputs.append(head(x))
        return outputs[::-1] if self.deep_supervision else outputs[-1]
