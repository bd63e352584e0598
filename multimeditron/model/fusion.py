"""Fusion of several experts' token sequences (already on one token grid and one width) into the image tokens.

Two layers for `attn`: `CrossAttentionFusion` (this toolkit's default, `attn_variant: residual`) and
`PublishedCrossAttention` (`attn_variant: published`, the published MultiMeditron computation, for its ATTN rows).
"""
from __future__ import annotations

import torch
from torch import nn

# The published cross-attention's dropout, on the attention weights and on the output.
PUBLISHED_ATTN_DROPOUT = 0.1


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


class PublishedCrossAttention(nn.Module):
    """The published MultiMeditron `attn` fusion, computed as published.

    Queries: the generalist's tokens. Keys and values: every expert's tokens, the generalist's included, each expert's
    tokens multiplied by softmax(router weights) (a second softmax over probabilities that already sum to 1) before
    the key and value projections. q/k/v and output projections are linear layers with bias; dropout 0.1 on the
    attention weights and on the output; no LayerNorm, no residual. Parameter names (q_proj, k_proj, v_proj, proj)
    are the published ones, so published checkpoints map onto it key for key.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attn_heads: {heads} heads do not divide the fused width {dim}")
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = nn.Dropout(PUBLISHED_ATTN_DROPOUT), nn.Dropout(PUBLISHED_ATTN_DROPOUT)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, stacked: torch.Tensor, weights: torch.Tensor, top_k: int) -> torch.Tensor:
        # stacked: (B, E, T, D); weights: (B, E). The published layer runs every expert (dense routing; the model
        # config refuses a smaller top-k with this variant), so top_k plays no part.
        b, e, t, d = stacked.shape
        scale = weights.softmax(dim=-1)[:, :, None, None]
        context = (stacked * scale).reshape(b, e * t, d)
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        attention = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        attention = self.attn_drop(attention.softmax(dim=-1))
        out = (attention @ v).transpose(1, 2).reshape(b, query.shape[1], d)
        return self.proj_drop(self.proj(out))


def build_cross_attention(variant: str, dim: int, heads: int) -> nn.Module:
    """The `attn` fusion layer of `attn_variant` (`residual` or `published`)."""
    if variant == "published":
        return PublishedCrossAttention(dim, heads)
    if variant == "residual":
        return CrossAttentionFusion(dim, heads)
    raise ValueError(f"attn_variant: unknown {variant!r}")


def fuse(fusion: str, stacked: torch.Tensor, weights: torch.Tensor, top_k: int,
         generalist_index: int, cross_attention: nn.Module | None) -> torch.Tensor:
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
