"""Training stages: the one place that sets `requires_grad` per part of the model, and the table that logs it.

- alignment: projector(s), fusion, router and the rows of the new special-token embeddings;
- vision_alignment: alignment + the vision experts (the LLM stays frozen);
- end2end: alignment + the LLM (or its LoRA adapters, and then still the new special-token rows);
- full: end2end + the vision experts;
- lm_only: the LLM alone.
A `pretrained` router's classifier learns only in the stages its `trainable_stages` name (published: `full`).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from multimeditron.choices import STAGES
from multimeditron.model.modeling import MultiMeditronForCausalLM

# What each training stage trains: "vision_glue" (projectors, fusion, router and, while the LLM is frozen, the new
# special-token rows of its embeddings), "experts", "llm" (or its LoRA adapters).
STAGE_PARTS: dict[str, frozenset[str]] = {
    "alignment": frozenset({"vision_glue"}),
    "vision_alignment": frozenset({"vision_glue", "experts"}),
    "end2end": frozenset({"vision_glue", "llm"}),
    "full": frozenset({"vision_glue", "experts", "llm"}),
    "lm_only": frozenset({"llm"}),
}
assert tuple(STAGE_PARTS) == STAGES, "the stage names of multimeditron.choices.Stage, in the same order"


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
    """Parameters grouped as the logged table shows them: the vision stack's own parts (`VisionStack.part_modules`,
    those with parameters), the LLM's input embeddings, the rest of the LLM."""
    parts = {name: list(module.parameters()) for name, module in model.vision.part_modules().items()}
    parts = {name: params for name, params in parts.items() if params}
    embeddings = model.get_input_embeddings().weight
    parts["llm input embeddings"] = [embeddings]
    parts["llm"] = [p for p in model.language_model.parameters() if p is not embeddings]
    return parts


def new_token_ids(model: MultiMeditronForCausalLM) -> list[int]:
    config = model.config
    return [config.image_start_token_id, config.image_end_token_id]


def stage_parameters(model: MultiMeditronForCausalLM) -> dict[str, list[nn.Parameter]]:
    """Every parameter in exactly one `STAGE_PARTS` part: `experts`; `vision_glue`, the stack's other parts and,
    while only the new special-token rows of the LLM's input embeddings learn, those embeddings; `llm`, the rest of
    the LLM. A parameter outside the vision stack and the LLM is an error naming it."""
    vision = model.vision
    embeddings = model.get_input_embeddings().weight
    rows_only = _row_mask(embeddings) is not None
    parts: dict[str, list[nn.Parameter]] = {"vision_glue": [], "experts": [], "llm": []}
    for module in vision.part_modules().values():
        is_expert = any(module is expert for expert in vision.experts)
        parts["experts" if is_expert else "vision_glue"] += list(module.parameters())
    for param in model.language_model.parameters():
        parts["vision_glue" if param is embeddings and rows_only else "llm"].append(param)
    claimed = {id(p) for params in parts.values() for p in params}
    unclaimed = [name for name, p in model.named_parameters() if id(p) not in claimed]
    if unclaimed:
        raise ValueError(f"parameters outside the vision stack's parts and the LLM belong to no training part: "
                         f"{unclaimed[:5]}{' ...' if len(unclaimed) > 5 else ''}; add their module to "
                         "VisionStack.part_modules or the language model")
    return parts


def apply_stage(model: MultiMeditronForCausalLM, stage: str, lora: bool = False) -> list[PartStatus]:
    """Set requires_grad for `stage`; with `lora`, the LLM's trainable part is its adapters (already injected)."""
    if stage not in STAGE_PARTS:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {list(STAGE_PARTS)}")
    parts = STAGE_PARTS[stage]
    embeddings = model.get_input_embeddings().weight
    _limit_embedding_rows(embeddings, None)  # an earlier stage's row mask: the embeddings are the LLM's again
    model.requires_grad_(False)
    for part, params in stage_parameters(model).items():
        if part in parts and not (part == "llm" and lora):
            for param in params:
                param.requires_grad_(True)
    if "llm" in parts and lora:
        for name, param in model.language_model.named_parameters():
            param.requires_grad_("lora_" in name)
    # A pretrained router's classifier learns only in the stages its config names (published: `full`).
    classifier = model.vision.router.classifier
    router_trains = classifier is None or stage in classifier.spec.trainable_stages
    model.vision.router.requires_grad_(router_trains and "vision_glue" in parts)
    model.vision.router.train(model.vision.router.training)  # a frozen classifier goes (back) to eval mode
    # With the LLM frozen, or trained through LoRA adapters (which leave the embeddings frozen), the image
    # start/end tokens' embedding rows still have to learn (they are new); they are then part of vision_glue.
    if "vision_glue" in parts and ("llm" not in parts or lora):
        _limit_embedding_rows(embeddings, new_token_ids(model))
    return trainable_table(model)


@dataclass
class RowMask:
    """The embedding rows that learn while the rest of the matrix stays frozen, and the gradient hook that zeroes
    every other row's gradient."""

    weight: weakref.ref  # the embedding matrix (a weak reference: the mask does not keep a model alive)
    rows: list[int]
    hook: torch.utils.hooks.RemovableHandle


# The row masks in force, by the id of the embedding matrix they apply to: held here, by the stage logic, not on the
# tensor (a dict keyed by the tensor itself would compare tensors elementwise).
_ROW_MASKS: dict[int, RowMask] = {}


def _row_mask(weight: nn.Parameter) -> RowMask | None:
    mask = _ROW_MASKS.get(id(weight))
    return mask if mask is not None and mask.weight() is weight else None  # an id is reused after a tensor dies


def _limit_embedding_rows(weight: nn.Parameter, rows: list[int] | None) -> None:
    """In alignment only the new tokens' rows learn: the gradient of every other row is zeroed."""
    previous = _row_mask(weight)
    if previous is not None:
        previous.hook.remove()
    _ROW_MASKS.pop(id(weight), None)
    if rows is None:
        return
    weight.requires_grad_(True)
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[rows] = 1
    hook = weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))
    _ROW_MASKS[id(weight)] = RowMask(weakref.ref(weight), list(rows), hook)


def trainable_table(model: MultiMeditronForCausalLM) -> list[PartStatus]:
    rows = []
    for name, params in model_parts(model).items():
        total = sum(p.numel() for p in params)
        trainable = 0
        for p in params:
            if not p.requires_grad:
                continue
            row_mask = _row_mask(p)
            trainable += p[0].numel() * len(row_mask.rows) if row_mask is not None else p.numel()
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
