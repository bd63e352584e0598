"""The one place that turns a config's `training_args` mapping into HF `TrainingArguments`, for every command that
trains on the engine (`train`, `finetune`, `adapt`, `segment`): the machine's rules (no half precision without a GPU,
gloo for several CPU processes), DeepSpeed, and non-reentrant gradient checkpointing."""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

from multimeditron.config import without_half_precision_on_cpu

logger = logging.getLogger("multimeditron.train")


def world_size() -> int:
    """Processes of this launch (torchrun / deepspeed set WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def training_arguments(values: dict[str, Any], deepspeed: str | None = None):
    """`TrainingArguments(**values)` after the machine's rules; `values` are not modified."""
    from transformers import TrainingArguments

    args, dropped = without_half_precision_on_cpu(values)
    for flag in dropped:
        logger.warning("training_args.%s: no GPU here, training in fp32 on the CPU", flag)
    if not torch.cuda.is_available():
        if world_size() > 1:
            # accelerate fails in one process with gloo set ("Default process group has not been initialized").
            args.setdefault("ddp_backend", "gloo")
    if deepspeed is not None:
        args["deepspeed"] = deepspeed
    if args.get("gradient_checkpointing"):
        args.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    return TrainingArguments(**args)
