"""Projectors from a vision feature width to the LLM's hidden size."""
from __future__ import annotations

from torch import nn


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Module:
    if projector_type == "linear":
        return nn.Linear(in_dim, out_dim)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"projector_type: unknown {projector_type!r}")
