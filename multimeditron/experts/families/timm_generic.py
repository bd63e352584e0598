"""`timm:<name>`: any timm ViT as an expert (ImageNet normalisation unless overridden in `options`)."""
from __future__ import annotations

import re

from multimeditron.experts.base import IMAGENET_MEAN, IMAGENET_STD, ExpertSpec
from multimeditron.experts.registry import register_expert
from multimeditron.experts.timm_vit import TimmViTExpert, build_timm_family


@register_expert("timm:", prefix=True)
def build_timm(spec: ExpertSpec) -> TimmViTExpert:
    name = spec.id.removeprefix("timm:")
    patch = re.search(r"patch(\d+)", name)
    # The tiny input is two patches per side, whatever the patch size.
    tiny_size = 2 * int(patch.group(1)) if patch else 32
    return build_timm_family(spec, TimmViTExpert, name, image_size=224, tiny_image_size=tiny_size,
                             mean=IMAGENET_MEAN, std=IMAGENET_STD)
