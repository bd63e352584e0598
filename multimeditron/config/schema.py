"""The run configuration's typed schema: the sections of a `train` YAML (model, data, stage, lora, training_args,
deepspeed, seed) as dataclasses. The `data:` section is the data layer's own `DataSection` (of `DatasetEntry`s), so
the data layer takes no class of the run config. Parsing and checks live beside it (`typed`, `loading`,
`validation`)."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from multimeditron.choices import AttnVariant, Fusion, ImageGeometry, Projection, ProjectorType, Router, Stage
from multimeditron.data.dataset import DataSection
from multimeditron.experts.base import ExpertSpec
from multimeditron.model.configuration import ARCHITECTURE_DEFAULTS, SECTION_KEYS, TRAINING_SETTINGS


@dataclass
class RouterClassifierSection:
    """The `pretrained` router's image classifier (model.gate_classifier.GateClassifierSpec; a key left out takes
    the model's default: arch resnet50, 224 px, CLIP mean/std, trainable only in `full`)."""

    # for each class, in the classifier's order, the expert it routes to; None: from a train-gate folder's
    # class_experts (model.gate_classifier.complete_router_classifier)
    class_to_expert: list[int] | None = None
    checkpoint: str | None = None  # the published gate folder, a .safetensors/.pth state dict or a hub id
    arch: str | None = None  # timm model name
    options: dict[str, Any] | None = None  # timm.create_model keyword arguments
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    trainable_stages: list[Stage] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


_DEFAULT = ARCHITECTURE_DEFAULTS  # the model config's defaults (MultiMeditronConfig is their one home)


@dataclass
class ModelSection:
    """The model: a new one from `llm` + `experts` and the architecture keys of `MultiMeditronConfig` (same names,
    same defaults, validated by it: `multimeditron.config.architecture.model_config`), or `base_model`."""

    llm: str | None = None  # hub id, local folder or tiny preset (tiny-qwen3, tiny-llama, tiny-apertus)
    base_model: str | None = None  # an earlier stage's output; its stored architecture wins
    experts: list[ExpertSpec] = field(default_factory=list)
    fusion: Fusion = _DEFAULT["fusion"]
    projection: Projection = _DEFAULT["projection"]
    projector_type: ProjectorType = _DEFAULT["projector_type"]
    router: Router = _DEFAULT["router"]
    router_top_k: int | None = _DEFAULT["router_top_k"]
    router_classifier: RouterClassifierSection | None = None  # with router: pretrained
    image_geometry: ImageGeometry = _DEFAULT["image_geometry"]
    generalist_index: int = _DEFAULT["generalist_index"]  # negative: counted from the end (-1 = the last expert)
    attn_heads: int = _DEFAULT["attn_heads"]
    attn_variant: AttnVariant = _DEFAULT["attn_variant"]  # the attn fusion's layer: residual (ours) or published
    router_aux_loss_coef: float = _DEFAULT["router_aux_loss_coef"]  # a training setting (0 = off)
    attachment_token: str = _DEFAULT["attachment_token"]
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "flex_attention", "eager"] = "auto"
    trust_remote_code: bool = False

    # Architecture keys: given together with base_model they must agree with the checkpoint.
    ARCHITECTURE_KEYS: typing.ClassVar[tuple[str, ...]] = ("llm",) + tuple(
        key for key in SECTION_KEYS if key not in TRAINING_SETTINGS)

    def router_classifier_dict(self) -> dict[str, Any] | None:
        return self.router_classifier.as_dict() if self.router_classifier is not None else None

    def model_config_kwargs(self) -> dict[str, Any]:
        """Every `MultiMeditronConfig` argument this section sets (`SECTION_KEYS`), as plain values."""
        values = {key: getattr(self, key) for key in SECTION_KEYS}
        values["experts"] = [e.to_dict() for e in self.experts]
        values["router_classifier"] = self.router_classifier_dict()
        return values


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class PartLearningRates:
    """Learning rates per trained part (the parts of `training.stages.STAGE_PARTS`); a part left out uses
    training_args.learning_rate. Like LLaVA's mm_projector_lr / mm_vision_tower_lr."""

    experts: float | None = None
    vision_glue: float | None = None  # projectors, fusion, router
    llm: float | None = None  # the LLM body, its embeddings and LoRA adapters

    def as_dict(self) -> dict[str, float]:
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}

    def describe(self, default_rate: float) -> str:
        return f"learning rates per part: {self.as_dict()} (others: training_args.learning_rate = {default_rate})"


@dataclass
class RunConfig:
    model: ModelSection
    data: DataSection
    stage: Stage
    training_args: dict[str, Any] = field(default_factory=dict)
    lora: LoraSection | None = None
    part_learning_rates: PartLearningRates | None = None
    deepspeed: str | None = None
    seed: int = 42
    # How the training loss averages the tokens of one optimizer step: "global_tokens" = one mean over every answer
    # token of the global batch (each token weighs the same); "micro_batch" = a token mean per micro-batch, averaged
    # over accumulation steps and processes (the published trainer's `model_accepts_loss_kwargs = False`).
    loss_averaging: Literal["global_tokens", "micro_batch"] = "global_tokens"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
