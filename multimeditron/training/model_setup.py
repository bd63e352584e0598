"""Building the model of a run: a new one from `model:` (LLM + experts), or an earlier stage's output (`base_model`)."""
from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

from multimeditron.config import ConfigError, ModelSection, RunConfig, written_keys
from multimeditron.experts.registry import spec_agrees
from multimeditron.model.builder import build_model
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor

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


def check_base_model_agrees(section: ModelSection, stored: dict) -> None:
    """Every architecture key written beside `base_model` must match the checkpoint, whatever its value (a key
    equal to its default counts too); the stored architecture wins."""
    for key in ModelSection.ARCHITECTURE_KEYS:
        if key not in written_keys(section):
            continue
        given = getattr(section, key)
        if key == "experts":
            stored_value = stored.get("experts") or []
            if len(given) == len(stored_value) and all(spec_agrees(g, s) for g, s in zip(given, stored_value)):
                continue
            given = [e.to_dict() for e in given]
        elif key == "router_classifier":
            given, stored_value = section.router_classifier_dict(), stored.get(key)
            if given is not None and stored_value is not None and all(stored_value.get(k) == v for k, v in given.items()):
                continue
        elif key == "llm":
            stored_value = stored.get("base_llm")
            if stored_value is None:  # a model saved without the record of its LLM: nothing to compare with
                continue
        else:
            stored_value = stored.get(key)
        if given == stored_value:
            continue
        raise ConfigError(
            f"model.{key}: {given!r} contradicts the architecture stored in model.base_model "
            f"({section.base_model}: {stored_value!r}); remove model.{key} or start a new model without base_model"
        )


def load_run_model(config: RunConfig) -> tuple[MultiMeditronForCausalLM, MultiMeditronProcessor]:
    section = config.model
    dtype = training_dtype(config.training_args)
    attn = resolve_attn_implementation(section.attn_implementation)
    if section.base_model is not None:
        from transformers import AutoConfig

        stored = AutoConfig.from_pretrained(section.base_model)
        check_base_model_agrees(section, stored.to_dict())
        model = MultiMeditronForCausalLM.from_pretrained(section.base_model, dtype=dtype, attn_implementation=attn)
        model.config.router_aux_loss_coef = section.router_aux_loss_coef  # a training setting, not architecture
        processor = MultiMeditronProcessor.from_pretrained(section.base_model)
        logger.info("continuing from %s", section.base_model)
        return model, processor
    return build_model(section.llm, dtype=dtype, attn_implementation=attn, trust_remote_code=section.trust_remote_code,
                       **architecture_kwargs(section))


def architecture_kwargs(section: ModelSection) -> dict[str, Any]:
    """The model section as `MultiMeditronConfig` (and `build_model`) keyword arguments: the one mapping the run
    and the dry run (`training.plan`) share, so neither can leave a key out."""
    return {
        "experts": [e.to_dict() for e in section.experts], "fusion": section.fusion,
        "projection": section.projection, "projector_type": section.projector_type, "router": section.router,
        "router_top_k": section.router_top_k, "router_classifier": section.router_classifier_dict(),
        "image_geometry": section.image_geometry, "generalist_index": section.generalist_index,
        "attn_heads": section.attn_heads, "attn_variant": section.attn_variant,
        "router_aux_loss_coef": section.router_aux_loss_coef,
        "attachment_token": section.attachment_token,
    }
