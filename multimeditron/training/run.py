"""One training run from a `RunConfig`: model, stage, datasets, HF Trainer (+DeepSpeed), final save."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from multimeditron.config import ConfigError, RunConfig
from multimeditron.training.arguments import is_main_process, training_arguments, world_size
from multimeditron.training.model_setup import load_run_model
from multimeditron.training.preflight import check_run
from multimeditron.training.stages import apply_stage, format_table

logger = logging.getLogger("multimeditron.train")


@dataclass
class RunResult:
    output_dir: Path
    final_dir: Path
    train_metrics: dict[str, float]
    bad_samples: dict[str, int]


def build_training_arguments(config: RunConfig, overrides: dict[str, Any] | None = None):
    args = {"report_to": "none", "remove_unused_columns": False, "save_strategy": "steps", "logging_steps": 10,
            "seed": config.seed, "data_seed": config.seed}
    args.update(config.training_args)
    args.update(overrides or {})
    if config.model.router == "learned" and world_size() > 1 and config.deepspeed is None:
        # Top-k routing leaves unrouted experts without gradients on some ranks.
        args.setdefault("ddp_find_unused_parameters", True)
    return training_arguments(args, config.deepspeed)


def prepare_model(config: RunConfig):
    """The run's model with LoRA injected and the stage applied, its processor, the per-part table and what each
    expert checkpoint load did."""
    model, processor, load_reports = load_run_model(config)
    if config.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        try:
            model.language_model = get_peft_model(model.language_model, LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                task_type="CAUSAL_LM"))
        except ValueError as error:  # PEFT: target modules not found in the model, ...
            raise ConfigError(f"lora.target_modules: {error}") from error
    table = apply_stage(model, config.stage, lora=config.lora is not None)
    return model, processor, table, load_reports


def save_final(trainer, model, processor, directory: Path) -> None:
    """The final model, LoRA merged, with tokenizer and processor, loadable by `from_pretrained` offline.

    Without LoRA, `trainer.save_model` gathers DeepSpeed/FSDP shards; LoRA adapters are merged on the main process.
    """
    from peft import PeftModel

    if isinstance(model.language_model, PeftModel):
        if trainer.is_world_process_zero():
            model.language_model = model.language_model.merge_and_unload()
            model.save_pretrained(directory)
            processor.save_pretrained(directory)
        return
    trainer.save_model(str(directory))
    if trainer.is_world_process_zero():
        processor.save_pretrained(directory)


def run_training(config: RunConfig, callbacks: list | None = None,
                 resume_from_checkpoint: str | bool | None = None) -> RunResult:
    from multimeditron.data import SFTCollator, build_sft_datasets
    from multimeditron.training.trainer import MultiMeditronTrainer

    check_run(config)  # every check that needs no model, before anything heavy is built
    from transformers import set_seed

    set_seed(config.seed)  # before the model is built: new parts (projectors, router, ...) initialise reproducibly
    # The model is built before the TrainingArguments: once DeepSpeed ZeRO-3 arguments exist, transformers builds
    # models under zero.Init, whose partitioned (empty) parameters the image-token set-up cannot edit.
    model, processor, table, load_reports = prepare_model(config)
    args = build_training_arguments(config)
    output_dir = Path(args.output_dir)
    if is_main_process():
        logger.info("\n%s", format_table(table, config.stage))
        if config.part_learning_rates is not None:
            logger.info(config.part_learning_rates.describe(args.learning_rate))
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "run_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        reports = {name: report.to_dict() for name, report in load_reports.items()}
        if reports:  # which entry, which keys dropped, what was resampled, per expert checkpoint
            (output_dir / "load_reports.json").write_text(json.dumps(reports, indent=2) + "\n")
    data = build_sft_datasets(config.data, processor, seed=config.seed)
    collator = SFTCollator(processor, packing=config.data.packing)
    trainer = MultiMeditronTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval, data_collator=collator,
        processing_class=processor, callbacks=callbacks,
        part_learning_rates=config.part_learning_rates.as_dict() if config.part_learning_rates else None,
        loss_averaging=config.loss_averaging,
    )
    resume = resume_from_checkpoint
    if resume is None:
        resume = config.training_args.get("resume_from_checkpoint")
    result = trainer.train(resume_from_checkpoint=resume)
    final_dir = output_dir / "final"
    save_final(trainer, model, processor, final_dir)
    data.collect_skipped()  # rows the DataLoader workers skipped (on_bad_sample: skip)
    if trainer.is_world_process_zero():
        if data.report.total:
            logger.warning("bad samples skipped during this run:\n%s", data.report.summary())
        (output_dir / "bad_samples.json").write_text(json.dumps(data.report.counts, indent=2) + "\n")
        (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
    return RunResult(output_dir, final_dir, dict(result.metrics), dict(data.report.counts))
