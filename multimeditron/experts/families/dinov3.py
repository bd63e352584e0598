"""`dinov3_*`: Meta's DINOv3 ViTs (RoPE, 4 storage tokens) from their original `.pth` checkpoints, converted by timm."""
from __future__ import annotations

from typing import Any

import torch

from multimeditron.experts.base import IMAGENET_MEAN, IMAGENET_STD, ExpertSpec
from multimeditron.experts.checkpoints import drop_keys, strip_prefix, unwrap_state_dict
from multimeditron.experts.registry import register_expert
from multimeditron.experts.timm_vit import StateDict, TimmViTExpert, build_timm_family

# Meta's S/B/L/H+ use a q/v bias (the k bias is masked to zero); timm's default variants have none, so ask for it
# and the conversion is exact whatever values the checkpoint holds. The 7B has no qkv bias.
DINOV3_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "dinov3_vits16": ("vit_small_patch16_dinov3", {"qkv_bias": True}),
    "dinov3_vitb16": ("vit_base_patch16_dinov3", {"qkv_bias": True}),
    "dinov3_vitl16": ("vit_large_patch16_dinov3", {"qkv_bias": True}),
    "dinov3_vith16plus": ("vit_huge_plus_patch16_dinov3", {"qkv_bias": True}),
    "dinov3_vit7b16": ("vit_7b_patch16_dinov3", {}),
}


class Dinov3Expert(TimmViTExpert):
    def convert_checkpoint(self, raw: dict[str, Any], source: str) -> tuple[StateDict, list[str], str | None]:
        from timm.models.eva import checkpoint_filter_fn

        state_dict, entry = unwrap_state_dict(raw, entries=("teacher",), source=source)
        state_dict = strip_prefix(strip_prefix(state_dict, "module."), "backbone.")
        # Pretraining-only tensors and buffers timm recomputes: the mask token, the RoPE periods, the k-bias mask,
        # the 7B's local-crop class norm and the training heads.
        state_dict, dropped = drop_keys(
            state_dict, names=("mask_token",), prefixes=("local_cls_norm.", "dino_head.", "ibot_head."),
            suffixes=(".bias_mask", "rope_embed.periods"),
        )
        state_dict, more = self._drop_zero_qkv_bias(state_dict)
        return checkpoint_filter_fn(state_dict, self.vit), dropped + more, entry

    def _drop_zero_qkv_bias(self, state_dict: StateDict) -> tuple[StateDict, list[str]]:
        """A model built without qkv bias may only skip checkpoint biases that are zero (q and v; k is masked)."""
        own = self.vit.state_dict()
        keys = [k for k in state_dict if k.endswith(".attn.qkv.bias") and k.replace("qkv.bias", "q_bias") not in own]
        nonzero = [k for k in keys if torch.count_nonzero(torch.cat(
            [state_dict[k].chunk(3)[0], state_dict[k].chunk(3)[2]])) > 0]
        if nonzero:
            raise ValueError(
                f"checkpoint has non-zero qkv biases {nonzero[:5]} but expert {self.expert_id} was built without "
                f"qkv bias; set options {{'qkv_bias': True}}"
            )
        return drop_keys(state_dict, names=keys)


def _builder(model_name: str, kwargs: dict[str, Any]):
    def build(spec: ExpertSpec) -> TimmViTExpert:
        # global_pool="token": DINOv3's global feature is the class token; timm averages by default.
        return build_timm_family(spec, Dinov3Expert, model_name, image_size=224, tiny_image_size=32,
                                 mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                 model_kwargs={"global_pool": "token", **kwargs})

    return build


for _expert_id, (_model_name, _kwargs) in DINOV3_MODELS.items():
    register_expert(_expert_id)(_builder(_model_name, _kwargs))
