"""`biomedclip`: the vision tower of BiomedCLIP (OpenCLIP: timm ViT-B/16 trunk + linear 768->512 projection)."""
from __future__ import annotations

import copy
import json
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

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
from multimeditron.experts.registry import register_expert
from multimeditron.experts.timm_vit import TINY_VIT, timm_layers

BIOMEDCLIP_HUB_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Option under which a built expert records the OpenCLIP model_cfg (`embed_dim`, `vision_cfg`) it resolved.
OPEN_CLIP_MODEL_CFG = "open_clip_model_cfg"

# The vision half of BiomedCLIP's published open_clip_config.json, used when the checkpoint brings none.
BIOMEDCLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 224},
    },
    "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
}
TINY_EMBED_DIM = 16

# Keys of OpenCLIP text towers (built-in and HF `text.*`) and of the contrastive logit scale: not part of the
# vision expert, dropped on purpose.
TEXT_TOWER_PREFIXES = ("text.", "transformer.", "token_embedding.", "ln_final.", "text_decoder.")
TEXT_TOWER_NAMES = ("positional_embedding", "text_projection", "logit_scale", "logit_bias", "attn_mask")


def split_open_clip_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """OpenCLIP model state dict -> (vision tower keys without `visual.`, dropped text-tower keys).

    Keys that are neither vision nor known text-tower keys stay in the result (with their full name) so that the
    strict load reports them as unexpected.
    """
    state_dict = strip_prefix(state_dict, "module.")  # checkpoints saved from DistributedDataParallel
    state_dict, dropped = drop_keys(state_dict, prefixes=TEXT_TOWER_PREFIXES, names=TEXT_TOWER_NAMES)
    return strip_prefix(state_dict, "visual."), dropped


class OpenCLIPTimmTower(nn.Module):
    """OpenCLIP's timm vision tower (`trunk` + `head.proj`) with open_clip's module names, so `visual.*` keys load
    unchanged. Built here rather than by `open_clip.timm_model.TimmModel` because that class passes no
    architecture arguments (tiny variant, input size) to timm."""

    def __init__(self, embed_dim: int, vision_cfg: dict[str, Any], image_size: int,
                 timm_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        import timm

        proj = vision_cfg.get("timm_proj", "linear")
        pool = vision_cfg.get("timm_pool", "")
        if proj not in ("linear", "none") or pool in ("abs_attn", "rot_attn"):
            raise NotImplementedError(f"OpenCLIP timm towers with proj={proj!r}, pool={pool!r} are not supported "
                                      f"(supported: proj 'linear'/'none' with the trunk's own pooling)")
        extra = {"global_pool": pool} if pool else {}
        self.trunk = timm.create_model(vision_cfg["timm_model_name"], pretrained=False, num_classes=0,
                                       img_size=image_size, **extra, **(timm_kwargs or {}))
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if proj == "linear":
            layers["drop"] = nn.Dropout(vision_cfg.get("timm_drop", 0.0))
            layers["proj"] = nn.Linear(self.trunk.num_features, embed_dim,
                                       bias=bool(vision_cfg.get("timm_proj_bias", False)))
        self.head = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class OpenCLIPTimmExpert(VisionExpert):
    """Patch tokens of an OpenCLIP timm tower's trunk (what a VLM consumes); `image_embedding` gives the
    projected contrastive embedding. The `cls` output pools the trunk's tokens as `cls_pool` says (class token by
    default)."""

    checkpoint_files = OPEN_CLIP_WEIGHTS

    def __init__(self, expert_id: str, config: dict[str, Any], image_size: int, output: str,
                 mean: tuple[float, ...], std: tuple[float, ...], timm_kwargs: dict[str, Any] | None = None,
                 embed_dim: int | None = None, cls_pool: str = "token") -> None:
        super().__init__()
        model_cfg = config["model_cfg"]
        self.expert_id, self.output, self.image_size = expert_id, output, image_size
        self.cls_pool = check_pool(expert_id, cls_pool)
        embed_dim = embed_dim or model_cfg["embed_dim"]
        self.visual = OpenCLIPTimmTower(embed_dim, model_cfg["vision_cfg"], image_size, timm_kwargs)
        # The vision half of the resolved model_cfg, as `architecture_options` records it.
        self.model_cfg = {"embed_dim": int(embed_dim),
                          "vision_cfg": {**copy.deepcopy(model_cfg["vision_cfg"]), "image_size": image_size}}
        trunk = self.visual.trunk
        self.feature_dim = trunk.num_features
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 1))
        grid = trunk.patch_embed.grid_size
        patches = grid[0] * grid[1]
        self.patch_grid = grid[0] if output == "patch" and grid[0] == grid[1] else None
        self.num_tokens = {"patch": patches, "cls": 1, "all": patches + self.num_prefix_tokens}[output]
        self._set_normalization(mean, std)

    supports_layers = True

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.visual.trunk.forward_features(pixel_values)
        pooled = self.pool_tokens(tokens) if self.output == "cls" else None
        return select_tokens(tokens, self.num_prefix_tokens, self.output, pooled)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return pool_global(tokens, self.num_prefix_tokens, self.cls_pool)

    def encode_layers(self, pixel_values: torch.Tensor, n: int) -> list[torch.Tensor]:
        return timm_layers(self.visual.trunk, pixel_values, n)

    def image_embedding(self, canvas: torch.Tensor) -> torch.Tensor:
        """OpenCLIP `encode_image` (unnormalised): canvas (B, 3, S, S) -> (B, embed_dim)."""
        return self.visual(self.preprocess(canvas))

    def architecture_options(self) -> dict[str, Any]:
        # The normalisation may come from the checkpoint's open_clip_config.json too.
        return {OPEN_CLIP_MODEL_CFG: copy.deepcopy(self.model_cfg), "mean": list(self.mean), "std": list(self.std)}

    def load_published_checkpoint(self, source: str) -> LoadReport:
        raw = read_checkpoint(source, self.checkpoint_files)
        # OpenCLIP training checkpoints keep the weights under `state_dict`.
        state_dict, entry = unwrap_state_dict(raw, entries=("state_dict",), source=source)
        state_dict, dropped = split_open_clip_state_dict(state_dict)
        trunk = self.visual.trunk
        prefix = 0 if getattr(trunk, "no_embed_class", False) else self.num_prefix_tokens
        resample_pos_embed_key(state_dict, "trunk.pos_embed", trunk.pos_embed, prefix)
        return load_state_dict_checked(self.visual, state_dict, source, dropped=dropped, entry=entry)


def open_clip_config_for(checkpoint: str | None, default: dict[str, Any], known_hub_id: str | None) -> dict[str, Any]:
    """The open_clip_config.json that travels with a checkpoint, else `default`. A hub repository's config is
    downloaded unless it is the repository `default` describes."""
    if checkpoint:
        download = checkpoint.removeprefix("hf-hub:") != (known_hub_id or "").removeprefix("hf-hub:")
        path = resolve_companion_file(checkpoint, OPEN_CLIP_CONFIG, download=download)
        if path is not None:
            return json.loads(path.read_text())
    return copy.deepcopy(default)


@register_expert("biomedclip")
def build_biomedclip(spec: ExpertSpec) -> OpenCLIPTimmExpert:
    """Options: `mean`, `std`, `cls_pool` (token | avg | avg_all: the `cls` output), `open_clip_model_cfg` (the
    recorded OpenCLIP model_cfg: `embed_dim`, `vision_cfg`; when present, no open_clip_config.json beside the
    checkpoint is read), any other = timm kwargs of the trunk."""
    options = dict(spec.options)
    cls_pool = options.pop("cls_pool", "token")
    recorded = options.pop(OPEN_CLIP_MODEL_CFG, None)
    if recorded is not None:
        if not isinstance(recorded, dict) or "embed_dim" not in recorded or not isinstance(
                recorded.get("vision_cfg"), dict):
            raise ValueError(f"biomedclip: options.{OPEN_CLIP_MODEL_CFG} must be an OpenCLIP model_cfg mapping "
                             f"with `embed_dim` and a `vision_cfg` mapping")
        config = {"model_cfg": copy.deepcopy(recorded)}
    else:
        config = open_clip_config_for(spec.checkpoint, BIOMEDCLIP_CONFIG, BIOMEDCLIP_HUB_ID)
    preprocess = config.get("preprocess_cfg", {})
    mean = tuple(options.pop("mean", preprocess.get("mean", CLIP_MEAN)))
    std = tuple(options.pop("std", preprocess.get("std", CLIP_STD)))
    timm_kwargs = {**(TINY_VIT if spec.tiny else {}), **options}
    default_size = config["model_cfg"]["vision_cfg"].get("image_size", 224)
    default_size = default_size[0] if isinstance(default_size, (list, tuple)) else int(default_size)
    image_size = spec.image_size or (32 if spec.tiny else default_size)
    return OpenCLIPTimmExpert(spec.id, config, image_size, spec.output or "patch", mean, std, timm_kwargs,
                              embed_dim=TINY_EMBED_DIM if spec.tiny else None, cls_pool=cls_pool)
