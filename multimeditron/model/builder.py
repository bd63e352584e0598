"""Building a new MultiMeditron model and its processor from an LLM (hub id, folder or tiny preset) and experts."""
from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from multimeditron.experts.base import LoadReport
from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.image_processing import MultiMeditronImageProcessor
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor
from multimeditron.model.tokens import add_image_tokens
from multimeditron.presets import build_tiny_llm, build_tiny_tokenizer, is_tiny_preset


def load_llm(name_or_path: str, dtype: torch.dtype | str = "auto", attn_implementation: str = "sdpa",
             trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a tiny preset name, a local folder or a hub id."""
    if is_tiny_preset(name_or_path):
        return build_tiny_llm(name_or_path, attn_implementation), build_tiny_tokenizer(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    llm = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, attn_implementation=attn_implementation,
                                               trust_remote_code=trust_remote_code)
    return llm, tokenizer


def offline_llm_config(name: str) -> PretrainedConfig | None:
    """The LLM's config when it is available offline (tiny preset, local folder, local HF cache), else None."""
    if is_tiny_preset(name):
        return build_tiny_llm(name).config
    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return None


def build_model(llm: str, experts: list[dict[str, Any]], dtype: torch.dtype | str = "auto",
                attn_implementation: str = "sdpa", trust_remote_code: bool = False,
                **architecture: Any) -> tuple[MultiMeditronForCausalLM, MultiMeditronProcessor]:
    """A new model (pretrained LLM + experts loaded from their checkpoints, new parts initialised) and its processor.

    `architecture`: the other `MultiMeditronConfig` arguments (fusion, projection, router, ...), with its defaults.
    Each checkpoint load logs what it did; `assemble_model` also returns those reports.
    """
    language_model, tokenizer = load_llm(llm, dtype, attn_implementation, trust_remote_code)
    token_ids = add_image_tokens(tokenizer, language_model)
    config = MultiMeditronConfig(text_config=language_model.config, experts=experts, base_llm=llm, **token_ids,
                                 **architecture)
    model, processor, _ = assemble_model(config, language_model, tokenizer, attn_implementation)
    return model, processor


def assemble_model(config: MultiMeditronConfig, language_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   attn_implementation: str = "sdpa",
                   ) -> tuple[MultiMeditronForCausalLM, MultiMeditronProcessor, dict[str, LoadReport]]:
    """The model of `config` around a loaded LLM (whose tokenizer already has the image tokens), the experts' and
    the gate's checkpoints loaded, its processor, and what each expert checkpoint load did (by `expert[i] id`)."""
    config._attn_implementation = attn_implementation
    # Building the vision stack records each expert's resolved architecture in `config.experts[i]["options"]`
    # (VisionStack.__init__), so the saved model reloads without the expert checkpoints or the hub.
    model = MultiMeditronForCausalLM(config, language_model=language_model)
    load_reports = {}
    for index, spec in enumerate(model.config.experts):
        if spec.get("checkpoint"):
            load_reports[f"expert[{index}] {spec['id']}"] = model.vision.experts[index].load_checkpoint(spec["checkpoint"])
    classifier = model.vision.router.classifier
    if classifier is not None and classifier.spec.checkpoint:
        classifier.load_checkpoint(classifier.spec.checkpoint)
    model.to(language_model.dtype)
    return model, build_processor(model, tokenizer), load_reports


def build_processor(model: MultiMeditronForCausalLM, tokenizer: PreTrainedTokenizerBase) -> MultiMeditronProcessor:
    canvas = max(expert.image_size for expert in model.vision.experts)
    # the coarsest expert's patch, in canvas pixels: an image thinner than that is all but invisible to it
    grids = [expert.patch_grid for expert in model.vision.experts if expert.patch_grid]
    patch = canvas // min(grids) if grids else 1
    image_processor = MultiMeditronImageProcessor(image_size=canvas, patch_size=patch,
                                                  geometry=getattr(model.config, "image_geometry", "pad"))
    return MultiMeditronProcessor(image_processor, tokenizer, model.num_image_tokens, model.config.attachment_token)
