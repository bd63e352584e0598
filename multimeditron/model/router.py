"""Per-image expert weights: `uniform` (every expert), `learned` (a gate on the generalist's pooled feature, top-k) or
`pretrained` (a frozen image classifier's class probabilities mapped to the experts, dense or top-k, as the published
MultiMeditron gate), and the Switch/Mixtral load-balancing loss (`load_balancing_loss`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from multimeditron.model.gate_classifier import GateClassifier, GateClassifierSpec


@dataclass
class Routing:
    """One batch's routing: `weights` (B, E) scale each expert's tokens, zero outside an image's top-k;
    `probs` (B, E) is the gate's softmax (None for the uniform router); `balanced`: whether the load-balancing term
    applies (not to the pretrained classifier, which routes by image modality, not for balance)."""

    weights: torch.Tensor
    probs: torch.Tensor | None
    top_k: int
    balanced: bool = True

    @property
    def selected(self) -> torch.Tensor:
        return self.weights != 0

    def usage(self) -> torch.Tensor:
        """(E,) fraction of the batch's images that ran each expert (sums to top_k)."""
        return self.selected.float().mean(dim=0)

    def balance_loss(self) -> torch.Tensor | None:
        """`load_balancing_loss` of this routing; None for the uniform router and the pretrained classifier."""
        if self.probs is None or not self.balanced:
            return None
        return load_balancing_loss(self.probs, self.selected, self.top_k)


def load_balancing_loss(router_probs: torch.Tensor, expert_mask: torch.Tensor, top_k: int) -> torch.Tensor:
    """The Switch Transformer / Mixtral load-balancing term E * sum_e f_e * P_e over (num_images, E) gate
    probabilities and the experts each image ran: f_e is the fraction of routing slots (image x top-k) given to
    expert e, P_e the mean gate probability of e. Its minimum, 1, is reached with a uniform spread; a router that
    collapses onto one expert approaches E. Rows that ran no expert (a batch without images) count as no slot: the
    term is then 0, with the gate still in its graph."""
    num_experts = router_probs.shape[-1]
    slots = expert_mask.float().sum(dim=0) / (expert_mask.shape[0] * top_k)
    return num_experts * (slots * router_probs.mean(dim=0)).sum()


class Router(nn.Module):
    """Expert weights per image.

    Learned: top-k of the gate's softmax. With k = E the weights are the softmax itself; with 1 < k < E they are
    renormalised over the selected experts (Mixtral); with k = 1 the chosen expert keeps its un-renormalised
    probability (Switch Transformer), since a renormalised single weight is always 1 and no gradient would reach
    the gate.

    Pretrained: the classifier's expert probabilities (its class probabilities summed per expert), selected the same
    way; it reads the canvas itself and, frozen (training.stages decides by its `trainable_stages`), stays in eval mode.
    """

    def __init__(self, kind: str, num_experts: int, top_k: int, generalist_dim: int,
                 classifier: dict | None = None) -> None:
        super().__init__()
        self.kind, self.num_experts, self.top_k = kind, num_experts, top_k
        self.gate = nn.Linear(generalist_dim, num_experts) if kind == "learned" else None
        # `classifier` is given exactly with `pretrained` (MultiMeditronConfig checks it).
        self.classifier = (GateClassifier(GateClassifierSpec.from_dict(classifier, num_experts), num_experts)
                           if kind == "pretrained" else None)

    @property
    def needs_generalist(self) -> bool:
        return self.gate is not None

    def train(self, mode: bool = True) -> Router:
        super().train(mode)
        if self.classifier is not None and not any(p.requires_grad for p in self.classifier.parameters()):
            self.classifier.eval()  # frozen: its BatchNorm statistics must not drift with the batches
        return self

    def forward(self, generalist_tokens: torch.Tensor | None, batch_size: int, device: torch.device,
                canvas: torch.Tensor | None = None) -> Routing:
        if self.classifier is not None:
            frozen = not any(p.requires_grad for p in self.classifier.parameters())
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                probs = self.classifier(canvas)
            return self._select(probs, probs.dtype, balanced=False)
        if self.gate is None:
            weights = torch.full((batch_size, self.num_experts), 1.0 / self.num_experts, device=device)
            return Routing(weights, None, self.num_experts)
        logits = self.gate(generalist_tokens.mean(dim=1))
        return self._select(logits.float().softmax(dim=-1), logits.dtype)

    def _select(self, probs: torch.Tensor, dtype: torch.dtype, balanced: bool = True) -> Routing:
        if self.top_k == self.num_experts:
            return Routing(probs.to(dtype), probs, self.top_k, balanced)
        top_values, top_index = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            top_values = top_values / top_values.sum(-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(-1, top_index, top_values)
        return Routing(weights.to(dtype), probs, self.top_k, balanced)
