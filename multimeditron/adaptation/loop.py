"""The small training loop every adaptation shares: seeded epochs, AdamW groups with warmup + cosine, bf16 autocast
on CUDA, a progress bar, an end-of-epoch hook (validation, best checkpoint) and resumable state in `OUT/last/`.

Smaller than HF Trainer for these models: no tokenizer, no collator, one loss function, and resume that
reproduces the uninterrupted weights exactly (see `run_state`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from multimeditron.adaptation.errors import AdaptationError, AdaptDataError
from multimeditron.adaptation.optim import build_optimizer, build_scheduler
from multimeditron.adaptation.run_state import has_state, load_state, save_state, seed_epoch


@dataclass
class LoopSettings:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3  # the rate at scale 1 (head / last layer); groups carry their own `lr_scale`
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "cpu"
    bf16: bool | None = None  # None: on CUDA only
    num_workers: int = 0
    progress: bool | None = None  # None: a bar when attached to a terminal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]
EpochHook = Callable[[int, dict[str, Any], list[dict[str, Any]]], dict[str, Any] | None]


def run_epochs(module: nn.Module, dataset: torch.utils.data.Dataset, groups: list[dict[str, Any]],
               loss_fn: LossFn, settings: LoopSettings, out_dir: str | Path, *, resume: bool = False,
               sample_weights: torch.Tensor | None = None, on_epoch_end: EpochHook | None = None,
               desc: str = "train", drop_last: bool = False) -> list[dict[str, Any]]:
    """Train `module` for `settings.epochs` epochs; returns the per-epoch history (loss, lr, what the hook added).

    `sample_weights` draw each epoch's batches with replacement in proportion to the weights (balanced sampling).
    With `resume`, continues from `out_dir/last` when it holds a state (an error when it does not).
    """
    device = torch.device(settings.device)
    module.to(device)
    optimizer = build_optimizer(groups, settings.lr)
    if len(dataset) == 0:
        raise AdaptDataError(f"{desc}: no training images")
    batches = len(dataset) // settings.batch_size if drop_last else math.ceil(len(dataset) / settings.batch_size)
    if batches == 0:
        raise AdaptDataError(f"{desc}: {len(dataset)} images are fewer than one batch of {settings.batch_size}")
    total = settings.epochs * batches
    scheduler = build_scheduler(optimizer, total, round(settings.warmup_epochs * batches), settings.min_lr)
    last = Path(out_dir) / "last"
    history: list[dict[str, Any]] = []
    start = 0
    if resume:
        if not has_state(last):
            raise AdaptationError(f"--resume: {last} holds no run state to continue from")
        progress = load_state(last, module, optimizer)
        start, history = int(progress["epochs_done"]), list(progress["history"])
    bf16 = settings.bf16 if settings.bf16 is not None else device.type == "cuda"
    trainable = [p for g in groups for p in g["params"]]
    for epoch in range(start, settings.epochs):
        generator = seed_epoch(settings.seed, epoch)
        sampler = (torch.utils.data.WeightedRandomSampler(sample_weights, len(dataset), generator=generator)
                   if sample_weights is not None else None)
        loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=sampler is None,
                                             sampler=sampler, generator=generator, drop_last=drop_last,
                                             num_workers=settings.num_workers)
        module.train()
        losses, began = [], time.perf_counter()
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{settings.epochs}", unit="batch",
                   disable=None if settings.progress is None else not settings.progress)
        for i, batch in enumerate(bar):
            scheduler.step_update(epoch * batches + i + 1)
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(module, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss is {loss.item()} at epoch {epoch + 1}, batch {i + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": sum(losses) / len(losses),
                                  "lr": max(g["lr"] for g in optimizer.param_groups),
                                  "seconds": round(time.perf_counter() - began, 2)}
        if on_epoch_end is not None:
            module.eval()
            record.update(on_epoch_end(epoch, record, history) or {})
        history.append(record)
        save_state(last, module, optimizer, {"epochs_done": epoch + 1, "history": history,
                                             "settings": settings.to_dict()})
    return history
