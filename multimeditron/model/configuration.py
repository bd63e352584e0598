"""`MultiMeditronConfig`: the architecture of a MultiMeditron model (LLM config, experts, fusion, projection, router).

The one home of the architecture's defaults and checks, as `LlavaConfig` is Llava's: the run config's `model:`
section takes its keys and defaults from here (`SECTION_KEYS`, `ARCHITECTURE_DEFAULTS`) and is validated by building
this config. The number of image tokens is derived from the experts when the model is built.
"""
from __future__ import annotations

import inspect
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from multimeditron.choices import (  # re-exported: the model's own names for the shared choices
    ATTN_VARIANTS,
    DEFAULT_ATTACHMENT_TOKEN,
    FUSIONS,
    IMAGE_GEOMETRIES,
    PROJECTIONS,
    PROJECTOR_TYPES,
    ROUTERS,
)
from multimeditron.experts.base import ExpertSpec

IMAGE_TOKEN = "<|image_pad|>"
IMAGE_START_TOKEN = "<|image_start|>"
IMAGE_END_TOKEN = "<|image_end|>"


def counted_from_the_start(index: int, num_experts: int) -> int:
    """An expert index; a negative one counts from the end, as the published `generalist_idx: -1` (the last)."""
    return index + num_experts if -num_experts <= index < 0 else index


class MultiMeditronConfig(PretrainedConfig):
    """Configuration of `MultiMeditronForCausalLM`.

    Args:
        text_config: the wrapped causal LM's config (a `PretrainedConfig` or its dict with `model_type`).
        experts: list of expert specs (`{"id": ..., "checkpoint": ..., "tiny": ..., ...}`, see `ExpertSpec`).
        fusion: `none` (one expert), `avg`, `cat` or `attn` (generalist tokens cross-attend to the others).
        projection: `shared` (one projector after fusion) or `per_expert` (one projector per expert, fusion in
            LLM space).
        projector_type: `mlp2x_gelu` (LLaVA-1.5), `linear`, or `mlp3x_gelu` (the published MultiMeditron projector:
            3 linear layers with GELU, N(0, 0.02) init).
        router: `uniform` (every expert, equal weights), `learned` (a gate on the generalist's pooled feature) or
            `pretrained` (an image classifier's class probabilities mapped to the experts, the published gate).
        router_top_k: experts run per image with the learned or pretrained router (default: all).
        router_classifier: the pretrained router's classifier (`GateClassifierSpec`: class_to_expert, checkpoint,
            arch, options, image_size, mean, std, trainable_stages).
        image_geometry: how the processor puts an image on the square canvas: `pad` (long side resized, short side
            padded) or `center_crop` (short side resized, centre cropped: the CLIP processors', as published).
        generalist_index: which expert is the generalist (query of `attn`, input of the learned gate; its token
            grid is the one every other expert is resampled to).
        attn_heads: heads of the `attn` fusion.
        attn_variant: the `attn` fusion's layer: `residual` (LayerNorms, nn.MultiheadAttention, zero-initialised
            output and a residual; router weights scale the values) or `published` (the published MultiMeditron
            cross-attention: generalist queries over every expert's tokens scaled by softmax(router weights), q/k/v/out
            linear layers with bias, dropout 0.1, no LayerNorm, no residual; needs every expert to run).
        router_aux_loss_coef: weight of the learned router's load-balancing loss in the training loss (0 = off).
        image_token_id / image_start_token_id / image_end_token_id: ids of the special tokens in the tokenizer.
        attachment_token: the placeholder users write in text where an image goes.
        base_llm: the LLM (hub id, folder or preset) the model was built from, for the record.
    """

    model_type = "multimeditron"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config: PretrainedConfig | dict[str, Any] | None = None,
        experts: list[dict[str, Any]] | None = None,
        fusion: str = "none",
        projection: str = "shared",
        projector_type: str = "mlp2x_gelu",
        router: str = "uniform",
        router_top_k: int | None = None,
        router_classifier: dict[str, Any] | None = None,
        image_geometry: str = "pad",
        generalist_index: int = 0,
        attn_heads: int = 8,
        attn_variant: str = "residual",
        router_aux_loss_coef: float = 0.01,
        image_token_id: int | None = None,
        image_start_token_id: int | None = None,
        image_end_token_id: int | None = None,
        attachment_token: str = DEFAULT_ATTACHMENT_TOKEN,
        base_llm: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(text_config, dict):
            if "model_type" not in text_config:
                raise ValueError("text_config: a dict text config needs its `model_type`")
            text_config = AutoConfig.for_model(**text_config)
        self.text_config = text_config
        self.experts = [ExpertSpec.from_dict(e, where=f"experts[{i}]").to_dict() for i, e in enumerate(experts or [])]
        self.fusion = fusion
        self.projection = projection
        self.projector_type = projector_type
        self.router = router
        self.router_top_k = router_top_k
        self.router_classifier = dict(router_classifier) if router_classifier is not None else None
        self.image_geometry = image_geometry
        self.generalist_index = generalist_index
        self.attn_heads = attn_heads
        self.attn_variant = attn_variant
        self.router_aux_loss_coef = router_aux_loss_coef
        self.image_token_id = image_token_id
        self.image_start_token_id = image_start_token_id
        self.image_end_token_id = image_end_token_id
        self.attachment_token = attachment_token
        self.base_llm = base_llm
        kwargs.setdefault("tie_word_embeddings", getattr(text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)
        self._validate_choices()

    def _validate_choices(self) -> None:
        for key, value, valid in (("fusion", self.fusion, FUSIONS), ("projection", self.projection, PROJECTIONS),
                                  ("router", self.router, ROUTERS),
                                  ("projector_type", self.projector_type, PROJECTOR_TYPES),
                                  ("image_geometry", self.image_geometry, IMAGE_GEOMETRIES),
                                  ("attn_variant", self.attn_variant, ATTN_VARIANTS)):
            if value not in valid:
                raise ValueError(f"{key}: {value!r} is not one of {list(valid)}")
        n = len(self.experts)
        if n and self.fusion == "none" and n != 1:
            raise ValueError(f"fusion: `none` takes exactly one expert, got {n}; choose avg, cat or attn")
        if self.fusion != "none" and n < 2:
            raise ValueError(f"fusion: {self.fusion!r} mixes several experts, got {n}; use fusion `none`")
        if n:
            self.generalist_index = counted_from_the_start(self.generalist_index, n)
        if n and not 0 <= self.generalist_index < n:
            raise ValueError(f"generalist_index: {self.generalist_index} is outside the {n} experts")
        if self.router_top_k is not None:
            if self.router == "uniform":
                raise ValueError("router_top_k: the uniform router runs every expert; remove router_top_k or use "
                                 "router: learned or pretrained")
            if not 1 <= self.router_top_k <= n:
                raise ValueError(f"router_top_k: {self.router_top_k} must lie between 1 and the number of experts ({n})")
        if self.fusion == "attn" and self.attn_variant == "published" and self.experts_top_k != n:
            raise ValueError(f"attn_variant: `published` attends over every expert (dense routing, as published); "
                             f"router_top_k {self.router_top_k} runs only some of the {n} experts")

        if not self.router_aux_loss_coef >= 0:
            raise ValueError(f"router_aux_loss_coef: must be >= 0, got {self.router_aux_loss_coef}")
        if (self.router == "pretrained") != (self.router_classifier is not None):
            raise ValueError("router_classifier: required with router: pretrained, and only with it")
        if self.router_classifier is not None and n:
            from multimeditron.model.gate_classifier import GateClassifierSpec, complete_router_classifier

            # A train-gate folder fills in what the config leaves out (its architecture, class_to_expert from its
            # class names); stored complete, so a saved model rebuilds the same classifier without the folder.
            completed = complete_router_classifier(self.router_classifier, self.experts)
            self.router_classifier = GateClassifierSpec.from_dict(completed, n).to_dict()

    @property
    def experts_top_k(self) -> int:
        return self.router_top_k if self.router_top_k is not None else len(self.experts)


# The arguments a run config's `model:` section sets, by name; the rest (text_config, the special tokens' ids,
# base_llm) is filled in when the model is built.
SECTION_KEYS: tuple[str, ...] = (
    "experts", "fusion", "projection", "projector_type", "router", "router_top_k", "router_classifier",
    "image_geometry", "generalist_index", "attn_heads", "attn_variant", "attachment_token", "router_aux_loss_coef")
# Of those, the training settings: a run that continues from a saved model may change them.
TRAINING_SETTINGS: tuple[str, ...] = ("router_aux_loss_coef",)
ARCHITECTURE_DEFAULTS: dict[str, Any] = {
    key: inspect.signature(MultiMeditronConfig.__init__).parameters[key].default for key in SECTION_KEYS}
