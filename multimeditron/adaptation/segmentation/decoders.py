"""Segmentation decoders on frozen ViT patch tokens: `linear` (BatchNorm + 1x1 conv on the last block's patch grid,
upsampled to the image) and `unet` (4 intermediate blocks, each brought to its own scale by transposed
convolutions, merged coarse to fine with conv + BN + ReLU per stage, down to a full-resolution stage that also sees
the image itself, as a U-Net's first level), and DINOv2-on-radiology's two (`eval/segmentation/utils.py`):
`dinov2_linear` (a 1x1 conv on the last block's patch grid, no BatchNorm) and `dinov2_unet` (the last 5 blocks'
grids, 4 up-blocks from D to D/2, D/4, D/8 and the classes, no pixel input), whose Dice measures the encoder's
tokens alone."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODERS = ("linear", "unet", "dinov2_linear", "dinov2_unet")


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


class Dinov2LinearDecoder(nn.Module):
    """DINOv2-on-radiology's `LinearDecoder`: 1x1 conv (weights N(0, 0.01), bias 0) on the last block's patch
    grid, logits upsampled bilinearly to the image."""

    layers = 1

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.classify = nn.Conv2d(width, num_classes, 1)
        nn.init.normal_(self.classify.weight, std=0.01)
        nn.init.zeros_(self.classify.bias)

    def forward(self, grids: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.classify(grids[-1]), size=image.shape[-2:], mode="bilinear", align_corners=False)


class Dinov2UpBlock(nn.Module):
    """`UNetDecoderUpBlock`: x lifted x2 by a transposed conv; the skip grid (the expert's width) by conv 3x3 + BN +
    ReLU, upsampled (bilinear, align_corners) to x's size; both concatenated, conv 3x3 + BN + ReLU."""

    def __init__(self, cin: int, cout: int, width: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.skip = nn.Sequential(nn.Conv2d(width, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.merge = nn.Sequential(nn.Conv2d(2 * cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
                                   nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        skip = F.interpolate(self.skip(skip), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.merge(torch.cat([x, skip], dim=1))


class Dinov2UNetDecoder(nn.Module):
    """DINOv2-on-radiology's `UNetDecoder`: grids of the last 5 blocks (oldest first); the newest enters, the other
    four are the skips of up-blocks D -> D/2 -> D/4 -> D/8 -> classes (so the logits pass its last BN + ReLU, as
    there); the output (16 x the patch grid) is resized to the image (bicubic, their `resize_image`)."""

    layers = 5

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        channels = [width, width // 2, width // 4, width // 8, num_classes]
        if min(channels[1:4]) < 1:
            raise ValueError(f"the DINOv2 U-Net needs an expert width of at least 8, got {width}")
        self.ups = nn.ModuleList(Dinov2UpBlock(channels[i], channels[i + 1], width) for i in range(4))

    def forward(self, grids: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        if not 1 <= len(grids) <= 5:
            raise ValueError(f"the DINOv2 U-Net decoder takes up to 5 blocks, got {len(grids)}")
        grids = [grids[0]] * (5 - len(grids)) + list(grids)  # an expert with fewer blocks repeats its first
        x = grids[4]
        for up, skip in zip(self.ups, (grids[3], grids[2], grids[1], grids[0])):
            x = up(x, skip)
        if x.shape[-2:] != image.shape[-2:]:
            x = F.interpolate(x, size=image.shape[-2:], mode="bicubic", align_corners=False)
        return x


def build_decoder(kind: str, width: int, num_classes: int) -> nn.Module:
    if kind == "linear":
        return LinearDecoder(width, num_classes)
    if kind == "unet":
        return UNetDecoder(width, num_classes)
    if kind == "dinov2_linear":
        return Dinov2LinearDecoder(width, num_classes)
    if kind == "dinov2_unet":
        return Dinov2UNetDecoder(width, num_classes)
    raise ValueError(f"decoder {kind!r} is not one of {list(DECODERS)}")
