"""`MultiMeditronTrainer`: HF Trainer plus per-part learning rates, throughput logging (samples/s, tokens/s) and the
bad-sample report."""
from __future__ import annotations

import time
from typing import Any

import torch
from transformers import Trainer

from multimeditron.data.collator import REPORT_KEY
from multimeditron.training.stages import stage_part_modules


class MultiMeditronTrainer(Trainer):
    def __init__(self, *args: Any, bad_sample_report: Any = None,
                 part_learning_rates: dict[str, float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bad_sample_report = bad_sample_report
        self.part_learning_rates = dict(part_learning_rates or {})
        self._window_start = time.perf_counter()
        self._window_samples = 0
        self._window_tokens = 0

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        # Decoupled weight decay would shrink every embedding row, also the rows the alignment stage keeps frozen
        # through a gradient mask; embeddings are therefore never decayed.
        names = super().get_decay_parameter_names(model)
        return [n for n in names if "embed_tokens" not in n and "embeddings.word" not in n]

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """HF's optimizer (class, weight-decay groups), each group split by part when parts have their own rate."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.part_learning_rates:
            part_of = {id(param): part
                       for part, modules in stage_part_modules(self.model if model is None else model).items()
                       for module in modules for param in module.parameters()}
            groups = []
            for group in optimizer.param_groups:
                by_part: dict[str, list[torch.nn.Parameter]] = {}
                for param in group["params"]:
                    by_part.setdefault(part_of[id(param)], []).append(param)
                for part, params in by_part.items():
                    groups.append({**group, "params": params,
                                   "lr": self.part_learning_rates.get(part, group["lr"])})
            optimizer.param_groups = groups  # no state exists yet: the groups can still be re-cut
        return optimizer

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        skipped = inputs.pop(REPORT_KEY, None)  # rows skipped while decoding images in workers
        if skipped and self.bad_sample_report is not None:
            for reason, dataset, row in skipped:
                self.bad_sample_report.add(reason, dataset, row)
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            self._window_tokens += int(mask.sum())
            self._window_samples += int(mask.shape[0])
        else:
            position_ids = inputs["position_ids"]
            self._window_tokens += int(inputs["input_ids"].numel())
            self._window_samples += int((position_ids == 0).sum())
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            world = max(self.args.world_size, 1)
            # Per-process counts times world size: every rank sees a same-sized share of the global batch.
            logs["samples_per_second"] = round(self._window_samples * world / elapsed, 3)
            logs["tokens_per_second"] = round(self._window_tokens * world / elapsed, 1)
            self._window_start, self._window_samples, self._window_tokens = time.perf_counter(), 0, 0
        super().log(logs, *args, **kwargs)
