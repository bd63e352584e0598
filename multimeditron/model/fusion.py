"""Fusion of several experts' token sequences (already on one token grid and one width) into the image tokens."""
from __future__ import annotations

import torch
from torch import nn


class CrossAttentionFusion(nn.Module):
    """Generalist tokens attend to the tokens of the selected experts, whose values the router weights scale, with a
    residual connection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attn_heads: {heads} heads do not divide the fused width {dim}")
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        # Zero-initialised output keeps the generalist's features intact at the start of alignment.
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, query: torch.Tensor, stacked: torch.Tensor, weights: torch.Tensor, top_k: int) -> torch.Tensor:
        # stacked: (B, E, T, D); weights: (B, E). Unselected experts are masked out of the keys entirely.
        b, e, t, d = stacked.shape
        normed = self.norm_kv(stacked)
        # The router weights scale the values after the LayerNorm (before it, the norm would cancel them), times
        # top_k so that equal weights leave the values unchanged (as in `cat`).
        values = normed * (weights * top_k)[:, :, None, None]
        ignore = (weights == 0)[:, :, None].expand(b, e, t).reshape(b, e * t)
        attended, _ = self.attn(self.norm_q(query), normed.reshape(b, e * t, d), values.reshape(b, e * t, d),
                                key_padding_mask=ignore, need_weights=False)
        return query + attended


def fuse(fusion: str, stacked: torch.Tensor, weights: torch.Tensor, top_k: int,
         generalist_index: int, cross_attention: CrossAttentionFusion | None) -> torch.Tensor:
    """stacked (B, E, T, D) with zeros for experts not run, weights (B, E) -> image tokens (B, N, D)."""
    if fusion == "none":
        return stacked[:, 0]
    if fusion == "avg":
        return (stacked * weights[:, :, None, None]).sum(dim=1)
    if fusion == "cat":
        # Each image contributes exactly top_k expert blocks, in the order of its router weights.
        order = weights.topk(top_k, dim=-1).indices  # (B, k)
        picked = torch.gather(stacked, 1, order[:, :, None, None].expand(-1, -1, *stacked.shape[2:]))
        picked = picked * torch.gather(weights, 1, order)[:, :, None, None] * top_k
        return picked.flatten(1, 2)
    if fusion == "attn":
        return cross_attention(stacked[:, generalist_index], stacked, weights, top_k)
    raise ValueError(f"fusion: unknown {fusion!r}")
