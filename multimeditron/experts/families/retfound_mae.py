"""`retfound_mae`: RETFound (MAE-pretrained ViT-L/16 on retinal images) from its published MAE checkpoint."""
from __future__ import annotations

from typing import Any

from multimeditron.experts.base import IMAGENET_MEAN, IMAGENET_STD, ExpertSpec
from multimeditron.experts.checkpoints import (
    drop_keys,
    resample_pos_embed_key,
    unwrap_state_dict,
)
from multimeditron.experts.registry import register_expert
from multimeditron.experts.timm_vit import StateDict, TimmViTExpert, build_timm_family


class RetfoundMAEExpert(TimmViTExpert):
    # RETFound fine-tuning pools with global_pool="avg", which adds an fc_norm that MAE pretraining never had;
    # with options {"global_pool": "avg"} it stays at its identity initialisation.
    allowed_missing = ("fc_norm.",)

    def convert_checkpoint(self, raw: dict[str, Any], source: str) -> tuple[StateDict, list[str], str | None]:
        state_dict, entry = unwrap_state_dict(raw, entries=("model",), source=source)
        # The MAE decoder and its mask token only serve the reconstruction objective.
        state_dict, dropped = drop_keys(state_dict, prefixes=("decoder_",), names=("mask_token",))
        if any(k.startswith("fc_norm.") for k in self.vit.state_dict()):
            # With fc_norm, timm replaces the final norm by an identity, so the pretrained norm has no slot.
            state_dict, more = drop_keys(state_dict, prefixes=("norm.",))
            dropped += more
        resample_pos_embed_key(state_dict, "pos_embed", self.vit.pos_embed, self.num_prefix_tokens)
        return state_dict, dropped, entry


@register_expert("retfound_mae")
def build_retfound_mae(spec: ExpertSpec) -> RetfoundMAEExpert:
    return build_timm_family(spec, RetfoundMAEExpert, "vit_large_patch16_224", image_size=224, tiny_image_size=32,
                             mean=IMAGENET_MEAN, std=IMAGENET_STD)
