"""Projectors from a vision feature width to the LLM's hidden size."""
from __future__ import annotations

from torch import nn

# The published MultiMeditron projector's initialisation (transformers' initializer_range): weights N(0, 0.02).
MLP3X_INIT_STD = 0.02


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Module:
    if projector_type == "linear":
        return nn.Linear(in_dim, out_dim)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    if projector_type == "mlp3x_gelu":
        # The published MultiMeditron projector: in -> in -> out -> out, GELU between, weights N(0, 0.02), biases 0.
        layers = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim), nn.GELU(),
                               nn.Linear(out_dim, out_dim))
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, mean=0.0, std=MLP3X_INIT_STD)
                nn.init.zeros_(layer.bias)
        return layers
    raise ValueError(f"projector_type: unknown {projector_type!r}")
