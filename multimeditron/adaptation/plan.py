"""The dry-run plan of an expert command: what would run (data, expert, trainable parameters per group with their
learning-rate scale, the global batch for the processes of this launch, the schedule) and what would be written."""
from __future__ import annotations

from typing import Any

from torch import nn

from multimeditron.experts.base import VisionExpert


def format_plan(command: str, recipe: Any, data_lines: list[str], expert: VisionExpert,
                groups: list[dict[str, Any]], outputs: list[str], processes: int = 1) -> str:
    values = recipe.training_arguments(processes)
    batch = recipe.global_batch(processes)
    per_device = values["per_device_train_batch_size"]
    accumulation = values.get("gradient_accumulation_steps", 1)
    lines = [f"[{command}] dry run: nothing is trained or written", *data_lines,
             f"expert: {expert.describe()}; input {expert.image_size} px, mean {tuple(round(m, 4) for m in expert.mean)}, "
             f"std {tuple(round(s, 4) for s in expert.std)}",
             f"global batch: {batch} = {per_device} per process x {accumulation} accumulation step(s) x "
             f"{processes} process(es)",
             f"learning rate {values['learning_rate']:.4g} (x each group's scale), warm-up "
             f"{recipe.schedule.warmup_epochs:g} of {values['num_train_epochs']:g} epochs, cosine to "
             f"{'no decay' if recipe.schedule.min_lr is None else format(recipe.schedule.min_lr, 'g')}; weight decay {values['weight_decay']:g}; "
             f"precision {'bf16' if values.get('bf16') else 'fp16' if values.get('fp16') else 'fp32'}"
             + (f"; DeepSpeed {values['deepspeed']}" if values.get("deepspeed") else ""),
             "trainable parameters per group:"]
    total = 0
    by_scale: dict[tuple[float, float], int] = {}
    for group in groups:
        count = sum(p.numel() for p in group["params"])
        key = (round(float(group.get("lr_scale", 1.0)), 6), float(group.get("weight_decay", 0.0)))
        by_scale[key] = by_scale.get(key, 0) + count
        total += count
    for (scale, decay), count in sorted(by_scale.items()):
        lines.append(f"  lr x {scale:<10g} weight decay {decay:<8g} {count:>12,} parameters")
    lines.append(f"  total trainable {total:,}")
    lines.append(f"writes: {values['output_dir']}/ " + ", ".join(outputs))
    return "\n".join(lines)


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
