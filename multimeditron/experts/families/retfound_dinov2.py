"""`retfound_dinov2`: RETFound's DINOv2-pretrained ViT-L/14 from its training checkpoint (teacher backbone)."""
from __future__ import annotations

from multimeditron.experts.base import IMAGENET_MEAN, IMAGENET_STD, ExpertSpec
from multimeditron.experts.families.dinov2 import Dinov2Expert
from multimeditron.experts.registry import register_expert
from multimeditron.experts.timm_vit import TimmViTExpert, build_timm_family


class RetfoundDinov2Expert(Dinov2Expert):
    """Same conversion as Meta's DINOv2 (the checkpoint is a DINOv2 training state: `teacher`, `backbone.`,
    `dino_head`/`ibot_head`, `mask_token`, a position grid of another size)."""


@register_expert("retfound_dinov2")
def build_retfound_dinov2(spec: ExpertSpec) -> TimmViTExpert:
    return build_timm_family(spec, RetfoundDinov2Expert, "vit_large_patch14_dinov2", image_size=224,
                             tiny_image_size=28, mean=IMAGENET_MEAN, std=IMAGENET_STD)
