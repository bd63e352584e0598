"""The `train-expert --objective clip` run on the engine: build the model, score the held-out splits before and
after, keep the best epoch by val mean recall@1 in `OUT/best/` (an adapted-expert folder with the text tower beside
it), and the dry run's plan."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimeditron.adaptation.contrastive.data import CaptionDataset, CaptionSplit
from multimeditron.adaptation.contrastive.evaluation import evaluate_split, recall_metrics_fn
from multimeditron.adaptation.contrastive.model import ContrastiveObjective, build_clip_model, param_groups, text_state
from multimeditron.adaptation.contrastive.recipe import TEXT_FILE, ContrastiveRecipe
from multimeditron.adaptation.engine import epoch_history, train_objective
from multimeditron.experts.base import ExpertSpec, VisionExpert


def prepare_contrastive(recipe: ContrastiveRecipe) -> tuple[ContrastiveObjective, VisionExpert, ExpertSpec, Any,
                                                               int, tuple[str, str | None]]:
    from multimeditron.adaptation.experts import load_expert, spec_text

    seed = int(recipe.training_arguments()["seed"])
    expert, spec = load_expert(spec_text(recipe.expert.spec), tiny=recipe.expert.tiny, seed=seed)
    torch.manual_seed(seed)  # the tiny text tower's initialisation
    clip, tokenizer, context, source = build_clip_model(expert, spec, recipe.expert.tiny, recipe.contrastive)
    clip.requires_grad_(True)
    if not recipe.contrastive.train_vision:
        clip.visual.requires_grad_(False)
    if not recipe.contrastive.train_text:
        for name, p in clip.named_parameters():
            if not name.startswith("visual.") and name != "logit_scale":
                p.requires_grad_(False)
    return ContrastiveObjective(clip, expert), expert, spec, tokenizer, context, source


def _datasets(splits: dict[str, CaptionSplit], size: int, tokenizer: Any, context: int) -> dict[str, CaptionDataset]:
    return {name: CaptionDataset(split, size, tokenizer(split.captions, context_length=context))
            for name, split in splits.items()}


def train_contrastive(recipe: ContrastiveRecipe, splits: dict[str, CaptionSplit], *, processes: int = 1,
                      callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train on the engine, keep the best epoch by val mean recall@1 in `OUT/best/`; returns the run's record
    (held-out metrics before and after, history), also written as `OUT/results.json` on the main process."""
    from multimeditron.experts.adapted import save_adapted_expert
    from multimeditron.training.arguments import training_arguments

    args = training_arguments(recipe.training_arguments(processes))
    objective, expert, spec, tokenizer, context, (source, weights) = prepare_contrastive(recipe)
    data = _datasets(splits, expert.image_size, tokenizer, context)
    held_out = [s for s in ("val", "test") if s in data]
    template = recipe.contrastive.zero_shot_template
    before = {s: evaluate_split(objective, data[s], splits[s], tokenizer, context, template) for s in held_out} \
        if recipe.contrastive.eval_before else {}
    groups = param_groups(objective, args.weight_decay)
    trainer = train_objective(objective, data["train"], args, groups, recipe.schedule, eval_dataset=data["val"],
                              compute_metrics=recall_metrics_fn(splits["val"].captions),
                              resume=args.resume_from_checkpoint, callbacks=callbacks, log_name="train-expert")
    history = epoch_history(trainer.state.log_history)
    best = max(history, key=lambda h: h.get("score", -np.inf))["epoch"] if history else None
    after = {s: evaluate_split(objective, data[s], splits[s], tokenizer, context, template) for s in held_out}
    record = {"command": "train-expert", "objective": "clip", "name": recipe.expert_name(), "text": source,
              "text_pretrained": weights, "context_length": context, "epoch": best,
              "pairs": {s: len(p) for s, p in splits.items()}, "before": before, "after": after,
              "recipe": recipe.to_dict(), "history": history,
              "refused": [r for p in splits.values() for r in p.refused]}
    out = Path(args.output_dir)
    if trainer.is_world_process_zero():
        from safetensors.torch import save_file

        provenance = {"objective": "clip", "name": recipe.expert_name(), "text": source, "context_length": context,
                      "data": recipe.data.paths, "modalities": recipe.data.modalities, "epoch": best,
                      "val": after.get("val")}
        save_adapted_expert(expert, spec, out / "best", provenance)
        save_file(text_state(objective.clip), str(out / "best" / TEXT_FILE))
        (out / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def contrastive_plan(recipe: ContrastiveRecipe, splits: dict[str, CaptionSplit], processes: int = 1) -> str:
    from multimeditron.adaptation.plan import format_plan

    objective, expert, _, _, context, (source, weights) = prepare_contrastive(recipe)
    groups = param_groups(objective, float(recipe.training_arguments(processes)["weight_decay"]))
    sizes = ", ".join(f"{s} {len(p)}" for s, p in splits.items())
    modalities = sorted({m for p in splits.values() for m in p.modalities if m is not None})
    lines = [f"data: {', '.join(recipe.data.paths)}: image-caption pairs {sizes}; modalities "
             f"{modalities or '(no modality column)'}",
             f"objective: clip (open_clip ClipLoss); text tower {source}"
             + (f" from {weights}" if weights else "") + f", context {context} tokens; vision trains "
             f"{recipe.contrastive.train_vision}, text trains {recipe.contrastive.train_text}; best epoch by val "
             f"mean recall@1; expert name {recipe.expert_name()!r}"]
    return format_plan("train-expert", recipe, lines, expert, groups,
                       ["checkpoint-*/ (resumable)", f"best/ (adapted expert + {TEXT_FILE})", "results.json"],
                       processes)
