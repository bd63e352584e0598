"""The expert half on the VLM half's engine: HF Trainer (accelerate underneath) runs every adaptation loop, so
`torchrun`, DDP, DeepSpeed ZeRO / FSDP, bf16 / fp16, gradient accumulation, `report_to` (TensorBoard, W&B),
checkpoints with resume, evaluation each epoch and the best epoch by a metric all come from `training_args`.

What stays the expert half's own is passed in: the objective (an `nn.Module` whose `forward(**batch)` returns
`{"loss", "logits"?}`), its parameter groups (`lr_scale` for layer-wise decay, weight decay per group), a
warmup-in-epochs + cosine-to-`min_lr` schedule, and per-sample weights for balanced sampling.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from multimeditron.adaptation.errors import AdaptationError


@dataclass(frozen=True)
class Schedule:
    """Linear warmup over `warmup_epochs` (fractions allowed), then cosine from the peak rate to `min_lr` (None: no
    decay, the peak rate to the end, as the published gate and CLIP scripts run); each parameter group runs at the
    schedule times its `lr_scale` (timm's and RETFound's rule). `cooldown_epochs`: the
    cosine reaches `min_lr` that many epochs before the end and stays there (RETFound-Green's last 20 of 120)."""
    warmup_epochs: float = 1.0
    min_lr: float | None = 1e-6
    cooldown_epochs: float = 0.0


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random draws (augmentation, corruption) in one epoch: the same whatever the number
    of processes or data-loading workers, and the same after a resume."""
    return ((int(seed) * 1_000_003 + int(epoch)) * 10_000_019 + int(index)) % (2**63)


class EpochSampler(torch.utils.data.Sampler[int]):
    """The training order of one epoch from a generator seeded by (seed, epoch): a permutation, or with `weights`
    `len(weights)` indices drawn with replacement in proportion to them (balanced sampling). Every process draws the
    same sequence (accelerate hands each rank its own batches of it), so N processes see the batches one process
    with the N-fold batch sees; `set_epoch` also tells the dataset the epoch (its per-sample draws)."""

    def __init__(self, dataset: Any, seed: int, weights: torch.Tensor | None = None) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0
        self.weights = weights.double() if weights is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        if self.weights is None:
            yield from torch.randperm(len(self.dataset), generator=generator).tolist()
        else:
            yield from torch.multinomial(self.weights, len(self.weights), replacement=True,
                                         generator=generator).tolist()


# Validation metrics an epoch line shows after the selection score, when the objective reports them.
EPOCH_LINE_METRICS = ("auroc", "accuracy", "dice", "jaccard", "loss")


class _EpochLines:
    """One readable line per epoch, `[finetune] epoch 2/10: loss 0.4123, lr 0.000312; val score 0.8810, auroc
    0.9120, ...`, in place of HF's raw log dicts; written above the progress bar, so it stays on screen."""

    name = "train"
    training_bar: Any = None
    _pending: str | None = None

    def _write(self, text: str) -> None:
        (self.training_bar.write if self.training_bar is not None else print)(text)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        epoch = max(1, math.ceil(float(logs.get("epoch", state.epoch or 0)) - 1e-9))
        head = f"[{self.name}] epoch {epoch}/{float(args.num_train_epochs):g}"
        if "train_runtime" in logs:
            self._write(f"[{self.name}] trained {float(logs.get('epoch', 0)):g} epochs in "
                        f"{float(logs['train_runtime']):.1f} s")
        elif "loss" in logs:
            line = f"{head}: loss {float(logs['loss']):.4g}, lr {float(logs.get('learning_rate', 0)):.3g}"
            if str(args.eval_strategy) in ("no", "IntervalStrategy.NO"):
                self._write(line)
            else:
                self._pending = line  # completed by this epoch's evaluation
        elif any(k.startswith("eval_") for k in logs):
            shown = [f"score {float(logs['eval_score']):.4f}"] if "eval_score" in logs else []
            shown += [f"{m} {float(logs['eval_' + m]):.4g}" for m in EPOCH_LINE_METRICS if f"eval_{m}" in logs]
            self._write(f"{self._pending or head}; val {', '.join(shown)}")
            self._pending = None


class EpochProgress(_EpochLines, ProgressCallback):
    """HF's progress bar with `_EpochLines`."""


class EpochPrinter(_EpochLines, PrinterCallback):
    """`_EpochLines` without a progress bar (`disable_tqdm`)."""


class ExpertTrainer(Trainer):
    """HF Trainer with the expert half's optimiser groups, schedule and sampler, and one line per epoch."""

    def __init__(self, *args: Any, groups: list[dict[str, Any]], schedule: Schedule,
                 sample_weights: torch.Tensor | None = None, drop_last_train: bool = False, log_name: str = "train",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not any(g["params"] for g in groups):
            raise AdaptationError("nothing to train: no parameter requires a gradient")
        self.groups, self.schedule, self.sample_weights = groups, schedule, sample_weights
        self.drop_last_train = drop_last_train
        for stock, ours in ((ProgressCallback, EpochProgress), (PrinterCallback, EpochPrinter)):
            if self.pop_callback(stock) is not None:
                lines = ours()
                lines.name = log_name
                self.add_callback(lines)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """`drop_last_train` drops the last incomplete training batch (mixup pairs images within a batch); the
        evaluation batches keep every image."""
        if not self.drop_last_train or self.args.dataloader_drop_last:
            return super().get_train_dataloader()
        self.args.dataloader_drop_last = True
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = False

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The optimiser `training_args.optim` names (AdamW by default), over the objective's own groups: each
        starts at learning_rate x lr_scale, the rate the scheduler then scales."""
        if self.optimizer is None:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model or self.model)
            kwargs.pop("lr", None)
            base = self.args.learning_rate
            self.optimizer = optimizer_cls(
                [{**g, "lr": base * g.get("lr_scale", 1.0)} for g in self.groups], lr=base, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            from transformers import get_scheduler

            per_epoch = num_training_steps / max(self.args.num_train_epochs, 1e-9)
            cosine_end = max(1, num_training_steps - round(self.schedule.cooldown_epochs * per_epoch))
            warmup = min(round(self.schedule.warmup_epochs * per_epoch), max(cosine_end - 1, 0))
            min_lr = self.schedule.min_lr
            floor = 1.0 if min_lr is None else min_lr / self.args.learning_rate if self.args.learning_rate > 0 else 0.0
            self.lr_scheduler = get_scheduler(
                "cosine_with_min_lr", optimizer or self.optimizer, num_warmup_steps=warmup,
                num_training_steps=cosine_end, scheduler_specific_kwargs={"min_lr_rate": min(floor, 1.0)})
            if cosine_end < num_training_steps:  # the cooldown holds the floor (HF's cosine would rise again)
                self.lr_scheduler.lr_lambdas = [lambda step, f=f: f(min(step, cosine_end))
                                                for f in self.lr_scheduler.lr_lambdas]
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Training records also carry the objective's own scalars (`objective.training_scalars()`: a teacher's
        temperature, an EMA momentum), so `report_to` (TensorBoard) shows them beside the loss."""
        scalars = getattr(self.model, "training_scalars", None)
        if callable(scalars) and "loss" in logs:
            logs = {**logs, **scalars()}
        super().log(logs, *args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpochSampler(dataset, self.args.seed, self.sample_weights)


class FiniteLoss(TrainerCallback):
    """Stops with an error naming the epoch and step when the logged loss is not finite (a diverged run would
    otherwise save NaN weights as its best)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(f"the training loss is {loss} at step {state.global_step} "
                                     f"(epoch {state.epoch:.2f}); lower the learning rate or check the data")


def train_objective(objective: nn.Module, train_dataset: torch.utils.data.Dataset, args: Any,
                    groups: list[dict[str, Any]], schedule: Schedule, *,
                    eval_dataset: torch.utils.data.Dataset | None = None,
                    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
                    preprocess_logits_for_metrics: Callable | None = None,
                    sample_weights: torch.Tensor | None = None, resume: bool | str | None = None,
                    drop_last_train: bool = False, callbacks: list[TrainerCallback] | None = None,
                    log_name: str = "train") -> ExpertTrainer:
    """Train `objective` with `args` (`training.arguments.training_arguments`); returns the trainer (its
    `state.log_history`, and the best model loaded when `args.load_best_model_at_end`)."""
    if len(train_dataset) == 0:
        raise AdaptationError("no training images")
    trainer = ExpertTrainer(model=objective, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            compute_metrics=compute_metrics, preprocess_logits_for_metrics=preprocess_logits_for_metrics,
                            groups=groups, schedule=schedule, sample_weights=sample_weights,
                            drop_last_train=drop_last_train, callbacks=[FiniteLoss(), *(callbacks or [])],
                            log_name=log_name)
    if resume:
        from transformers.trainer_utils import get_last_checkpoint

        if resume is True and get_last_checkpoint(args.output_dir) is None:
            raise AdaptationError(f"--resume: {args.output_dir} holds no checkpoint-* folder to continue from")
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


def epoch_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trainer's log records merged into one record per epoch: the last training loss and learning rate logged in
    it, and its evaluation (`eval_*` keys without the prefix)."""
    epochs: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        epoch = max(1, math.ceil(entry["epoch"] - 1e-9))
        record = epochs.setdefault(epoch, {"epoch": epoch})
        for key, value in entry.items():
            if key == "loss":
                record["loss"] = value
            elif key in ("learning_rate", "grad_norm"):
                record[key] = value
            elif key.startswith("eval_") and key not in ("eval_runtime", "eval_samples_per_second",
                                                         "eval_steps_per_second"):
                record[key.removeprefix("eval_")] = value
    return [epochs[e] for e in sorted(epochs)]
