"""Translate a config of the published MultiMeditron toolkit (flat schema: `base_llm`, `modalities`, `training_mode`,
`datasets[].packed_path`, ...) into this toolkit's schema (config.py). Every published key is mapped, dropped with
the reason (it has no effect here), or refused with the key and the reason; `$VAR` / `${VAR}` are kept as written."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from multimeditron.choices import PUBLISHED_FUSIONS, PUBLISHED_GATE_ARCH
from multimeditron.config import PUBLISHED_MARKERS, ConfigError, is_published_config

STAGES = {"ALIGNMENT": "alignment", "END2END": "end2end", "FULL": "full", "LM_ONLY": "lm_only"}
PROJECTORS = {"mlp": "mlp3x_gelu"}  # the published MLPProjector: 3 linear layers with GELU, N(0, 0.02) init
BIOMEDCLIP_HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
GATES = ("pretrained", "learned")


# Settings a published run had without writing them, which this schema's defaults would change: set as the cookbook
# sets them. (key path, value, why)
PUBLISHED_SETTINGS: tuple[tuple[tuple[str, ...], Any, str], ...] = (
    (("data", "caption_format"), "published", "caption rows tokenised as published: the text itself with the "
                                               "tokenizer's BOS, no EOS, image delimiters in the loss"),
    (("data", "on_bad_sample"), "skip", "as the cookbook's recipes: a refused row is skipped and counted (a dataset with more than 1% refused "
                                 "still stops the run) instead of stopping a multi-node run"),
    (("seed",), 0, "the published CLI's default seed"),
    (("loss_averaging",), "micro_batch", "the published trainer: a token mean per micro-batch, averaged over "
                                         "accumulation steps"),
)
# The published stage 1 had no length limit; the cookbook's stage 1 uses the stage-2 length.
PUBLISHED_STAGE1_LENGTH = 4096
# What a published stage 2 starts from (`.../checkpoint-<step>` of its stage 1); our stage 1 writes `<output_dir>/final`.
_PUBLISHED_CHECKPOINT = re.compile(r"^(?P<run>.+?)/checkpoint-\d+/?$")


@dataclass
class Conversion:
    """The converted config (our schema, as a plain mapping), one note per published key dropped or changed, and one
    line per setting given a value the published run had implicitly (`changes`)."""

    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    def to_yaml(self, source: str | None = None) -> str:
        lines = [f"# Converted from the published MultiMeditron config {source or ''} by "
                 "`multimeditron convert config`.".replace("  ", " ")]
        lines += [f"# - {note}" for note in self.notes + self.changes]
        return "\n".join(lines) + "\n" + yaml.safe_dump(self.config, sort_keys=False, width=120)


def load_published(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not is_published_config(data):
        raise ConfigError(f"{path}: not a published MultiMeditron config (none of the keys "
                          f"{', '.join(PUBLISHED_MARKERS)} at the top level)")
    return data


def convert_published(data: dict[str, Any], gate: str = "pretrained", base_dir: str | os.PathLike = ".",
                      yaml_dir: str | os.PathLike | None = None) -> Conversion:
    """The published config `data` in our schema. The published frozen classifier gate (`gating_path`) becomes the
    `pretrained` router (its classes mapped to the experts in order, as published, trained only in `full`);
    `gate="learned"` replaces it by this toolkit's learned gate, which is another mechanism.
    A relative `training_args.deepspeed` path is looked for beside the published YAML (`yaml_dir`) and in `base_dir`
    (the published launcher's working directory): the one that exists is written as an absolute path (both: an
    error naming them; neither: the YAML's folder, with a note)."""
    if gate not in GATES:
        raise ConfigError(f"--gate: {gate!r} is not one of {list(GATES)}")
    data = dict(data)
    notes: list[str] = []
    model: dict[str, Any] = {}
    out: dict[str, Any] = {"model": model, "data": {}}

    def take(key: str, default: Any = None) -> Any:
        return data.pop(key, default)

    if data.get("base_llm") is None and data.get("base_model") is None:
        raise ConfigError("base_llm: required (the LLM to build on)")
    llm = take("base_llm")
    if llm is not None:
        model["llm"] = llm
    base_model = take("base_model")
    if base_model is None:
        _map_modalities(take("modalities"), model, notes, gate)
        if "experts" in model:
            # the published image processors (CLIP's, BiomedCLIP's) resize the short side and crop the centre
            model["image_geometry"] = "center_crop"
    else:
        model["base_model"] = base_model
        if take("modalities") is not None:
            # As in the published toolkit, which ignored it: the earlier stage's stored architecture is used.
            notes.append("modalities: dropped (base_model is set: the checkpoint's stored architecture is used, as "
                         "the published toolkit did)")
    token = take("attachment_token")
    if token is not None:
        out["data"]["attachment_token"] = token
        notes.append(f"attachment_token {token} -> data.attachment_token (the data's placeholder; the model keeps "
                     f"its own image token)")
    for key, reason in (("tokenizer_type", "the chat template comes from the LLM's own tokenizer"),
                        ("token_size", "the LLM's hidden size is read from the LLM")):
        if take(key) is not None:
            notes.append(f"{key}: dropped ({reason})")
    truncation = take("truncation", True)
    if truncation is not True:
        raise ConfigError(f"truncation: {truncation!r} cannot be mapped: this toolkit always truncates to "
                          f"data.max_sequence_length (never through an image span)")
    length = take("max_sequence_length")
    if length is not None:
        out["data"]["max_sequence_length"] = length
    _map_loaders(take("loaders"), out["data"], notes)
    mode = take("training_mode")
    if mode not in STAGES:
        raise ConfigError(f"training_mode: {mode!r} is not one of {list(STAGES)}")
    out["stage"] = STAGES[mode]
    out["data"]["train"] = _map_datasets(take("datasets"))
    training_args = dict(take("training_args") or {})
    if not training_args:
        raise ConfigError("training_args: required (at least output_dir)")
    _map_training_args(training_args, out, notes, base_dir, yaml_dir)
    resume = take("resume_from_checkpoint")
    if resume not in (None, False):
        training_args["resume_from_checkpoint"] = resume
    wandb_run_id = take("wandb_run_id")
    if wandb_run_id is not None:
        raise ConfigError(f"wandb_run_id: {wandb_run_id!r} cannot be mapped: set WANDB_RUN_ID={wandb_run_id} and "
                          f"WANDB_RESUME=allow in the environment instead")
    out["training_args"] = training_args
    if data:
        key = sorted(data)[0]
        raise ConfigError(f"{key}: not a key of the published schema this converter knows; nothing to map it to")
    order = ("llm", "base_model", "experts", "fusion", "attn_variant", "attn_heads", "projection", "projector_type", "router", "router_top_k",
             "router_classifier", "generalist_index", "image_geometry")
    out["model"] = {key: model[key] for key in order if key in model}
    return Conversion(out, notes, _published_settings(out))


def _published_settings(out: dict[str, Any]) -> list[str]:
    """Give the converted config what the published run did without a key for it; one line per change."""
    changes = []
    for path, value, why in PUBLISHED_SETTINGS:
        section = out
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value
        changes.append(f"{'.'.join(path)}: {value} ({why})")
    if "max_sequence_length" not in out["data"]:
        out["data"]["max_sequence_length"] = PUBLISHED_STAGE1_LENGTH
        changes.append(f"data.max_sequence_length: {PUBLISHED_STAGE1_LENGTH} (the published config set none: no "
                       f"truncation; this schema's default would cut at 2048)")
    base_model = out["model"].get("base_model")
    match = _PUBLISHED_CHECKPOINT.match(str(base_model or ""))
    if match:
        out["model"]["base_model"] = f"{match['run']}/final"
        changes.append(f"model.base_model: {base_model} -> {match['run']}/final (our stage 1 writes its model to "
                       f"<output_dir>/final, not to a checkpoint-<step> folder)")
    return changes


def _map_modalities(modalities: Any, model: dict[str, Any], notes: list[str], gate: str) -> None:
    if modalities is None:
        if "base_model" in model:
            return  # the published stage 2 ignored it anyway: the checkpoint's architecture wins
        raise ConfigError("modalities: required unless base_model names an earlier stage's output")
    if not isinstance(modalities, list) or len(modalities) != 1 or not isinstance(modalities[0], dict):
        raise ConfigError("modalities: exactly one image modality is supported (a list with one mapping)")
    modality = dict(modalities[0])
    where = "modalities[0]"
    kind = modality.pop("model_type", None)
    nested = modality.pop("config", None)  # an older layout nests the modality's keys under `config:`
    if isinstance(nested, dict):
        modality = {**nested, **modality}
    elif nested is not None:
        raise ConfigError(f"{where}.config: expected a mapping of the modality's keys")
    for key, reason in (("hidden_size", "the projector's output size is the LLM's hidden size"),
                        ("trust_remote_code", "the experts are built by this toolkit, no remote code runs"),
                        ("use_bias_proj", "the projector layers always have biases")):
        if key in modality:
            value = modality.pop(key)
            if key == "use_bias_proj" and value is False:
                raise ConfigError(f"{where}.use_bias_proj: false cannot be mapped (projectors here have biases)")
            notes.append(f"{where}.{key}: dropped ({reason})")
    projection_type = modality.pop("projection_type", "mlp")
    if projection_type not in PROJECTORS:
        raise ConfigError(f"{where}.projection_type: {projection_type!r} is not one of {list(PROJECTORS)}")
    model["projector_type"] = PROJECTORS[projection_type]
    clip_options = {"backend": "hf", "post_norm": False}  # the published CLIP: last_hidden_state, no post-LayerNorm
    if kind == "meditron_biomedclip":
        name = modality.pop("clip_name", None)
        checkpoint = BIOMEDCLIP_HUB if name and name.endswith("BiomedCLIP-PubMedBERT_256-vit_base_patch16_224") \
            else name
        if checkpoint != name:
            notes.append(f"{where}.clip_name {name} -> {checkpoint} (the same BiomedCLIP weights in their original "
                         f"open_clip layout)")
        model["experts"] = [{"id": "biomedclip", "checkpoint": checkpoint}]
        model["fusion"] = "none"
    elif kind == "meditron_clip":
        model["experts"] = [{"id": "clip", "checkpoint": modality.pop("clip_name", "openai/clip-vit-large-patch14"),
                             "options": dict(clip_options)}]
        model["fusion"] = "none"
        for key, reason in (("image_processor", "the expert brings its own resolution and normalisation"),
                            ("fusion_method", "one expert: nothing to fuse")):
            if key in modality:
                notes.append(f"{where}.{key} {modality.pop(key)}: dropped ({reason})")
    elif kind in ("moe_meditron_clip", "moe_meditron_clip_pep"):
        names = modality.pop("expert_clip_names", None)
        if not isinstance(names, list) or len(names) < 2:
            raise ConfigError(f"{where}.expert_clip_names: a list of at least two CLIP checkpoints is needed")
        model["experts"] = [{"id": "clip", "checkpoint": name, "options": dict(clip_options)} for name in names]
        model["projection"] = "per_expert" if kind.endswith("_pep") else "shared"
        method = modality.pop("fusion_method", "weighted_average")
        if method not in PUBLISHED_FUSIONS:
            raise ConfigError(f"{where}.fusion_method: {method!r} is not one of {list(PUBLISHED_FUSIONS)}")
        model["fusion"] = PUBLISHED_FUSIONS[method]
        if method == "cross_attn":
            model["attn_variant"] = "published"  # the published cross-attention layer, not this toolkit's default
        heads = modality.pop("cross_attn_heads", None)
        if heads is not None:
            model["attn_heads"] = heads
        index = modality.pop("generalist_idx", 0)
        if not isinstance(index, int) or not -len(names) <= index < len(names):
            raise ConfigError(f"{where}.generalist_idx: {index!r} is outside the {len(names)} experts")
        model["generalist_index"] = index % len(names)
        processor = modality.pop("image_processor", None)
        if processor is not None:
            notes.append(f"{where}.image_processor {processor}: dropped (each expert brings its own resolution and "
                         f"normalisation; image_geometry: center_crop gives its resize + centre crop)")
        gating_path = modality.pop("gating_path", None)
        top_k = modality.pop("top_k_experts", None)
        model["router_top_k"] = min(int(top_k or len(names)), len(names))
        if gating_path and gate == "pretrained":
            model["router"] = "pretrained"
            # The published code used the gate's class i as expert i (its softmax weighted the experts in order).
            model["router_classifier"] = {"checkpoint": gating_path, "arch": PUBLISHED_GATE_ARCH,
                                          "class_to_expert": list(range(len(names))), "trainable_stages": ["full"]}
            notes.append(f"{where}.gating_path {gating_path} -> router: pretrained (a {PUBLISHED_GATE_ARCH} whose "
                         f"class i routes to expert i, trained only in `full`, as published)")
        else:
            model["router"] = "learned"
            notes.append(f"{where}.gating_path {gating_path}: replaced by the learned gate (--gate learned)"
                         if gating_path else f"{where}: no gating_path; this toolkit's learned gate routes instead")
    else:
        raise ConfigError(f"{where}.model_type: {kind!r} is not one of meditron_biomedclip, meditron_clip, "
                          f"moe_meditron_clip, moe_meditron_clip_pep")
    if modality:
        key = sorted(modality)[0]
        raise ConfigError(f"{where}.{key}: not a key of a published {kind} modality; nothing to map it to")


def _map_loaders(loaders: Any, data: dict[str, Any], notes: list[str]) -> None:
    for i, loader in enumerate(loaders or []):
        kind = loader.get("loader_type") if isinstance(loader, dict) else None
        if kind == "raw-image":
            notes.append(f"loaders[{i}] raw-image: dropped (image bytes in the rows are read as they are)")
        elif kind == "fs-image":
            base = loader.get("base_path")
            if base:
                data["image_base_dir"] = base
        else:
            raise ConfigError(f"loaders[{i}].loader_type: {kind!r} is not one of raw-image, fs-image")


def _map_datasets(datasets: Any) -> list[dict[str, Any]]:
    if not isinstance(datasets, list) or not datasets:
        raise ConfigError("datasets: required (a list of {packed_path: ...})")
    train = []
    for i, entry in enumerate(datasets):
        if not isinstance(entry, dict) or "packed_path" not in entry:
            raise ConfigError(f"datasets[{i}]: expected a mapping with packed_path")
        unknown = sorted(set(entry) - {"packed_path"})
        if unknown:
            raise ConfigError(f"datasets[{i}].{unknown[0]}: not a key of a published dataset entry")
        train.append({"path": str(entry["packed_path"]).rstrip("/") or "/"})
    return train


_VARIABLE = re.compile(r"\$\{?[A-Za-z_]")


def _map_training_args(args: dict[str, Any], out: dict[str, Any], notes: list[str], base_dir: str | os.PathLike,
                       yaml_dir: str | os.PathLike | None = None) -> None:
    deepspeed = args.pop("deepspeed", None)
    if deepspeed is not None:
        path = str(deepspeed)
        if not os.path.isabs(path) and not _VARIABLE.match(path):
            path = _resolve_deepspeed(path, base_dir, yaml_dir, notes)
        out["deepspeed"] = path
        notes.append(f"training_args.deepspeed -> deepspeed: {path}")


def _resolve_deepspeed(path: str, base_dir: str | os.PathLike, yaml_dir: str | os.PathLike | None,
                       notes: list[str]) -> str:
    """A relative DeepSpeed path as an absolute one: the published launcher read it relative to its working
    directory, a hand-written config means its own folder; ours reads a relative path against the YAML it is in."""
    candidates = [Path(d, path).resolve() for d in ([yaml_dir] if yaml_dir is not None else []) + [base_dir]]
    found = list(dict.fromkeys(c for c in candidates if c.is_file()))
    if len(found) > 1:
        raise ConfigError(f"training_args.deepspeed: {path!r} names two files, {found[0]} (beside the YAML) and "
                          f"{found[1]} (in the working directory); write the one you mean as an absolute path")
    if not found:
        notes.append(f"training_args.deepspeed: {path} exists neither beside the YAML nor in the working directory; "
                     f"written relative to the YAML's folder")
    return str(found[0] if found else candidates[0])
