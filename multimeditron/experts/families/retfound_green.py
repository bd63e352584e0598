"""`retfound_green`: RETFound-Green (ViT-S/14 with 4 registers at 392 px, token-reconstruction pretrained)."""
from __future__ import annotations

from typing import Any

from multimeditron.experts.base import ExpertSpec
from multimeditron.experts.checkpoints import resample_pos_embed_key, unwrap_state_dict
from multimeditron.experts.registry import register_expert
from multimeditron.experts.timm_vit import StateDict, TimmViTExpert, build_timm_family


class RetfoundGreenExpert(TimmViTExpert):
    def convert_checkpoint(self, raw: dict[str, Any], source: str) -> tuple[StateDict, list[str], str | None]:
        # Already timm keys; only the position grid may differ from the expert's input size. The model does not
        # embed class/register positions (no_embed_class), so every position is a patch position.
        state_dict, entry = unwrap_state_dict(raw, source=source)
        resample_pos_embed_key(state_dict, "pos_embed", self.vit.pos_embed, 0)
        return state_dict, [], entry


@register_expert("retfound_green")
def build_retfound_green(spec: ExpertSpec) -> TimmViTExpert:
    # The paper's notebooks pool the mean of all tokens; cls_pool="token" or "avg" select the alternatives.
    return build_timm_family(spec, RetfoundGreenExpert, "vit_small_patch14_reg4_dinov2", image_size=392,
                             tiny_image_size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), cls_pool="avg_all")
