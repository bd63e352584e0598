"""The run configuration: one typed YAML schema (model, data, stage, lora, training_args, deepspeed, seed).

Validated in one place with messages that name the offending key; unknown keys are refused so typos surface.
`${VAR}` and `$VAR` in string values come from the environment (an unset variable is an error; `$$` is a `$`).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from multimeditron.choices import (
    DEFAULT_ATTACHMENT_TOKEN,
    AttnVariant,
    Fusion,
    ImageGeometry,
    Projection,
    ProjectorType,
    Router,
)
from multimeditron.errors import UserError
from multimeditron.experts.base import ExpertSpec

# What each training stage trains: "vision glue" (projectors, fusion, router and, while the LLM is frozen, the new
# special-token rows of its embeddings), "experts", "llm" (or its LoRA adapters). Read by training.stages.
STAGE_PARTS: dict[str, frozenset[str]] = {
    "alignment": frozenset({"vision_glue"}),
    "vision_alignment": frozenset({"vision_glue", "experts"}),
    "end2end": frozenset({"vision_glue", "llm"}),
    "full": frozenset({"vision_glue", "experts", "llm"}),
    "lm_only": frozenset({"llm"}),
}
STAGES = tuple(STAGE_PARTS)
Stage = Literal["alignment", "vision_alignment", "end2end", "full", "lm_only"]
assert set(typing.get_args(Stage)) == set(STAGES)


class _Loader(yaml.SafeLoader):
    """yaml.safe_load, but `1e-4` is a float (YAML 1.1 reads it as a string, a classic learning-rate trap)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: typing.IO | str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(UserError, ValueError):
    """A configuration problem, with the dotted path of the key at fault."""


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


@dataclass
class ModelSection:
    llm: str | None = None  # hub id, local folder or tiny preset (tiny-qwen3, tiny-llama, tiny-apertus)
    base_model: str | None = None  # an earlier stage's output; its stored architecture wins
    experts: list[ExpertSpec] = field(default_factory=list)
    fusion: Fusion = "none"
    projection: Projection = "shared"
    projector_type: ProjectorType = "mlp2x_gelu"
    router: Router = "uniform"
    router_top_k: int | None = None
    router_classifier: RouterClassifierSection | None = None  # with router: pretrained
    image_geometry: ImageGeometry = "pad"
    generalist_index: int = 0  # negative: counted from the end (-1 = the last expert)
    attn_heads: int = 8
    attn_variant: AttnVariant = "residual"  # the attn fusion's layer: residual (ours) or published
    router_aux_loss_coef: float = 0.01  # weight of the learned router's balance loss (0 = off); a training setting
    attachment_token: str = DEFAULT_ATTACHMENT_TOKEN
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "flex_attention", "eager"] = "auto"
    trust_remote_code: bool = False

    # Architecture keys: given together with base_model they must agree with the checkpoint.
    ARCHITECTURE_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "llm", "experts", "fusion", "projection", "projector_type", "router", "router_top_k", "router_classifier",
        "image_geometry", "generalist_index", "attn_heads", "attn_variant", "attachment_token")

    def router_classifier_dict(self) -> dict[str, Any] | None:
        return self.router_classifier.as_dict() if self.router_classifier is not None else None


@dataclass
class DatasetEntry:
    path: str  # save_to_disk folder, parquet/arrow file(s) or hub id
    weight: float = 1.0  # relative sampling weight in the mixture
    max_samples: int | None = None  # cap on rows taken from this dataset
    split: str | None = None  # split of a DatasetDict / hub dataset (default: train for train, test for eval)


@dataclass
class DataSection:
    train: list[DatasetEntry] = field(default_factory=list)
    eval: list[DatasetEntry] = field(default_factory=list)
    max_sequence_length: int = 2048
    packing: bool = False
    on_bad_sample: Literal["error", "skip"] = "error"
    # Under `skip`: a dataset with a larger share of refused rows stops the run (a wrong placeholder must not quietly
    # empty it). 1.0 = never stop.
    max_bad_sample_share: float = 0.01
    # Placeholder in the data: "auto" = detected per dataset from its rows (<|image|>, <|reserved_special_token_0|>,
    # <image>); None = the model's; or the exact string.
    attachment_token: str | None = "auto"
    # Caption rows (`text`): "chat" = a "Describe the image" turn with the caption as the answer; "raw" = the text
    # itself with the loss on it and an end-of-sequence token; "published" = the text tokenised as the published
    # MultiMeditron did (the tokenizer's BOS, no EOS, image delimiters in the loss). data/raw_caption.py.
    caption_format: Literal["chat", "raw", "published"] = "chat"
    image_base_dir: str | None = None  # base folder for relative image paths (paths escaping it are refused)
    num_proc: int = 1  # processes for tokenisation (datasets.map)
    seed: int | None = None  # mixture sampling seed; None = the run seed


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class PartLearningRates:
    """Learning rates per trained part (the parts of STAGE_PARTS); a part left out uses
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


# ---- loading ------------------------------------------------------------------------------------------------------
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def substitute_env(value: Any, where: str = "", environ: typing.Mapping[str, str] | None = None) -> Any:
    environ = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: substitute_env(v, _join(where, k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, f"{where}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(2)
        if name not in environ:
            raise ConfigError(f"{where}: environment variable ${name} is not set")
        return environ[name]

    return _VARIABLE.sub(replace, value)


_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _key_path(key: str) -> list[str | int]:
    """`data.train[0].max_samples` -> ["data", "train", 0, "max_samples"]."""
    steps: list[str | int] = []
    for part in key.split("."):
        match = _KEY_PART.match(part)
        if match is None:
            raise ConfigError(f"--set {key}: {part!r} is not a key (write keys as a.b[0].c)")
        steps.append(match.group(1))
        steps += [int(i) for i in re.findall(r"\d+", match.group(2))]
    return steps


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=value` or `--set data.train[0].max_samples=8` (value parsed as YAML) to the raw
    config mapping. A missing section is created; a list item must already exist."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    set_value(data, key.strip(), _yaml_load(raw), f"--set {key.strip()}")


def set_value(data: dict[str, Any], key: str, value: Any, origin: str | None = None) -> None:
    """Set the dotted `key` (`a.b[0].c`) of the raw config mapping to `value`; `origin` names where the
    assignment came from in errors (`--set KEY`, `--epochs`)."""
    origin = origin or key
    steps = _key_path(key)
    node: Any = data
    where = ""
    for step, following in itertools.pairwise(steps):
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ConfigError(f"{origin}: {where} is not a list")
            if not 0 <= step < len(node):
                raise ConfigError(f"{origin}: {where} has {len(node)} item(s), no [{step}]")
            where = f"{where}[{step}]"
            node = node[step]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {where or 'the config'} is not a section")
        where = _join(where, step)
        if node.get(step) is None:
            if isinstance(following, int):
                raise ConfigError(f"{origin}: {where} is not a list in the config")
            node[step] = {}
        node = node[step]
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or not 0 <= last < len(node):
            raise ConfigError(f"{origin}: {where} has no item [{last}]")
    elif not isinstance(node, dict):
        raise ConfigError(f"{origin}: {where} is not a section")
    node[last] = value


def read_config_mapping(path: str | os.PathLike | None, overrides: list[str] | None = None,
                        values: list[tuple[str, Any, str]] | None = None,
                        environ: typing.Mapping[str, str] | None = None) -> dict[str, Any]:
    """The raw mapping of a YAML config (`{}` without a file), command-line `values` (key, value, the flag that
    gave it) and then `--set` overrides applied, environment variables substituted: what every command's typed
    schema is built from."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            with path.open() as handle:
                data = _yaml_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML (quote values that start with $ or {{ inside {{...}}): "
                              f"{error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for key, value, origin in values or []:
        set_value(data, key, value, origin)
    for assignment in overrides or []:
        set_override(data, assignment)
    return substitute_env(data, environ=environ)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None,
                environ: typing.Mapping[str, str] | None = None) -> RunConfig:
    path = Path(path)
    data = read_config_mapping(path, overrides, environ=environ)
    # A relative DeepSpeed path is relative to the YAML file, so cookbook configs work from any directory.
    if isinstance(data.get("deepspeed"), str) and not os.path.isabs(data["deepspeed"]):
        data["deepspeed"] = str((path.parent / data["deepspeed"]).resolve())
    return parse_config(data)


def parse_config(data: dict[str, Any]) -> RunConfig:
    config = _build(RunConfig, data, "")
    _check_semantics(config)
    return config


def _check_semantics(config: RunConfig) -> None:
    model = config.model
    if model.base_model is None and model.llm is None:
        raise ConfigError("model.llm: required unless model.base_model names an earlier stage's output")
    if model.base_model is None and not model.experts:
        raise ConfigError("model.experts: at least one expert is needed to build a new model")
    if model.experts and -len(model.experts) <= model.generalist_index < 0:
        model.generalist_index += len(model.experts)  # the published `generalist_idx: -1` = the last expert
    _check_router_classifier(model)
    if not config.data.train:
        raise ConfigError("data.train: at least one dataset is needed")
    for section, entries in (("train", config.data.train), ("eval", config.data.eval)):
        for i, entry in enumerate(entries):
            if entry.weight <= 0:
                raise ConfigError(f"data.{section}[{i}].weight: must be positive, got {entry.weight}")
            if entry.max_samples is not None and entry.max_samples <= 0:
                raise ConfigError(f"data.{section}[{i}].max_samples: must be positive, got {entry.max_samples}")
    if not 0.0 <= config.data.max_bad_sample_share <= 1.0:
        raise ConfigError(f"data.max_bad_sample_share: must lie between 0 and 1, "
                          f"got {config.data.max_bad_sample_share}")
    if config.data.max_sequence_length < 16:
        raise ConfigError(f"data.max_sequence_length: {config.data.max_sequence_length} is too small")
    if config.lora is not None and "llm" not in STAGE_PARTS[config.stage]:
        llm_stages = ", ".join(name for name, parts in STAGE_PARTS.items() if "llm" in parts)
        raise ConfigError(f"lora: stage {config.stage!r} does not train the LLM; LoRA needs one of {llm_stages}")
    _check_training_args(config.training_args)
    _check_packing(config)
    if config.deepspeed is not None and not Path(config.deepspeed).is_file():
        raise ConfigError(f"deepspeed: file {config.deepspeed} does not exist")
    if config.part_learning_rates is not None:
        _check_part_learning_rates(config)


def _check_router_classifier(model: ModelSection) -> None:
    if model.base_model is not None:
        return  # the stored architecture wins; check_base_model_agrees compares what is written
    if (model.router == "pretrained") != (model.router_classifier is not None):
        raise ConfigError("model.router_classifier: required with router: pretrained, and only with it")
    if model.router_classifier is None:
        return
    _complete_router_classifier(model)
    mapping, n = model.router_classifier.class_to_expert, len(model.experts)
    if mapping is None:
        raise ConfigError("model.router_classifier.class_to_expert: required unless checkpoint is a train-gate "
                          "folder whose config.json maps its classes to experts by name (class_experts)")
    outside = [i for i in mapping if not 0 <= i < n]
    if not mapping or outside:
        raise ConfigError(f"model.router_classifier.class_to_expert: one expert index (0..{n - 1}) per class of the "
                          f"classifier; {outside or 'an empty list'} is not")
    unused = sorted(set(range(n)) - set(mapping))
    if unused:
        raise ConfigError(f"model.router_classifier.class_to_expert: experts {unused} receive no class and would "
                          f"never run")


def _complete_router_classifier(model: ModelSection) -> None:
    """Keys of a gate folder's record the section leaves out, and class_to_expert from its class names (the one
    check of class names against expert names lives in model.gate_classifier)."""
    from multimeditron.model.gate_classifier import complete_router_classifier

    try:
        completed = complete_router_classifier(model.router_classifier.as_dict(), model.experts,
                                               where="model.router_classifier")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    model.router_classifier = RouterClassifierSection(**completed)


def _check_packing(config: RunConfig) -> None:
    """Refuse packing where packed samples could see each other. Every `attn_implementation` above has a path that
    keeps them apart (model.packed_attention: block mask for sdpa/eager, varlen lengths for flash-attn, a BlockMask
    for flex), but only through transformers' own attention code."""
    if not config.data.packing:
        return
    if config.model.trust_remote_code:
        raise ConfigError("data.packing: model.trust_remote_code runs the LLM's own modeling code, which may ignore "
                          "the block mask or varlen lengths that keep packed samples apart; set data.packing: false")
    if config.model.attn_implementation == "flex_attention":
        from importlib.metadata import version

        from packaging.version import Version

        if Version(version("torch")).release < (2, 5):
            raise ConfigError(f"data.packing: flex_attention keeps packed samples apart with a BlockMask, which "
                              f"needs torch >= 2.5 (installed: {version('torch')}); use flash_attention_2 or sdpa")


def _check_part_learning_rates(config: RunConfig) -> None:
    for part, value in config.part_learning_rates.as_dict().items():
        if value <= 0:
            raise ConfigError(f"part_learning_rates.{part}: must be positive, got {value}")
        if part not in STAGE_PARTS[config.stage]:
            raise ConfigError(f"part_learning_rates.{part}: stage {config.stage!r} does not train this part "
                              f"(it trains {sorted(STAGE_PARTS[config.stage])})")
    if config.deepspeed is not None:
        import json

        try:
            has_optimizer = "optimizer" in json.loads(Path(config.deepspeed).read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"deepspeed: cannot read {config.deepspeed}: {error}") from error
        if has_optimizer:
            raise ConfigError(f"part_learning_rates: the DeepSpeed file {config.deepspeed} defines its own "
                              "`optimizer`, which would ignore per-part learning rates; remove one of the two")


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
    """`training_args` as every command on the engine takes them: known TrainingArguments fields of the right
    types, accepted by `TrainingArguments` itself (each error names the key)."""
    _check_training_args(args)


def _check_training_args(args: dict[str, Any]) -> None:
    """Unknown keys, then each value's type, then `TrainingArguments` itself, built key by key so that its own
    errors (an unknown scheduler or optimizer, incompatible options) name the key that introduced them."""
    import torch
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
        _coerce(hints[key], value, f"training_args.{key}")
    # As the run builds them (training.run.build_training_arguments): no half precision without a GPU.
    built: dict[str, Any] = {"report_to": "none", "use_cpu": not torch.cuda.is_available()}
    validating = _validating_training_arguments()
    for key, value in args.items():
        if built["use_cpu"] and key in ("bf16", "fp16", "tf32"):
            continue
        built[key] = value
        try:
            validating(**built)
        except Exception as error:  # TrainingArguments raises ValueError, TypeError, ImportError...
            raise ConfigError(f"training_args.{key}: {error}") from error


# ---- typed construction -------------------------------------------------------------------------------------------
def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def parse_section(cls: type, data: Any, where: str = "") -> Any:
    """A typed config dataclass from its raw mapping: unknown keys refused with their dotted path, values checked
    against the type hints (Literal choices, lists, nested sections), required keys named when missing."""
    return _build(cls, data, where)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key; valid keys here: {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: required key is missing")
    try:
        built = cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where or 'config'}: {error}") from error
    # Which keys the user wrote (a default value cannot tell "not given" from "given the default"); see written_keys.
    object.__setattr__(built, "_written_keys", frozenset(data))
    return built


def written_keys(section: Any) -> frozenset[str]:
    """The keys of a parsed config section that the YAML (or a --set) wrote, whatever their values."""
    return getattr(section, "_written_keys", frozenset())


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
