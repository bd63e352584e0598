"""`dinov2_vit{s,b,l,g}14[_reg4]`: Meta's DINOv2 backbones from their original `.pth` checkpoints (converted by timm)."""
from __future__ import annotations

from typing import Any

from multimeditron.experts.base import IMAGENET_MEAN, IMAGENET_STD, ExpertSpec
from multimeditron.experts.checkpoints import (
    drop_keys,
    flatten_block_chunks,
    strip_prefix,
    unwrap_state_dict,
)
from multimeditron.experts.registry import register_expert
from multimeditron.experts.timm_vit import StateDict, TimmViTExpert, build_timm_family

DINOV2_MODELS = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
    "dinov2_vits14_reg4": "vit_small_patch14_reg4_dinov2",
    "dinov2_vitb14_reg4": "vit_base_patch14_reg4_dinov2",
    "dinov2_vitl14_reg4": "vit_large_patch14_reg4_dinov2",
    "dinov2_vitg14_reg4": "vit_giant_patch14_reg4_dinov2",
}


def convert_meta_dinov2(state_dict: StateDict, vit: Any) -> tuple[StateDict, list[str]]:
    """Meta DINOv2 backbone keys -> timm keys via timm's own filter.

    timm recognises the Meta layout by its `mask_token` (which it discards), folds the class token's position into
    `cls_token` for register models, renames SwiGLU `w12`/`w3` and resamples the 518-px position grid.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    state_dict = flatten_block_chunks(state_dict)
    dropped = [k for k in ("mask_token",) if k in state_dict]
    return checkpoint_filter_fn(state_dict, vit), dropped


class Dinov2Expert(TimmViTExpert):
    def convert_checkpoint(self, raw: dict[str, Any], source: str) -> tuple[StateDict, list[str], str | None]:
        # Released backbones are plain state dicts; DINOv2 training checkpoints keep the EMA teacher under
        # `teacher` with `backbone.` keys next to the projection heads.
        state_dict, entry = unwrap_state_dict(raw, entries=("teacher",), source=source)
        state_dict = strip_prefix(strip_prefix(state_dict, "module."), "backbone.")
        state_dict, dropped = drop_keys(state_dict, prefixes=("dino_head.", "ibot_head."))
        state_dict, more = convert_meta_dinov2(state_dict, self.vit)
        return state_dict, dropped + more, entry


def _builder(model_name: str):
    def build(spec: ExpertSpec) -> TimmViTExpert:
        return build_timm_family(spec, Dinov2Expert, model_name, image_size=224, tiny_image_size=28,
                                 mean=IMAGENET_MEAN, std=IMAGENET_STD)

    return build


for _expert_id, _model_name in DINOV2_MODELS.items():
    register_expert(_expert_id)(_builder(_model_name))
