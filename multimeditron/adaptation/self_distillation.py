"""MerMED-FM's self-supervised pretraining of a ViT expert: memory-augmented multi-crop self-distillation (MaSSL,
"Learning from Memory", ICML 2024), as yangzhou12/MerMED `pretraining/main_mermed.py` runs it, on the engine.

What the published code does, and where it lives here (defaults: `recipes.MermedSection`):
- student = the expert (drop path 0.1, rising linearly over the blocks) + a projection head (3 layers: Linear
  2048, BatchNorm (`use_bn_in_head`), GELU, Linear 2048, BN, GELU, Linear 256; trunc-normal 0.02 init; output
  L2-normalised; `head.py`); the backbone's output is its global vector (CLS after the final norm for MerMED-FM).
- teacher = a copy of the student without drop path, never trained by gradient: after every optimiser step its
  parameters move to the student's by EMA, momentum cosine from `momentum_teacher` (0.9995) to 1 over the run
  (`EmaTeacher`, a TrainerCallback at `on_step_end`: the engine's optimiser step stays HF's own). Both stay in
  training mode (as the code: the teacher's BatchNorm uses its batch statistics).
- views: 2 global + `local_crops_number` local crops (`multicrop.py`); the student sees all, the teacher the 2
  global ones; each view's head output is scored against the memory bank (`memory_bank.py`); student scores /
  `student_temp` (0.1), teacher scores / the teacher temperature, linear from `warmup_teacher_temp` (0.04) to
  `teacher_temp` (0.07) over `warmup_teacher_temp_epochs` (10), then constant. No centering: MaSSL/MerMED sharpen
  by the temperature alone (DINO's center is absent from their code).
- loss: the cross-entropy inside random partitions of the bank (`memory_bank.partitioned_cross_entropy`);
  partitions drawn each step from a generator seeded by (seed, step): the same on every process.
- optimiser: AdamW over layer-decayed groups (`optim.param_groups`: block i of n at `layer_decay ** (n - i)`, the
  head at 1; 1-d parameters without weight decay), lr = `blr` x global batch / 256, linear warm-up 10 epochs then
  cosine to `min_lr`; weight decay cosine from 0.04 to `weight_decay_end` 0.4 on the decayed groups
  (`EmaTeacher.on_step_begin`); gradient clipping 1.0.
- KoLeo (weight 0 in MerMED's command) and last-layer freezing (MerMED's head has no last layer: the bank is the
  prototypes) are not implemented.
The output folder holds the teacher's backbone (the released MerMED-FM weights are the teacher's), or the
student's with `export: student`.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from multimeditron.adaptation.engine import epoch_history, sample_seed, train_objective
from multimeditron.adaptation.images import UnlabelledImages
from multimeditron.adaptation.memory_bank import (
    MemoryBank,
    partitioned_cross_entropy,
    random_partitions,
)
from multimeditron.adaptation.recipes import AdaptRecipe, MermedSection
from multimeditron.adaptation.trunk import set_drop_path, vit_trunk
from multimeditron.experts.adapted import save_adapted_expert
from multimeditron.experts.base import ExpertSpec, VisionExpert


def projection_head(in_dim: int, settings: MermedSection) -> nn.Sequential:
    """MaSSL's head: `head_layers` linear layers (GELU between, BatchNorm after each hidden one with
    `use_bn_in_head`) to `bottleneck_dim`; the caller L2-normalises the output."""
    from timm.layers import trunc_normal_

    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(settings.head_layers - 1):
        layers += [nn.Linear(width, settings.hidden_dim)]
        layers += [nn.BatchNorm1d(settings.hidden_dim)] if settings.use_bn_in_head else []
        layers += [nn.GELU()]
        width = settings.hidden_dim
    layers.append(nn.Linear(width, settings.bottleneck_dim))
    head = nn.Sequential(*layers)
    for module in head.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    return head


@contextlib.contextmanager
def any_input_size(trunk: nn.Module) -> Iterator[None]:
    """A timm ViT built for one input size takes crops of another (MerMED's 96-px local crops) inside the block:
    timm's dynamic-size path (position embeddings resampled to the crop's patch grid, as DINO's interpolation)."""
    from timm.layers import Format

    patch = trunk.patch_embed
    saved = (trunk.dynamic_img_size, patch.strict_img_size, patch.flatten, patch.output_fmt)
    trunk.dynamic_img_size, patch.strict_img_size, patch.flatten, patch.output_fmt = True, False, False, Format.NHWC
    try:
        yield
    finally:
        trunk.dynamic_img_size, patch.strict_img_size, patch.flatten, patch.output_fmt = saved


class MemorySelfDistillation(nn.Module):
    """The objective as a module: `forward(global_crops, local_crops, modality)` -> {"loss"}. `student` is the
    expert being trained; `teacher` its EMA copy; `bank` the memory bank. The schedules (teacher temperature,
    step) are set from outside each step (`EmaTeacher`)."""

    def __init__(self, expert: VisionExpert, settings: MermedSection, seed: int = 0) -> None:
        super().__init__()
        self.settings, self.seed = settings, int(seed)
        self.student = expert
        self.student_head = projection_head(int(vit_trunk(expert).num_features), settings)
        self.teacher = copy.deepcopy(expert).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        if settings.drop_path:
            set_drop_path(vit_trunk(self.student), settings.drop_path)
        self.bank = MemoryBank(settings.out_dim, settings.bottleneck_dim, seed=self.seed)
        self.teacher_temp = settings.warmup_teacher_temp
        self.step = 0
        self.scalars: dict[str, float] = {}

    def embed(self, expert: VisionExpert, head: nn.Module, crops: torch.Tensor) -> torch.Tensor:
        """Normalised crops (V*B, 3, S, S) -> L2-normalised head outputs (V*B, bottleneck_dim)."""
        trunk = vit_trunk(expert)
        size = crops.shape[-1]
        own = trunk.patch_embed.img_size
        context = contextlib.nullcontext() if own is None or tuple(own) == (size, size) else any_input_size(trunk)
        weight = next(trunk.parameters())
        with context:
            features = expert.pool_tokens(trunk.forward_features(crops.to(weight.dtype)))
        return nn.functional.normalize(head(features), dim=-1, eps=1e-6)

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor,
                modality: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = global_crops.shape[0]
        views = global_crops.transpose(0, 1).flatten(0, 1)  # view-major, as MerMED's list of crops
        student = self.embed(self.student, self.student_head, views)
        if local_crops.shape[1]:
            local = self.embed(self.student, self.student_head, local_crops.transpose(0, 1).flatten(0, 1))
            student = torch.cat([student, local])
        with torch.no_grad():
            teacher = self.embed(self.teacher, self.teacher_head, views)
        student_scores, valid = self.bank.scores(student, modality)
        teacher_scores, _ = self.bank.scores(teacher.detach(), modality)
        if self.training:  # after this step's scores: the second global view of the global batch
            self.bank.enqueue(teacher[batch:], modality)
        crops = student.shape[0] // batch
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.step, -2))
        partitions = random_partitions(self.bank.size, self.settings.partition_size, generator)
        loss, entropy = partitioned_cross_entropy(
            (student_scores / self.settings.student_temp).view(crops, batch, -1),
            (teacher_scores / self.teacher_temp).view(2, batch, -1), valid[:batch], partitions)
        self.scalars["teacher_entropy"] = float(entropy)
        return {"loss": loss}

    def training_scalars(self) -> dict[str, float]:
        """What the engine's `log` adds beside the loss (TensorBoard with `report_to: tensorboard`)."""
        return dict(self.scalars)


def cosine(start: float, end: float, step: int, total: int) -> float:
    """DINO's `cosine_scheduler` without warm-up: `start` at step 0, `end` at `total`."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


class EmaTeacher(TrainerCallback):
    """The per-iteration schedules of the published loop: before each step the teacher temperature and weight
    decay; after each optimiser step the EMA of the teacher (momentum cosine to 1) and the logged scalars."""

    def __init__(self, objective: MemorySelfDistillation, weight_decay: float) -> None:
        self.objective, self.weight_decay = objective, float(weight_decay)
        self.total, self.per_epoch = 1, 1.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.total = max(int(state.max_steps), 1)
        self.per_epoch = self.total / max(float(args.num_train_epochs), 1e-9)

    def teacher_temp(self, step: int) -> float:
        s = self.objective.settings
        warm = round(s.warmup_teacher_temp_epochs * self.per_epoch)
        if step >= warm:
            return s.teacher_temp
        # np.linspace(warmup_teacher_temp, teacher_temp, warm)[step]
        return s.warmup_teacher_temp + (s.teacher_temp - s.warmup_teacher_temp) * step / max(warm - 1, 1)

    def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        step = int(state.global_step)
        self.objective.step, self.objective.teacher_temp = step, self.teacher_temp(step)
        decay = cosine(self.weight_decay, self.objective.settings.weight_decay_end, step, self.total)
        for group in getattr(optimizer, "param_groups", []):
            if group.get("weight_decay", 0.0) != 0.0:  # MerMED: only the groups that decay follow the schedule
                group["weight_decay"] = decay
        self.objective.scalars.update(teacher_temp=self.objective.teacher_temp, weight_decay=decay)

    @torch.no_grad()
    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        momentum = 1 - (1 - self.objective.settings.momentum_teacher) * (
            1 + math.cos(math.pi * (int(state.global_step) - 1) / self.total)) / 2
        student = [*self.objective.student.parameters(), *self.objective.student_head.parameters()]
        teacher = [*self.objective.teacher.parameters(), *self.objective.teacher_head.parameters()]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, [p.detach() for p in student], alpha=1 - momentum)
        lr = [g["lr"] for g in getattr(optimizer, "param_groups", []) if g.get("lr_scale", 1.0) == 1.0]
        self.objective.scalars.update(momentum=momentum, **({"lr": lr[0]} if lr else {}))


def mermed_parts(expert: VisionExpert, recipe: AdaptRecipe, processes: int = 1,
                 ) -> tuple[MemorySelfDistillation, list[dict[str, Any]], dict[str, Any]]:
    """(objective, optimiser groups, TrainingArguments values) of a run."""
    from multimeditron.adaptation.optim import param_groups

    values = recipe.training_arguments(processes)
    objective = MemorySelfDistillation(expert.requires_grad_(True).train(), recipe.mermed, int(values["seed"]))
    groups = param_groups(objective.student, objective.student_head, float(values["weight_decay"]),
                          recipe.mermed.layer_decay)
    return objective, groups, values


def adapt_mermed(expert: VisionExpert, spec: ExpertSpec, recipe: AdaptRecipe, processes: int = 1,
                 loaded: Sequence[UnlabelledImages] | None = None) -> dict[str, Any]:
    """Pretrain `expert` with MerMED-FM's objective on the engine; writes `OUT/final/` (an adapted-expert folder of
    `spec`'s expert: the teacher's weights, or the student's), `OUT/checkpoint-*/` (resumable: the teacher and the
    memory bank are buffers and parameters of the objective, saved with it) and `OUT/history.json`."""
    from multimeditron.adaptation.multicrop import (
        MultiCropCanvases,
        load_source_images,
        local_crop_size,
        resolve_sources,
    )
    from multimeditron.training.arguments import training_arguments

    objective, groups, values = mermed_parts(expert, recipe, processes)
    args = training_arguments(values)
    if processes > 1 and torch.cuda.is_available() and recipe.mermed.use_bn_in_head:
        objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective)  # as the code: BN statistics of all ranks
    loaded = load_source_images(recipe.data) if loaded is None else loaded
    sources = resolve_sources(recipe.data, expert.mean, expert.std, loaded)
    patch = int(vit_trunk(expert).patch_embed.patch_size[0])
    local = local_crop_size(expert.image_size, patch, recipe.mermed.local_crop_size)
    dataset = MultiCropCanvases(sources, expert.image_size, local, recipe.mermed, args.seed)
    trainer = train_objective(objective, dataset, args, groups, recipe.schedule, resume=args.resume_from_checkpoint,
                              sample_weights=dataset.sample_weights(),
                              callbacks=[EmaTeacher(objective, float(values["weight_decay"]))], log_name="adapt")
    history = epoch_history(trainer.state.log_history)
    extra = {k: [e[k] for e in trainer.state.log_history if k in e] for k in ("teacher_entropy", "teacher_temp")}
    for record in history:  # the last value of each logged scalar of the epoch
        for entry in trainer.state.log_history:
            if "loss" in entry and max(1, math.ceil(entry.get("epoch", 0) - 1e-9)) == record["epoch"]:
                record.update({k: entry[k] for k in ("teacher_entropy", "teacher_temp", "momentum", "weight_decay")
                               if k in entry})
    out = Path(args.output_dir)
    final = out / "final"
    exported = objective.teacher if recipe.mermed.export == "teacher" else objective.student
    if trainer.is_world_process_zero():
        record = {"objective": recipe.objective, "exported": recipe.mermed.export, "recipe": recipe.to_dict(),
                  "images": len(dataset), "modalities": dataset.modalities, "history": history,
                  "refused": [r for images in loaded for r in images.refused]}
        save_adapted_expert(copy.deepcopy(exported).cpu(), spec, final, record)
        (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    losses = [h["loss"] for h in history if "loss" in h]
    return {"final": str(final), "spec": {**spec.to_dict(), "checkpoint": str(final)},
            "first_loss": losses[0] if losses else float("nan"), "last_loss": losses[-1] if losses else float("nan"),
            "epochs": len(history), "history": history, "scalars": extra}


def mermed_plan(recipe: AdaptRecipe, expert: VisionExpert, processes: int = 1,
                loaded: Sequence[UnlabelledImages] | None = None) -> str:
    """`adapt --objective mermed --dry-run`: the sources, the method's values and the optimiser groups."""
    from multimeditron.adaptation.multicrop import local_crop_size, resolve_sources
    from multimeditron.adaptation.plan import format_plan

    m = recipe.mermed
    _, groups, _ = mermed_parts(expert, recipe, processes)
    patch = int(vit_trunk(expert).patch_embed.patch_size[0])
    lines = [(f"data: {s.name}: {len(s.images)} unlabelled images, mean {tuple(round(v, 3) for v in s.mean)}, std "
              f"{tuple(round(v, 3) for v in s.std)}, weight {s.weight:g}"
              + (f", window {s.window.describe()}" if s.window else ""))
             for s in resolve_sources(recipe.data, expert.mean, expert.std, loaded)]
    lines += [(f"method: mermed (memory-augmented self-distillation): 2 global crops {expert.image_size} px scale "
              f"{m.global_crops_scale}, {m.local_crops_number} local crops "
              f"{local_crop_size(expert.image_size, patch, m.local_crop_size)} px scale {m.local_crops_scale}; "
              f"bank {m.out_dim} x {m.bottleneck_dim} in partitions of {m.partition_size}; temperatures student "
              f"{m.student_temp:g}, teacher {m.warmup_teacher_temp:g} -> {m.teacher_temp:g} over "
              f"{m.warmup_teacher_temp_epochs:g} epochs; EMA {m.momentum_teacher:g} -> 1; weight decay -> "
              f"{m.weight_decay_end:g}; layer decay {m.layer_decay:g}; drop path {m.drop_path:g}; exports the "
              f"{m.export}")]
    return format_plan("adapt", recipe, lines, expert, groups,
                       ["checkpoint-*/ (resumable)", "final/ (adapted expert)", "history.json"], processes)
