"""Training stages: the one place that sets `requires_grad` per part of the model, and the table that logs it.

- alignment: projector(s), fusion, router and the rows of the new special-token embeddings;
- vision_alignment: alignment + the vision experts (the LLM stays frozen);
- end2end: alignment + the LLM (or its LoRA adapters, and then still the new special-token rows);
- full: end2end + the vision experts;
- lm_only: the LLM alone.
(The table itself is `multimeditron.config.STAGE_PARTS`.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from multimeditron.config import STAGE_PARTS
from multimeditron.model.modeling import MultiMeditronForCausalLM


@dataclass
class PartStatus:
    name: str
    trainable: int
    total: int

    @property
    def state(self) -> str:
        if self.trainable == 0:
            return "frozen"
        return "trainable" if self.trainable == self.total else "partly trainable"


def model_parts(model: MultiMeditronForCausalLM) -> dict[str, list[nn.Parameter]]:
    """Parameters grouped by part (expert ids, projectors, router, fusion, LLM embeddings, LLM body)."""
    vision = model.vision
    parts: dict[str, list[nn.Parameter]] = {}
    for index, expert in enumerate(vision.experts):
        parts[f"expert[{index}] {expert.expert_id}"] = list(expert.parameters())
    parts["projector" + ("s" if len(vision.projectors) > 1 else "")] = list(vision.projectors.parameters())
    if vision.router.gate is not None:
        parts["router"] = list(vision.router.parameters())
    if vision.cross_attention is not None:
        parts["fusion (cross-attention)"] = list(vision.cross_attention.parameters())
    embeddings = model.get_input_embeddings().weight
    parts["llm input embeddings"] = [embeddings]
    seen = {id(embeddings)}
    parts["llm"] = [p for p in model.language_model.parameters() if id(p) not in seen]
    return parts


def new_token_ids(model: MultiMeditronForCausalLM) -> list[int]:
    config = model.config
    return [config.image_start_token_id, config.image_end_token_id]


def stage_part_modules(model: MultiMeditronForCausalLM) -> dict[str, list[nn.Module]]:
    """The modules of each STAGE_PARTS part; the LLM's input embeddings belong to `llm`."""
    vision = model.vision
    glue = [vision.projectors, vision.router]
    if vision.cross_attention is not None:
        glue.append(vision.cross_attention)
    return {"vision_glue": glue, "experts": [vision.experts], "llm": [model.language_model]}


def apply_stage(model: MultiMeditronForCausalLM, stage: str, lora: bool = False) -> list[PartStatus]:
    """Set requires_grad for `stage`; with `lora`, the LLM's trainable part is its adapters (already injected)."""
    if stage not in STAGE_PARTS:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {list(STAGE_PARTS)}")
    parts = STAGE_PARTS[stage]
    model.requires_grad_(False)
    for part, modules in stage_part_modules(model).items():
        if part not in parts:
            continue
        for module in modules:
            if part == "llm" and lora:
                for name, param in module.named_parameters():
                    param.requires_grad_("lora_" in name)
            else:
                module.requires_grad_(True)
    # With the LLM frozen, or trained through LoRA adapters (which leave the embeddings frozen), the image
    # start/end tokens' embedding rows still have to learn (they are new).
    frozen_embeddings_with_vision = "vision_glue" in parts and ("llm" not in parts or lora)
    _limit_embedding_rows(model.get_input_embeddings().weight,
                          new_token_ids(model) if frozen_embeddings_with_vision else None)
    return trainable_table(model)


def _limit_embedding_rows(weight: nn.Parameter, rows: list[int] | None) -> None:
    """In alignment only the new tokens' rows learn: the gradient of every other row is zeroed."""
    handle = getattr(weight, "_multimeditron_row_hook", None)
    if handle is not None:
        handle.remove()
        weight._multimeditron_row_hook = None
        weight._multimeditron_trained_rows = None
    if rows is None:
        return
    weight.requires_grad_(True)
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[rows] = 1
    weight._multimeditron_row_hook = weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))
    weight._multimeditron_trained_rows = list(rows)


def trainable_table(model: MultiMeditronForCausalLM) -> list[PartStatus]:
    rows = []
    for name, params in model_parts(model).items():
        total = sum(p.numel() for p in params)
        trainable = 0
        for p in params:
            if not p.requires_grad:
                continue
            trained_rows = getattr(p, "_multimeditron_trained_rows", None)
            trainable += p[0].numel() * len(trained_rows) if trained_rows is not None else p.numel()
        rows.append(PartStatus(name, trainable, total))
    return rows


def format_table(rows: list[PartStatus], stage: str) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"stage {stage}: trainable parameters per part",
             f"{'part'.ljust(width)}  {'trainable':>12}  {'total':>12}  state"]
    for r in rows:
        lines.append(f"{r.name.ljust(width)}  {r.trainable:>12,}  {r.total:>12,}  {r.state}")
    trainable, total = sum(r.trainable for r in rows), sum(r.total for r in rows)
    lines.append(f"{'all'.ljust(width)}  {trainable:>12,}  {total:>12,}  {100 * trainable / max(total, 1):.2f}%")
    return "\n".join(lines)
