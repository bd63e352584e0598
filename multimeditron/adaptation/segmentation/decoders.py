"""Segmentation decoders on frozen ViT patch tokens: `linear` (BatchNorm + 1x1 conv on the last block's patch grid,
upsampled to the image) and `unet` (4 intermediate blocks, each brought to its own scale by transposed
convolutions, merged coarse to fine with conv + BN + ReLU per stage, down to a full-resolution stage that also sees
the image itself, as a U-Net's first level)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODERS = ("linear", "unet")


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LinearDecoder(nn.Module):
    layers = 1

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(width)
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, grids: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        logits = self.classify(self.norm(grids[-1]))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


class UNetDecoder(nn.Module):
    """grids: 4 (B, D, g, g) maps, oldest block first; image: (B, 3, S, S). Stage k (coarse to fine) works at
    g * 2^k; the deepest block enters at g, each earlier block is upsampled to its stage's scale."""

    layers = 4

    def __init__(self, width: int, num_classes: int, channels: int = 32) -> None:
        super().__init__()
        self.entry = conv_bn_relu(width, channels)
        self.lifts = nn.ModuleList()  # blocks 3, 2, 1 (0-based 2, 1, 0) lifted by x2, x4, x8
        self.stages = nn.ModuleList()
        for k in range(1, 4):
            self.lifts.append(nn.Sequential(*[nn.ConvTranspose2d(width if i == 0 else channels, channels, 2, stride=2)
                                              for i in range(k)]))
            self.stages.append(conv_bn_relu(2 * channels, channels))
        self.pixels = conv_bn_relu(3, channels)
        self.last = conv_bn_relu(2 * channels, channels)
        self.classify = nn.Conv2d(channels, num_classes, 1)

    def forward(self, grids: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        if not 1 <= len(grids) <= 4:
            raise ValueError(f"the U-Net decoder takes up to 4 intermediate blocks, got {len(grids)}")
        grids = [grids[0]] * (4 - len(grids)) + list(grids)  # an expert with fewer blocks repeats its first
        x = self.entry(grids[-1])
        for lift, stage, grid in zip(self.lifts, self.stages, reversed(grids[:-1])):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, lift(grid)], dim=1))
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.classify(self.last(torch.cat([x, self.pixels(image)], dim=1)))


def build_decoder(kind: str, width: int, num_classes: int) -> nn.Module:
    if kind == "linear":
        return LinearDecoder(width, num_classes)
    if kind == "unet":
        return UNetDecoder(width, num_classes)
    raise ValueError(f"decoder {kind!r} is not one of {list(DECODERS)}")
