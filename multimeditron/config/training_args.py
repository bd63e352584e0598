"""`training_args` as every command on the engine takes them: the machine's rule on half precision (shared with
`training.arguments`, which builds the real TrainingArguments) and the check that names the key at fault."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from multimeditron.config.typed import ConfigError, coerce

HALF_PRECISION_FLAGS = ("bf16", "fp16", "tf32")


def without_half_precision_on_cpu(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`values` as this machine runs them, and the half-precision flags turned off: without a GPU there is no half
    precision (`use_cpu`, fp32); `values` are not modified."""
    import torch

    args = dict(values)
    if torch.cuda.is_available():
        return args, []
    args["use_cpu"] = True
    dropped = [flag for flag in HALF_PRECISION_FLAGS if args.get(flag)]
    for flag in HALF_PRECISION_FLAGS:
        args[flag] = False
    return args, dropped


def _validating_training_arguments() -> type:
    """TrainingArguments that validate without setting up devices: the real `__post_init__` reads `self.device`,
    which initialises accelerate's process-wide state (and the process group under torchrun) with these
    arguments; the run's own TrainingArguments must be the first to do that."""
    import torch
    from transformers import TrainingArguments

    class ValidatingTrainingArguments(TrainingArguments):
        @property
        def device(self) -> torch.device:
            return torch.device("cpu")

        @property
        def n_gpu(self) -> int:
            return 0

    return ValidatingTrainingArguments


def check_training_args(args: dict[str, Any]) -> None:
    """Unknown keys, then each value's type, then `TrainingArguments` itself, built key by key so that its own
    errors (an unknown scheduler or optimizer, incompatible options) name the key that introduced them."""
    from transformers import TrainingArguments

    valid = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    unknown = sorted(set(args) - valid)
    if unknown:
        raise ConfigError(f"training_args.{unknown[0]}: not a transformers TrainingArguments field"
                          + (f" (also unknown: {unknown[1:]})" if len(unknown) > 1 else ""))
    if "output_dir" not in args:
        raise ConfigError("training_args.output_dir: required (where checkpoints and the final model go)")
    if "deepspeed" in args:
        raise ConfigError("training_args.deepspeed: give the DeepSpeed JSON as the top-level `deepspeed` key")
    hints = typing.get_type_hints(TrainingArguments)
    for key, value in args.items():
        if key == "resume_from_checkpoint" and isinstance(value, bool):
            continue  # true = the last checkpoint in output_dir, as Trainer.train(resume_from_checkpoint=True)
        coerce(hints[key], value, f"training_args.{key}")
    validating = _validating_training_arguments()
    built: dict[str, Any] = {"report_to": "none"}
    for key in args:
        built[key] = args[key]
        machine, _ = without_half_precision_on_cpu(built)
        try:
            validating(**machine)
        except Exception as error:  # TrainingArguments raises ValueError, TypeError, ImportError...
            raise ConfigError(f"training_args.{key}: {error}") from error
