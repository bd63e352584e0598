"""`train --dry-run`: validate the config and print the plan without loading weights or data."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from multimeditron.config import RunConfig, model_config
from multimeditron.hub_ids import looks_like_hub_id
from multimeditron.model.builder import offline_llm_config
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.training.arguments import world_size
from multimeditron.training.preflight import path_problems
from multimeditron.training.stages import apply_stage, format_table


def meta_model(config: RunConfig) -> MultiMeditronForCausalLM | None:
    """The run's model on the meta device (no memory, no weights), its config built by the run's own function
    (`multimeditron.config.model_config`; placeholder ids for the special tokens), or None when the LLM config is not
    available offline."""
    section = config.model
    if section.base_model is not None:
        if not (Path(section.base_model) / "config.json").is_file():
            return None
        built = model_config(section)
    else:
        text_config = offline_llm_config(section.llm)
        if text_config is None:
            return None
        vocab = text_config.vocab_size
        built = model_config(section, text_config, {"image_token_id": vocab - 3, "image_start_token_id": vocab - 2,
                                                    "image_end_token_id": vocab - 1})
    built._attn_implementation = "sdpa"
    with torch.device("meta"):
        return MultiMeditronForCausalLM(built)


def _dataset_line(entry) -> str:
    path = entry.path
    if os.path.exists(path):
        where = "local"
    elif looks_like_hub_id(path):
        where = "hub id or missing"
    else:
        where = "MISSING locally"
    cap = f", at most {entry.max_samples} rows" if entry.max_samples else ""
    return f"  - {path} (weight {entry.weight}{cap}; {where})"


# What cookbook/training_template.sh launches when NNODES / GPUS_PER_NODE are not set (its own defaults; tested).
TEMPLATE_NODES = 4
TEMPLATE_GPUS_PER_NODE = 4


def sbatch_template_processes() -> tuple[int, int]:
    """(nodes, processes per node) the sbatch template launches: $NNODES and $GPUS_PER_NODE, else its defaults."""
    return (int(os.environ.get("NNODES") or TEMPLATE_NODES),
            int(os.environ.get("GPUS_PER_NODE") or TEMPLATE_GPUS_PER_NODE))


def format_plan(config: RunConfig) -> str:
    section, data, args = config.model, config.data, config.training_args
    lines = ["MultiMeditron training plan (dry run: nothing loaded)", f"stage: {config.stage}"]
    if section.base_model is not None:
        exists = "found" if Path(section.base_model).is_dir() else "not found yet (an earlier stage writes it)"
        lines.append(f"model: continue from {section.base_model} ({exists}); its stored architecture is used")
    else:
        arch = model_config(section)  # the architecture as the model takes it (e.g. generalist_index counted)
        lines.append(f"model: LLM {section.llm}; fusion {arch.fusion}"
                     + (f" ({arch.attn_variant} layer, {arch.attn_heads} heads)" if arch.fusion == "attn"
                        else "") + f"; projection {arch.projection} "
                     f"({arch.projector_type}); router {arch.router}"
                     + (f" top-{arch.router_top_k}" if arch.router_top_k else "")
                     + (f" (classifier {section.router_classifier_dict()})" if section.router_classifier else "")
                     + f"; image geometry {arch.image_geometry}"
                     + (f"; generalist expert[{arch.generalist_index}]" if len(arch.experts) > 1 else "")
                     + (f"; router balance loss x {arch.router_aux_loss_coef}" if arch.router == "learned"
                        else "")
                     + f"; image placeholder {arch.attachment_token}")
        for i, expert in enumerate(section.experts):
            lines.append(f"  expert[{i}] {expert.id}" + (" (tiny)" if expert.tiny else "")
                         + f" checkpoint={expert.checkpoint or 'random init'}"
                         + (f" options={expert.options}" if expert.options else ""))
    if config.part_learning_rates is not None:
        from transformers import TrainingArguments

        default_rate = config.training_args.get("learning_rate", TrainingArguments.learning_rate)
        lines.append(config.part_learning_rates.describe(default_rate))
    if config.lora is not None:
        lines.append(f"lora: r={config.lora.r} alpha={config.lora.alpha} targets={config.lora.target_modules}")
    model = meta_model(config)
    if model is None:
        lines.append("parameters: the LLM config is not available offline; per-part counts appear at the start "
                     "of the real run")
    else:
        if config.lora is None:
            lines.append(format_table(apply_stage(model, config.stage), config.stage))
        else:
            lines.append("parameters per part (before LoRA injection):")
            lines.append(format_table(apply_stage(model, config.stage), config.stage))
        lines.append(f"image tokens per image: {model.num_image_tokens}")
    lines.append(f"data: max_sequence_length {data.max_sequence_length}; packing {data.packing}; "
                 f"on_bad_sample {data.on_bad_sample} (max refused share {data.max_bad_sample_share:g}); "
                 f"placeholder {data.attachment_token}; captions {data.caption_format}")
    lines.append(" train:")
    lines += [_dataset_line(e) for e in data.train]
    if data.eval:
        lines.append(" eval:")
        lines += [_dataset_line(e) for e in data.eval]
    per_device = args.get("per_device_train_batch_size", 8)
    accumulation = args.get("gradient_accumulation_steps", 1)
    world = world_size()
    lines.append(f"effective batch: {per_device} per device x {accumulation} accumulation x {world} process(es) "
                 f"= {per_device * accumulation * world}")
    nodes, gpus = sbatch_template_processes()
    lines.append(f"global batch under cookbook/training_template.sh: {per_device} x {accumulation} x {nodes} node(s) "
                 f"x {gpus} process(es) per node = {per_device * accumulation * nodes * gpus} (NNODES={nodes}, "
                 f"GPUS_PER_NODE={gpus})")
    lines.append(_optimisation_line(args))
    lines.append(f"loss averaging: {config.loss_averaging} ("
                 + ("one token mean over the global batch" if config.loss_averaging == "global_tokens"
                    else "a token mean per micro-batch, averaged over accumulation steps, as published") + ")")
    lines.append(f"deepspeed: {config.deepspeed or 'off'}; output: {args['output_dir']}")
    problems = path_problems(config)
    lines.append("paths: all found" if not problems else "paths the real run will refuse unless they exist by then:")
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)


def _optimisation_line(args: dict) -> str:
    """Learning rate, schedule, warmup, epochs, weight decay, clipping: with the batch, what a recipe is."""
    from transformers import TrainingArguments

    def get(key: str) -> object:
        return args.get(key, getattr(TrainingArguments, key))

    schedule = f"{get('lr_scheduler_type')}" + (f" {args['lr_scheduler_kwargs']}" if args.get("lr_scheduler_kwargs")
                                                  else "")
    length = f"max_steps {args['max_steps']}" if args.get("max_steps", -1) > 0 else f"epochs {get('num_train_epochs')}"
    return (f"optimisation: learning rate {get('learning_rate')}; schedule {schedule}; warmup "
            f"{args.get('warmup_steps', args.get('warmup_ratio', 0))}; {length}; weight decay {get('weight_decay')}; "
            f"max grad norm {get('max_grad_norm')}")
