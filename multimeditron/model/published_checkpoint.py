"""A model folder of the published MultiMeditron toolkit (config `model_type: multimodal`, its module names, safetensors
shards, tokenizer) -> a MultiMeditron model and processor of this toolkit, with the same weights and the same forward.

Supported: the released mixture-of-experts models (`moe_meditron_clip`: shared projector; `moe_meditron_clip_pep`:
one projector per expert), with any of their fusions. Every weight of the published folder is mapped or the
conversion stops naming the keys it cannot place. The published computation is kept where it differs from this
toolkit's defaults: the raw last CLIP block (no post-LayerNorm), centre-cropped images, dense routing by the frozen
gate with the published class-to-expert reading, and the published cross-attention layer (`attn_variant: published`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from multimeditron.choices import PUBLISHED_FUSIONS, PUBLISHED_GATE_ARCH
from multimeditron.errors import UserError
from multimeditron.experts.checkpoints import read_checkpoint
from multimeditron.model.builder import build_processor
from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor
from multimeditron.model.tokens import add_image_tokens

PUBLISHED_MODEL_TYPE = "multimodal"
MOE_MODALITIES = {"moe_meditron_clip": "shared", "moe_meditron_clip_pep": "per_expert"}
MODALITY_PREFIX = "modalities_with_projection.0."
LLM_PREFIX = "model."
# The published placeholder of its MultiMediset data.
PUBLISHED_ATTACHMENT_TOKEN = "<|reserved_special_token_0|>"
# transformers buffers some published checkpoints persisted; rebuilt here, not weights.
IGNORED_SUFFIXES = ("embeddings.position_ids",)
# The published CLIP experts: transformers CLIP, `last_hidden_state` (the raw last block) without the CLS token.
CLIP_OPTIONS = {"backend": "hf", "post_norm": False}


class PublishedCheckpointError(UserError, ValueError):
    """A published model folder that cannot be converted, with the file or key at fault."""


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise PublishedCheckpointError(f"{folder}: no config.json; not a published MultiMeditron model folder")
    config = json.loads(path.read_text())
    if config.get("model_type") != PUBLISHED_MODEL_TYPE:
        raise PublishedCheckpointError(f"{path}: model_type {config.get('model_type')!r}, expected "
                                       f"{PUBLISHED_MODEL_TYPE!r} (a published MultiMeditron model)")
    modalities = config.get("modalities") or []
    if len(modalities) != 1 or modalities[0].get("model_type") not in MOE_MODALITIES:
        kinds = [m.get("model_type") for m in modalities]
        raise PublishedCheckpointError(f"{path}: modalities {kinds}; this converter reads one modality of type "
                                       f"{' or '.join(MOE_MODALITIES)}")
    return config


def _class_to_expert(modality: dict[str, Any], projection: str, where: str) -> list[int]:
    """The published reading of the gate's classes: by `class_names` in the gate folder's config (names of the
    experts), else class i = expert i. The per-expert variant sends class c to expert perm[c]; the shared variant
    gives expert j the probability of class perm[j] (it indexes where the other scatters), kept as published."""
    names = list(modality["expert_clip_names"])
    gate_config = Path(str(modality.get("gating_path") or "")) / "config.json"
    classes = json.loads(gate_config.read_text()).get("class_names") if gate_config.is_file() else None
    if not classes:
        return list(range(len(names)))
    unknown = [c for c in classes if c not in names]
    if unknown or len(classes) != len(names):
        raise PublishedCheckpointError(f"{where}: the gate's class_names {classes} do not name the experts {names} "
                                       f"one to one ({gate_config})")
    perm = [names.index(c) for c in classes]
    if projection == "per_expert":
        return perm
    inverse = [0] * len(perm)
    for expert, cls in enumerate(perm):
        inverse[cls] = expert
    return inverse


def _architecture(config: dict[str, Any], where: str) -> dict[str, Any]:
    modality = config["modalities"][0]
    projection = MOE_MODALITIES[modality["model_type"]]
    names = modality.get("expert_clip_names") or []
    if len(names) < 2:
        raise PublishedCheckpointError(f"{where}: modalities[0].expert_clip_names needs at least two experts")
    method = modality.get("fusion_method", "weighted_average")
    if method not in PUBLISHED_FUSIONS:
        raise PublishedCheckpointError(f"{where}: modalities[0].fusion_method {method!r} is not one of "
                                       f"{list(PUBLISHED_FUSIONS)}")
    if modality.get("projection_type", "mlp") != "mlp":
        raise PublishedCheckpointError(f"{where}: modalities[0].projection_type {modality['projection_type']!r}; "
                                       f"only the published mlp projector is known")
    arch: dict[str, Any] = {
        "experts": [{"id": "clip", "checkpoint": name, "options": dict(CLIP_OPTIONS)} for name in names],
        "fusion": PUBLISHED_FUSIONS[method], "projection": projection, "projector_type": "mlp3x_gelu",
        "image_geometry": "center_crop", "generalist_index": int(modality.get("generalist_idx", -1)) % len(names),
    }
    if method == "cross_attn":
        arch.update(attn_variant="published", attn_heads=int(modality.get("cross_attn_heads", 8)))
    gated = projection == "shared" or modality.get("gating_path")
    if gated:  # dense, as the published forward ran every expert whatever its top_k_experts
        arch.update(router="pretrained", router_classifier={
            "class_to_expert": _class_to_expert(modality, projection, where), "arch": PUBLISHED_GATE_ARCH,
            "trainable_stages": ["full"]})
    return arch


def _map_key(key: str, model: MultiMeditronForCausalLM) -> str | None:
    """The published parameter name -> ours (None: not a published name this converter knows)."""
    if key.startswith(LLM_PREFIX):
        return "language_model." + key[len(LLM_PREFIX):]
    if not key.startswith(MODALITY_PREFIX):
        return None
    parts = key[len(MODALITY_PREFIX):].split(".")
    head, rest = parts[0], parts[1:]
    if head == "experts" and rest and rest[0].isdigit():
        index = int(rest[0])
        if index >= len(model.vision.experts):
            return None
        expert = model.vision.experts[index]
        inner = next(name for name, module in expert.named_modules() if module is expert.vision)
        return ".".join(filter(None, [f"vision.experts.{index}", inner] + rest[1:]))
    if head == "gating_network" and rest[:1] == ["resnet"]:
        return ".".join(["vision.router.classifier.model"] + rest[1:])
    if head == "projector" and rest[:1] == ["projection"]:
        return ".".join(["vision.projectors.0"] + rest[1:])
    if head == "projectors" and len(rest) > 1 and rest[1] == "projection":
        return ".".join([f"vision.projectors.{rest[0]}"] + rest[2:])
    if head == "cross_attn":
        return ".".join(["vision.cross_attention"] + rest)
    return None


def convert_published_checkpoint(source: str | Path, tokenizer_dir: str | Path | None = None,
                                 attachment_token: str = PUBLISHED_ATTACHMENT_TOKEN,
                                 ) -> tuple[MultiMeditronForCausalLM, MultiMeditronProcessor]:
    """The published model folder `source` as this toolkit's model and processor (not yet saved). The tokenizer
    comes from `tokenizer_dir`, else from `source` (the published toolkit did not always save one)."""
    folder = Path(source)
    config = _read_config(folder)
    where = str(folder / "config.json")
    arch = _architecture(config, where)
    tokenizer_source = Path(tokenizer_dir) if tokenizer_dir else folder
    if not (tokenizer_source / "tokenizer_config.json").is_file():
        raise PublishedCheckpointError(f"{tokenizer_source}: no tokenizer (tokenizer_config.json); pass --tokenizer "
                                       f"with the tokenizer the model was trained with")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    vocab = config.get("vocab_size")
    if vocab is None or len(tokenizer) > vocab:
        raise PublishedCheckpointError(f"{where}: vocab_size {vocab} does not cover the tokenizer's {len(tokenizer)} "
                                       f"tokens ({tokenizer_source}); is it the model's tokenizer?")
    state = read_checkpoint(str(folder))
    dtype = next(iter(state.values())).dtype
    text_config = AutoConfig.from_pretrained(config["llm_path"])
    text_config.vocab_size = vocab  # the published model resized its embeddings to the tokenizer's length
    llm = AutoModelForCausalLM.from_config(text_config)
    _load_llm(llm, {k[len(LLM_PREFIX):]: v for k, v in state.items() if k.startswith(LLM_PREFIX)}, where)
    # After the published rows are in: the new image token's rows start at their mean, as for a new model.
    token_ids = add_image_tokens(tokenizer, llm)
    model = MultiMeditronForCausalLM(MultiMeditronConfig(text_config=llm.config, attachment_token=attachment_token,
                                                         base_llm=config["llm_path"], **token_ids, **arch),
                                     language_model=llm)
    _load_vision(model, {k: v for k, v in state.items() if not k.startswith(LLM_PREFIX)}, where)
    model.to(dtype)
    model.eval()
    return model, build_processor(model, tokenizer)


def _load_llm(llm: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    result = llm.load_state_dict(state, strict=False)
    tied = getattr(llm.config, "tie_word_embeddings", False)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise PublishedCheckpointError(
            f"{where}: the LLM weights (model.*) do not match {llm.config.model_type} built from llm_path: missing "
            f"{missing[:10]}, unknown {[LLM_PREFIX + k for k in result.unexpected_keys[:10]]}")


def _load_vision(model: MultiMeditronForCausalLM, state: dict[str, torch.Tensor], where: str) -> None:
    ours = model.vision.state_dict()
    mapped, unknown = {}, []
    for key, value in state.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        target = _map_key(key, model)
        if target is None or target.removeprefix("vision.") not in ours:
            unknown.append(key)
        else:
            mapped[target.removeprefix("vision.")] = value
    if unknown:
        raise PublishedCheckpointError(f"{where}: {len(unknown)} weight(s) this converter cannot place: "
                                       f"{', '.join(sorted(unknown)[:20])}" + (" ..." if len(unknown) > 20 else ""))
    buffers = {name for name, _ in model.vision.named_buffers()}
    missing = [k for k in ours if k not in mapped and k not in buffers]
    if missing:
        raise PublishedCheckpointError(f"{where}: the published weights lack {', '.join(missing[:20])}")
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in mapped.items() if v.shape != ours[k].shape]
    if wrong:
        raise PublishedCheckpointError(f"{where}: shapes differ from the architecture in config.json: "
                                       f"{'; '.join(wrong[:10])}")
    model.vision.load_state_dict(mapped, strict=False)
