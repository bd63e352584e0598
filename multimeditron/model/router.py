"""Per-image expert weights: `uniform` (every expert) or `learned` (a gate on the generalist's pooled feature, top-k),
with the Switch/Mixtral load-balancing loss and the experts' usage of the last batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Routing:
    """One batch's routing: `weights` (B, E) scale each expert's tokens, zero outside an image's top-k;
    `probs` (B, E) is the gate's softmax (None for the uniform router)."""

    weights: torch.Tensor
    probs: torch.Tensor | None
    top_k: int

    @property
    def selected(self) -> torch.Tensor:
        return self.weights != 0

    def usage(self) -> torch.Tensor:
        """(E,) fraction of the batch's images that ran each expert (sums to top_k)."""
        return self.selected.float().mean(dim=0)

    def balance_loss(self) -> torch.Tensor | None:
        """The Switch Transformer / Mixtral load-balancing term E * sum_e f_e * P_e: f_e is the fraction of routing
        slots (image x top-k) given to expert e, P_e the mean gate probability of e. Its minimum, 1, is reached with
        a uniform spread; a router that collapses onto one expert approaches E. None for the uniform router."""
        if self.probs is None:
            return None
        num_experts = self.probs.shape[-1]
        slots = self.selected.float().sum(dim=0) / (self.weights.shape[0] * self.top_k)
        return num_experts * (slots * self.probs.mean(dim=0)).sum()


class Router(nn.Module):
    """Expert weights per image.

    Learned: top-k of the gate's softmax. With k = E the weights are the softmax itself; with 1 < k < E they are
    renormalised over the selected experts (Mixtral); with k = 1 the chosen expert keeps its un-renormalised
    probability (Switch Transformer), since a renormalised single weight is always 1 and no gradient would reach
    the gate.
    """

    def __init__(self, kind: str, num_experts: int, top_k: int, generalist_dim: int) -> None:
        super().__init__()
        self.kind, self.num_experts, self.top_k = kind, num_experts, top_k
        self.gate = nn.Linear(generalist_dim, num_experts) if kind == "learned" else None

    @property
    def needs_generalist(self) -> bool:
        return self.gate is not None

    def forward(self, generalist_tokens: torch.Tensor | None, batch_size: int, device: torch.device) -> Routing:
        if self.gate is None:
            weights = torch.full((batch_size, self.num_experts), 1.0 / self.num_experts, device=device)
            return Routing(weights, None, self.num_experts)
        logits = self.gate(generalist_tokens.mean(dim=1))
        probs = logits.float().softmax(dim=-1)
        if self.top_k == self.num_experts:
            return Routing(probs.to(logits.dtype), probs, self.top_k)
        top_values, top_index = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            top_values = top_values / top_values.sum(-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(-1, top_index, top_values)
        return Routing(weights.to(logits.dtype), probs, self.top_k)
