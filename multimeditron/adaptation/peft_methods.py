"""Which expert parameters train for each adaptation: all (`finetune`), none (`lp`), biases only (`bitfit`) or
PEFT LoRA adapters (`lora`, injected into the ViT's qkv/fc1/fc2 as DINOv2-on-radiology did), and folding LoRA back
into plain weights so the adapted expert keeps its own module layout."""
from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from multimeditron.adaptation.errors import AdaptationError

# finetune: everything trains; lp: the head only; lora: adapters; bitfit: the biases
Adaptation = Literal["finetune", "lp", "lora", "bitfit"]
ADAPTATIONS: tuple[str, ...] = typing.get_args(Adaptation)
LoraBias = Literal["none", "all", "lora_only"]


@dataclass
class LoraSection:
    """The expert's LoRA adapters (a recipe's `finetune.lora`): DINOv2-on-radiology's places, qkv / fc1 / fc2."""
    r: int = 48
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "fc1", "fc2"])
    bias: LoraBias = "none"  # peft's LoraConfig.bias: which biases train beside the adapters


def prepare_expert(expert: nn.Module, adaptation: str, lora: LoraSection | None = None) -> nn.Module:
    """Set `requires_grad` on `expert` for `adaptation` (LoRA: inject the adapters first); returns the expert."""
    if adaptation not in ADAPTATIONS:
        raise AdaptationError(f"adaptation {adaptation!r} is not one of {list(ADAPTATIONS)}")
    if adaptation == "finetune":
        return expert.requires_grad_(True)
    expert.requires_grad_(False)
    if adaptation == "bitfit":
        for name, param in expert.named_parameters():
            param.requires_grad = name.endswith("bias")
    elif adaptation == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        settings = lora or LoraSection()
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=list(settings.target_modules), bias=settings.bias)
        try:
            inject_adapter_in_model(config, expert)  # adapters are trainable, everything else stays frozen
        except ValueError as error:
            raise AdaptationError(f"lora: cannot place adapters on {settings.target_modules} in "
                             f"{type(expert).__name__}: {error}") from error
    if not any(p.requires_grad for p in expert.parameters()) and adaptation != "lp":
        raise AdaptationError(f"{adaptation}: no parameter of the expert would train")
    return expert


def merged_copy(expert: nn.Module) -> nn.Module:
    """A copy of `expert` with every LoRA adapter merged into its base layer (peft's `merge`) and the wrapper
    replaced by that layer: the expert's original module layout. Experts without adapters are copied as they are."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(expert)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    return merged
