"""The timm ViT inside an expert (`expert.vit`, `expert.visual.trunk`, ...) and the knobs adaptation turns on it:
drop path per block and the replacement of patch embeddings by a mask token."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from multimeditron.adaptation.errors import AdaptationError


def vit_trunk(expert: nn.Module) -> nn.Module:
    """The first sub-module that is a timm-style ViT (has `patch_embed` and a `blocks` list); an error naming
    the expert's type when there is none (families without such a trunk cannot use these options)."""
    for _, module in expert.named_modules():
        if hasattr(module, "patch_embed") and isinstance(getattr(module, "blocks", None), nn.Sequential | nn.ModuleList):
            return module
    name = getattr(expert, "expert_id", type(expert).__name__)
    raise AdaptationError(f"expert {name!r} ({type(expert).__name__}) has no timm ViT trunk (patch_embed + blocks), "
                          f"which layer-wise lr decay (--layer-decay 1 turns it off), drop path (--drop-path 0), "
                          f"token reconstruction (adapt) and intermediate layers need; finetune it with those off, "
                          f"or with --adaptation lp / bitfit")


def set_drop_path(trunk: nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly from 0 at the first block to `rate` at the last (timm's / RETFound's rule).

    Replaces the blocks' `drop_path1` / `drop_path2`, so it works on an expert built without `drop_path_rate`
    and leaves the expert's spec (and the architecture recorded for the VLM) unchanged."""
    from timm.layers import DropPath

    blocks = list(trunk.blocks)
    for i, block in enumerate(blocks):
        p = rate * i / max(1, len(blocks) - 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(block, name):
                setattr(block, name, DropPath(p) if p > 0 else nn.Identity())


@contextlib.contextmanager
def masked_patches(trunk: nn.Module, mask_token: torch.Tensor, masks: torch.Tensor) -> Iterator[None]:
    """Inside the block, the patch embeddings where `masks` (B, N) is True are replaced by `mask_token` (D,)
    before position embeddings are added (as MAE/iBOT/RETFound-Green mask)."""

    def replace(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        shape = output.shape
        flat = output.reshape(shape[0], -1, shape[-1])  # (B, H, W, D) layouts flatten to (B, N, D)
        if flat.shape[1] != masks.shape[1]:
            raise ValueError(f"mask of {masks.shape[1]} patches for {flat.shape[1]} patch embeddings")
        keep = (~masks).unsqueeze(-1).to(flat.dtype)
        flat = flat * keep + mask_token.to(flat.dtype) * (1 - keep)
        return flat.reshape(shape)

    handle = trunk.patch_embed.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def num_patches(trunk: nn.Module) -> int:
    grid = trunk.patch_embed.grid_size
    return int(grid[0] * grid[1])
