"""Per-image expert weights: `uniform` (every expert) or `learned` (a gate on the generalist's pooled feature, top-k)."""
from __future__ import annotations

import torch
from torch import nn


class Router(nn.Module):
    """Returns `weights` (B, E), zero outside each image's top-k, renormalised to sum to one over the selected experts."""

    def __init__(self, kind: str, num_experts: int, top_k: int, generalist_dim: int) -> None:
        super().__init__()
        self.kind, self.num_experts, self.top_k = kind, num_experts, top_k
        self.gate = nn.Linear(generalist_dim, num_experts) if kind == "learned" else None

    @property
    def needs_generalist(self) -> bool:
        return self.gate is not None

    def forward(self, generalist_tokens: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
        if self.gate is None:
            return torch.full((batch_size, self.num_experts), 1.0 / self.num_experts, device=device)
        logits = self.gate(generalist_tokens.mean(dim=1))
        probs = logits.float().softmax(dim=-1)
        top_values, top_index = probs.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, top_index, top_values / top_values.sum(-1, keepdim=True))
        return weights.to(logits.dtype)
