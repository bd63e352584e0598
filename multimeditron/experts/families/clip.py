"""`clip`: a CLIP vision tower as an expert, from OpenCLIP (default ViT-L-14) or a transformers CLIP folder."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from multimeditron.experts.base import (
    CLIP_MEAN,
    CLIP_STD,
    ExpertSpec,
    LoadReport,
    VisionExpert,
    check_pool,
    pool_global,
    select_tokens,
)
from multimeditron.experts.checkpoints import (
    drop_keys,
    load_state_dict_checked,
    read_checkpoint,
    resample_pos_embed_key,
    resolve_companion_file,
    strip_prefix,
    unwrap_state_dict,
)
from multimeditron.experts.families.biomedclip import (
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_MODEL_CFG,
    OPEN_CLIP_WEIGHTS,
    split_open_clip_state_dict,
)
from multimeditron.experts.registry import register_expert

DEFAULT_OPEN_CLIP_MODEL = "ViT-L-14"
TINY_OPEN_CLIP = dict(width=32, layers=2, head_width=16)  # 2 heads
TINY_EMBED_DIM = 16
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# Option names under which a built expert records the architecture it resolved from files (see build_clip).
HF_VISION_CONFIG = "hf_vision_config"


def _check_layer(expert_id: str, layer: int, depth: int) -> int:
    # Negative indices only, as in HF's hidden_states[-k]: -1 = last block, -2 = penultimate (LLaVA's choice).
    if not isinstance(layer, int) or not -depth <= layer <= -1:
        raise ValueError(f"{expert_id}: layer must be a negative block index in [-{depth}, -1], got {layer!r}")
    return layer


def _token_counts(output: str, grid: int) -> tuple[int, int | None]:
    patches = grid * grid
    return {"patch": patches, "cls": 1, "all": patches + 1}[output], (grid if output == "patch" else None)


class _CLIPPooling(VisionExpert):
    """The `cls` output of both CLIP backends: the chosen layer's tokens pooled as `cls_pool` says (class token by
    default)."""

    cls_pool = "token"

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return pool_global(tokens, 1, self.cls_pool)

    def select(self, tokens: torch.Tensor) -> torch.Tensor:
        return select_tokens(tokens, 1, self.output, self.pool_tokens(tokens) if self.output == "cls" else None)


class OpenCLIPVisionExpert(_CLIPPooling):
    """OpenCLIP's own VisionTransformer. Tokens of the last layer go through `ln_post` (as OpenCLIP's
    `output_tokens`) unless `post_norm` is false; earlier layers are the raw block outputs."""

    def __init__(self, expert_id: str, embed_dim: int, vision_cfg: dict[str, Any], output: str, layer: int,
                 mean: tuple[float, ...], std: tuple[float, ...], quick_gelu: bool = False,
                 post_norm: bool = True, cls_pool: str = "token") -> None:
        super().__init__()
        self.post_norm = bool(post_norm)
        self.cls_pool = check_pool(expert_id, cls_pool)
        from open_clip.model import _build_vision_tower
        from open_clip.transformer import VisionTransformer

        self.visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)
        self.model_cfg = {"embed_dim": int(embed_dim), "vision_cfg": copy.deepcopy(dict(vision_cfg))}
        self.quick_gelu = bool(quick_gelu)
        if not isinstance(self.visual, VisionTransformer):
            raise NotImplementedError(f"{expert_id}: only OpenCLIP ViT towers are supported here, got "
                                      f"{type(self.visual).__name__} (timm towers: use `biomedclip`-style configs)")
        self.expert_id, self.output = expert_id, output
        self.layer = _check_layer(expert_id, layer, len(self.visual.transformer.resblocks))
        self.image_size = self.visual.image_size[0]
        self.feature_dim = self.visual.transformer.width
        self.num_tokens, self.patch_grid = _token_counts(output, self.visual.grid_size[0])
        self._set_normalization(mean, std)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        depth = len(self.visual.transformer.resblocks)
        out = self.visual.forward_intermediates(
            pixel_values, indices=[depth + self.layer], stop_early=True,
            normalize_intermediates=self.layer == -1 and self.post_norm,
            intermediates_only=True, output_fmt="NLC", output_extra_tokens=True,
        )
        tokens = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
        return self.select(tokens)

    def architecture_options(self) -> dict[str, Any]:
        return {"backend": "open_clip", OPEN_CLIP_MODEL_CFG: copy.deepcopy(self.model_cfg),
                "quick_gelu": self.quick_gelu}

    def load_published_checkpoint(self, source: str) -> LoadReport:
        raw = read_checkpoint(source, OPEN_CLIP_WEIGHTS)
        state_dict, entry = unwrap_state_dict(raw, entries=("state_dict",), source=source)
        state_dict, dropped = split_open_clip_state_dict(state_dict)
        resample_pos_embed_key(state_dict, "positional_embedding", self.visual.positional_embedding, 1)
        return load_state_dict_checked(self.visual, state_dict, source, dropped=dropped, entry=entry)


class HFCLIPVisionExpert(_CLIPPooling):
    """transformers' CLIPVisionModel. Layer -1 applies `post_layernorm` to every token (like OpenCLIP's `ln_post`);
    other layers, and layer -1 with `post_norm` false (the published `last_hidden_state`), are raw
    `hidden_states[layer]`."""

    def __init__(self, expert_id: str, config: Any, output: str, layer: int,
                 mean: tuple[float, ...], std: tuple[float, ...], post_norm: bool = True,
                 cls_pool: str = "token") -> None:
        super().__init__()
        from transformers import CLIPVisionModel

        self.post_norm = bool(post_norm)
        self.cls_pool = check_pool(expert_id, cls_pool)
        self.model = CLIPVisionModel(config)
        self.expert_id, self.output = expert_id, output
        self.layer = _check_layer(expert_id, layer, config.num_hidden_layers)
        self.image_size = config.image_size
        self.feature_dim = config.hidden_size
        self.num_tokens, self.patch_grid = _token_counts(output, config.image_size // config.patch_size)
        self._set_normalization(mean, std)

    def architecture_options(self) -> dict[str, Any]:
        return {"backend": "hf", HF_VISION_CONFIG: hf_vision_config_dict(self.model.config)}

    @property
    def vision(self) -> torch.nn.Module:
        # transformers 4 nests the tower under `vision_model`; transformers 5 puts it at the top.
        return getattr(self.model, "vision_model", self.model)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.layer]
        if self.layer == -1 and self.post_norm:
            hidden = self.vision.post_layernorm(hidden)
        return self.select(hidden)

    def load_published_checkpoint(self, source: str) -> LoadReport:
        raw = read_checkpoint(source, HF_WEIGHTS)
        state_dict, entry = unwrap_state_dict(raw, source=source)
        # A CLIPModel checkpoint carries the text tower and both projections; the vision tower is `vision_model.*`.
        state_dict, dropped = drop_keys(state_dict, prefixes=("text_model.", "text_projection.",
                                                              "visual_projection."), names=("logit_scale",),
                                        suffixes=("embeddings.position_ids",))
        state_dict = strip_prefix(state_dict, "vision_model.")
        resample_pos_embed_key(state_dict, "embeddings.position_embedding.weight",
                               self.vision.embeddings.position_embedding.weight, 1)
        return load_state_dict_checked(self.vision, state_dict, source, dropped=dropped, entry=entry)


# Bookkeeping fields of a transformers config that say nothing about the architecture.
_HF_CONFIG_NOISE = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")


def hf_vision_config_dict(config: Any) -> dict[str, Any]:
    """A CLIPVisionConfig -> the JSON dict recorded in `options.hf_vision_config` (architecture fields only)."""
    data = {k: v for k, v in config.to_diff_dict().items() if k not in _HF_CONFIG_NOISE}
    data["model_type"] = "clip_vision_model"
    return json.loads(json.dumps(data))


def _clip_vision_config(vision: dict[str, Any], image_size: int | None, where: str) -> Any:
    from transformers import CLIPVisionConfig

    if not isinstance(vision, dict):
        raise ValueError(f"clip: {where} must be a mapping (a transformers CLIPVisionConfig), got "
                         f"{type(vision).__name__}")
    if vision.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ValueError(f"clip: {where} describes a {vision.get('model_type')!r} model, expected a "
                         f"clip_vision_model config")
    vision = dict(vision)
    if image_size:
        vision["image_size"] = image_size  # the checkpoint's position embeddings are resampled on load
    return CLIPVisionConfig.from_dict(vision)


def _hf_vision_config(config_path: Path, image_size: int | None) -> Any:
    data = json.loads(config_path.read_text())
    if data.get("model_type") not in ("clip", "clip_vision_model"):
        raise ValueError(f"clip: {config_path} describes a {data.get('model_type')!r} model, expected a "
                         f"transformers CLIPModel or CLIPVisionModel")
    vision = dict(data.get("vision_config", data))
    vision["model_type"] = "clip_vision_model"  # the vision half of a CLIPModel config
    return _clip_vision_config(vision, image_size, str(config_path))


def _recorded_open_clip_cfg(model_cfg: Any, where: str) -> dict[str, Any]:
    if not isinstance(model_cfg, dict) or "embed_dim" not in model_cfg or not isinstance(
            model_cfg.get("vision_cfg"), dict):
        raise ValueError(f"{where}: options.{OPEN_CLIP_MODEL_CFG} must be an OpenCLIP model_cfg mapping with "
                         f"`embed_dim` and a `vision_cfg` mapping")
    return copy.deepcopy(model_cfg)


def _open_clip_model_cfg(name: str | None, checkpoint: str | None) -> dict[str, Any]:
    import open_clip

    if name is None and checkpoint:
        path = resolve_companion_file(checkpoint, OPEN_CLIP_CONFIG, download=checkpoint.startswith("hf-hub:"))
        if path is not None:
            return json.loads(path.read_text())["model_cfg"]
    name = name or DEFAULT_OPEN_CLIP_MODEL
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"clip: unknown OpenCLIP model {name!r}; e.g. {open_clip.list_models()[:8]}")
    return cfg


@register_expert("clip")
def build_clip(spec: ExpertSpec) -> VisionExpert:
    """Options: `model` (OpenCLIP model name, default ViT-L-14), `layer` (-1 last, -2 penultimate, ...),
    `post_norm` (default true: the last layer goes through the post-LayerNorm; false: the raw last block, as the
    published MultiMeditron's `last_hidden_state`), `backend` ("open_clip" or "hf"; default: "hf" when the checkpoint
    folder has a transformers config.json), `quick_gelu`, `mean`, `std`, `cls_pool` (token | avg | avg_all: how the
    `cls` output pools the chosen layer's tokens).

    Recorded architectures (written by `architecture_options` into a built model's config; when present nothing
    beside the checkpoint is read): `hf_vision_config` (a transformers CLIPVisionConfig dict) or
    `open_clip_model_cfg` (an OpenCLIP model_cfg: `embed_dim`, `vision_cfg`)."""
    options = dict(spec.options)
    layer = options.pop("layer", -1)
    post_norm = options.pop("post_norm", True)
    if not isinstance(post_norm, bool):
        raise ValueError(f"clip: option post_norm must be true or false, got {post_norm!r}")
    backend = options.pop("backend", None)
    model_name = options.pop("model", None)
    quick_gelu = options.pop("quick_gelu", None)
    mean = tuple(options.pop("mean", CLIP_MEAN))
    std = tuple(options.pop("std", CLIP_STD))
    cls_pool = check_pool("clip", options.pop("cls_pool", "token"))
    recorded_hf = options.pop(HF_VISION_CONFIG, None)
    recorded_open_clip = options.pop(OPEN_CLIP_MODEL_CFG, None)
    if options:
        raise ValueError(f"clip: unknown option(s) {sorted(options)}; valid: backend, cls_pool, layer, mean, "
                         f"model, post_norm, quick_gelu, std, {HF_VISION_CONFIG}, {OPEN_CLIP_MODEL_CFG}")
    output = spec.output or "patch"
    checkpoint = spec.checkpoint
    if backend not in (None, "open_clip", "hf"):
        raise ValueError(f"clip: backend must be 'open_clip' or 'hf', got {backend!r}")
    if recorded_hf is not None and recorded_open_clip is not None:
        raise ValueError(f"clip: options {HF_VISION_CONFIG} and {OPEN_CLIP_MODEL_CFG} exclude each other")
    if (recorded_hf is not None and backend == "open_clip") or (recorded_open_clip is not None and backend == "hf"):
        raise ValueError(f"clip: backend {backend!r} contradicts the recorded "
                         f"{HF_VISION_CONFIG if recorded_hf is not None else OPEN_CLIP_MODEL_CFG}")

    # A recorded architecture wins: no config file is read and the hub is not touched.
    if recorded_hf is not None:
        config = _clip_vision_config(recorded_hf, spec.image_size, f"options.{HF_VISION_CONFIG}")
        return HFCLIPVisionExpert(spec.id, config, output, layer, mean, std, post_norm, cls_pool)
    if recorded_open_clip is not None:
        return _build_open_clip(spec, _recorded_open_clip_cfg(recorded_open_clip, "clip"), output, layer, mean,
                                std, quick_gelu, post_norm, cls_pool)

    hf_config = None
    if checkpoint and backend == "hf":
        hf_config = resolve_companion_file(checkpoint, "config.json")
        if hf_config is None:
            raise FileNotFoundError(f"clip: no transformers config.json for checkpoint {checkpoint!r}")
    elif checkpoint and backend is None and Path(checkpoint).expanduser().is_dir():
        folder = Path(checkpoint).expanduser()
        # Hub snapshots of OpenCLIP models may carry a transformers config too; the weights present decide.
        has_hf_weights = any((folder / n).is_file() for n in HF_WEIGHTS + ("model.safetensors.index.json",))
        if (folder / "config.json").is_file() and (has_hf_weights or not (folder / OPEN_CLIP_CONFIG).is_file()):
            hf_config = folder / "config.json"
    if hf_config is not None:
        # The folder's config defines the architecture, so `tiny` has nothing to shrink here.
        config = _hf_vision_config(hf_config, spec.image_size)
        return HFCLIPVisionExpert(spec.id, config, output, layer, mean, std, post_norm, cls_pool)

    return _build_open_clip(spec, _open_clip_model_cfg(model_name, checkpoint), output, layer, mean, std,
                            quick_gelu, post_norm, cls_pool)


def _build_open_clip(spec: ExpertSpec, model_cfg: dict[str, Any], output: str, layer: int,
                     mean: tuple[float, ...], std: tuple[float, ...], quick_gelu: bool | None,
                     post_norm: bool = True, cls_pool: str = "token") -> VisionExpert:
    # `tiny` and `image_size` are re-applied to a recorded (already resolved) config: both are idempotent.
    vision_cfg = dict(model_cfg["vision_cfg"])
    embed_dim = model_cfg["embed_dim"]
    if spec.tiny:
        vision_cfg.update(TINY_OPEN_CLIP)
        vision_cfg["image_size"] = 2 * int(vision_cfg.get("patch_size", 16))
        embed_dim = TINY_EMBED_DIM
    if spec.image_size:
        vision_cfg["image_size"] = spec.image_size
    if quick_gelu is None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
    return OpenCLIPVisionExpert(spec.id, embed_dim, vision_cfg, output, layer, mean, std, quick_gelu=quick_gelu,
                                post_norm=post_norm, cls_pool=cls_pool)
