"""`MultiMeditronTrainer`: HF Trainer plus per-part learning rates, the loss averaging of the run config
(`loss_averaging`), the learned router's balance term added where the loss is reduced, throughput logging
(samples/s, tokens/s) and the router's usage and balance loss in the logs (summed over every process)."""
from __future__ import annotations

import time
from typing import Any

import torch
from transformers import Trainer

from multimeditron.training.stages import stage_parameters

LOSS_AVERAGING = ("global_tokens", "micro_batch")


class MultiMeditronTrainer(Trainer):
    def __init__(self, *args: Any, part_learning_rates: dict[str, float] | None = None,
                 loss_averaging: str = "global_tokens", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if loss_averaging not in LOSS_AVERAGING:
            raise ValueError(f"loss_averaging: {loss_averaging!r} is not one of {list(LOSS_AVERAGING)}")
        if loss_averaging == "micro_batch":
            # Without `num_items_in_batch` the model divides each micro-batch's summed token loss by its own token
            # count, and HF Trainer divides by the accumulation steps: the published averaging.
            self.model_accepts_loss_kwargs = False
        self.part_learning_rates = dict(part_learning_rates or {})
        self._window_start = time.perf_counter()
        self._window_samples: torch.Tensor | int = 0  # tensors on the device once a batch is counted
        self._window_tokens: torch.Tensor | int = 0
        # Since the last log, on the device: images per expert, images, summed balance term, batches with images.
        self._router_stats: torch.Tensor | None = None

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        # Decoupled weight decay would shrink every embedding row, also the rows the alignment stage keeps frozen
        # through a gradient mask; the LLM's input embeddings (found by identity, whatever the family names them)
        # are therefore never decayed.
        embeddings = model.get_input_embeddings().weight
        excluded = {name for name, param in model.named_parameters() if param is embeddings}
        return [name for name in super().get_decay_parameter_names(model) if name not in excluded]

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """HF's optimizer (class, weight-decay groups), each group split by part when parts have their own rate."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.part_learning_rates:
            part_of = {id(param): part
                       for part, params in stage_parameters(self.model if model is None else model).items()
                       for param in params}
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
        self._count_batch(inputs)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        aux = outputs.get("aux_loss") if isinstance(outputs, dict) else None
        if aux is not None and model.training:
            coef = self.model.config.router_aux_loss_coef
            if coef:
                loss = loss + coef * self._balance_weight(num_items_in_batch) * aux.to(loss.device, loss.dtype)
            self._record_routing(outputs["expert_mask"], aux)
        return (loss, outputs) if return_outputs else loss

    def _count_batch(self, inputs: dict[str, Any]) -> None:
        """Add the batch's samples and tokens to the window. The sums stay tensors on the batch's device: reading
        them (a host sync that stalls the GPU) happens once per log, not every step."""
        sample_ids = inputs.get("sample_ids")  # packed rows: sample index per token, -1 on padding
        if sample_ids is not None:
            real = sample_ids >= 0
            starts = real.clone()
            starts[:, 1:] &= sample_ids[:, 1:] != sample_ids[:, :-1]
            self._window_tokens = self._window_tokens + real.sum()
            self._window_samples = self._window_samples + starts.sum()
        else:
            mask = inputs["attention_mask"]
            self._window_tokens = self._window_tokens + mask.sum()
            self._window_samples = self._window_samples + mask.shape[0]

    def _balance_weight(self, num_items_in_batch: Any) -> float:
        """The balance term is a mean per micro-batch; the optimizer step takes its mean over micro-batches and
        processes (DDP and DeepSpeed average gradients over processes). When the language-model loss is already a
        mean over the whole accumulated batch (a token sum divided by `num_items_in_batch`), the Trainer does not
        divide by the accumulation steps, so the term is divided here; otherwise the Trainer divides the whole loss
        (the rule of `Trainer.training_step`)."""
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) \
                or self.compute_loss_func is not None
        return 1.0 / max(getattr(self, "current_gradient_accumulation_steps", 1), 1) if scaled else 1.0

    def _record_routing(self, expert_mask: torch.Tensor, balance: torch.Tensor) -> None:
        """Add one micro-batch's routing to the window. A batch without images (its mask has no expert set) adds
        neither images nor a balance value. Device tensors, read once per log: a per-step read would be a host
        sync that stalls the GPU."""
        mask = expert_mask.detach().float()
        images = mask.amax(dim=-1).sum()
        has_images = (images > 0).float()
        stats = torch.cat([mask.sum(dim=0), torch.stack([images, balance.detach().float() * has_images,
                                                         has_images])])
        self._router_stats = stats if self._router_stats is None else self._router_stats + stats

    def _routing_logs(self) -> dict[str, float]:
        """Fraction of images that ran each expert (sums to top_k) and the mean balance loss of the batches with
        images since the last log, over every process. Every process calls it at the same step (HF Trainer logs on
        all of them), so the sum across processes is a collective they all join."""
        if self._router_stats is None:
            return {}
        stats = self._router_stats
        if self.accelerator.num_processes > 1:
            stats = self.accelerator.reduce(stats, reduction="sum")
        self._router_stats = None
        *counts, images, balance, batches = stats.cpu().tolist()
        if not batches:
            return {}
        experts = self.model.vision.experts
        logs = {f"router_usage/{i}_{e.expert_id}": round(count / images, 4)
                for i, (e, count) in enumerate(zip(experts, counts))}
        logs["router_balance_loss"] = round(balance / batches, 5)
        return logs

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            world = max(self.args.world_size, 1)
            # Per-process counts times world size: every rank sees a same-sized share of the global batch.
            logs["samples_per_second"] = round(int(self._window_samples) * world / elapsed, 3)
            logs["tokens_per_second"] = round(int(self._window_tokens) * world / elapsed, 1)
            self._window_start, self._window_samples, self._window_tokens = time.perf_counter(), 0, 0
            logs.update(self._routing_logs())
        super().log(logs, *args, **kwargs)
