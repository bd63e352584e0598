"""A classification head on an expert's global output (its family's pooling: class token or average of tokens)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from multimeditron.experts.base import VisionExpert

HEADS = ("linear", "bn_linear")


def build_head(kind: str, width: int, num_classes: int) -> nn.Module:
    """`linear` (fine-tuning: weights from N(0, 2e-5), as MAE/RETFound) or `bn_linear` (linear probing: a
    BatchNorm without affine parameters before the linear layer, as MAE's linear probe)."""
    if kind not in HEADS:
        raise ValueError(f"head {kind!r} is not one of {list(HEADS)}")
    linear = nn.Linear(width, num_classes)
    nn.init.trunc_normal_(linear.weight, std=2e-5 if kind == "linear" else 0.01)
    nn.init.zeros_(linear.bias)
    if kind == "linear":
        return linear
    return nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), linear)


class Classifier(nn.Module):
    """canvas (B, 3, S, S) in [0, 1] -> logits (B, C). A frozen expert stays in eval mode when the head trains."""

    def __init__(self, expert: VisionExpert, head: nn.Module, frozen_expert: bool = False) -> None:
        super().__init__()
        if expert.output != "cls":
            raise ValueError(f"{expert.expert_id}: a classifier needs the expert's `cls` output, not {expert.output!r}")
        self.expert, self.head, self.frozen_expert = expert, head, frozen_expert

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.frozen_expert:
            self.expert.eval()
        return self

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        features = self.expert(canvas)[:, 0]
        return self.head(features.to(next(self.head.parameters()).dtype))


def head_record(kind: str, width: int, classes: list[str], multilabel: bool = False) -> dict[str, Any]:
    """What rebuilds the head: its kind and width, the class (or label) names, and whether its outputs are
    independent labels (sigmoid) or one class (softmax)."""
    return {"kind": kind, "width": width, "classes": list(classes), "multilabel": multilabel}
