"""Building the model of a run: a new one from `model:` (LLM + experts), or an earlier stage's output (`base_model`),
its config built by `multimeditron.config.model_config` as the checks and the dry run build it."""
from __future__ import annotations

import importlib.util
import logging

import torch

from multimeditron.config import RunConfig, model_config
from multimeditron.experts.base import LoadReport
from multimeditron.model.builder import assemble_model, load_llm
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor
from multimeditron.model.tokens import add_image_tokens

logger = logging.getLogger(__name__)


def resolve_attn_implementation(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def training_dtype(training_args: dict) -> torch.dtype:
    if training_args.get("bf16"):
        return torch.bfloat16
    if training_args.get("fp16"):
        return torch.float16
    return torch.float32


def load_run_model(config: RunConfig,
                   ) -> tuple[MultiMeditronForCausalLM, MultiMeditronProcessor, dict[str, LoadReport]]:
    """The run's model, its processor and what each expert checkpoint load did (none for a `base_model`)."""
    section = config.model
    dtype = training_dtype(config.training_args)
    attn = resolve_attn_implementation(section.attn_implementation)
    if section.base_model is not None:
        model = MultiMeditronForCausalLM.from_pretrained(section.base_model, config=model_config(section),
                                                         dtype=dtype, attn_implementation=attn)
        processor = MultiMeditronProcessor.from_pretrained(section.base_model)
        logger.info("continuing from %s", section.base_model)
        return model, processor, {}
    language_model, tokenizer = load_llm(section.llm, dtype, attn, section.trust_remote_code)
    token_ids = add_image_tokens(tokenizer, language_model)
    return assemble_model(model_config(section, language_model.config, token_ids), language_model, tokenizer, attn)
