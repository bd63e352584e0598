"""Optimiser parameter groups (layer-wise learning-rate decay for ViT trunks, no weight decay on 1-d parameters),
from timm; the engine (`adaptation.engine`) turns them into the optimiser and runs the schedule."""
from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(expert: nn.Module, head: nn.Module | None, weight_decay: float, layer_decay: float = 1.0,
                 ) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters of `expert` and `head`, each with an `lr_scale`.

    With `layer_decay` < 1 the expert's ViT trunk is grouped by timm's `param_groups_layer_decay` (the BEiT/MAE/
    RETFound rule: block i of n, from 0, gets `layer_decay ** (n - i)`; the patch embedding and the class/register
    tokens `layer_decay ** (n + 1)`; timm gives the final norm the last block's scale); the head and any expert
    parameter outside the trunk get scale 1.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    groups: list[dict[str, Any]] = []
    rest = nn.ModuleDict({"head": head if head is not None else nn.Identity()})
    if layer_decay < 1.0:
        from multimeditron.adaptation.trunk import vit_trunk

        trunk = vit_trunk(expert)
        skip = set(getattr(trunk, "no_weight_decay", lambda: set())())
        # timm gives the trunk's top layer scale 1; the new head sits one layer above it, as in RETFound.
        for group in param_groups_layer_decay(trunk, weight_decay=weight_decay, no_weight_decay_list=skip,
                                              layer_decay=layer_decay):
            groups.append({**group, "lr_scale": group["lr_scale"] * layer_decay})
        in_trunk = {id(p) for p in trunk.parameters()}
        outside = [p for p in expert.parameters() if p.requires_grad and id(p) not in in_trunk]
        if outside:
            groups.append({"params": outside, "weight_decay": weight_decay, "lr_scale": 1.0})
    else:
        rest["expert"] = expert
    for group in param_groups_weight_decay(rest, weight_decay):
        groups.append({**group, "lr_scale": 1.0})
    return [g for g in groups if g["params"]]
