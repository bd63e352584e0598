"""Which expert parameters train for each adaptation: all (`finetune`), none (`lp`), biases only (`bitfit`) or
PEFT LoRA adapters (`lora`, injected into the ViT's qkv/fc1/fc2 as DINOv2-on-radiology did), and folding LoRA back
into plain weights so the adapted expert keeps its own module layout."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import nn

from multimeditron.adaptation.errors import AdaptationError

ADAPTATIONS = ("finetune", "lp", "lora", "bitfit")


@dataclass
class LoraSettings:
    r: int = 48
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "fc1", "fc2"])
    bias: str = "none"  # peft: none, all, or lora_only (the biases of the adapted layers train too)


def prepare_expert(expert: nn.Module, adaptation: str, lora: LoraSettings | None = None) -> nn.Module:
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

        settings = lora or LoraSettings()
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=list(settings.target_modules), bias=getattr(settings, "bias", "none"))
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
