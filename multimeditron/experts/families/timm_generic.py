"""`timm:<name>`: any timm ViT as an expert (ImageNet normalisation unless overridden in `options`)."""
from __future__ import annotations

from multimeditron.experts.base import IMAGENET_MEAN, IMAGENET_STD, ExpertSpec
from multimeditron.experts.registry import register_expert
from multimeditron.experts.timm_vit import TINY_VIT, TimmViTExpert


@register_expert("timm:", prefix=True)
def build_timm(spec: ExpertSpec) -> TimmViTExpert:
    options = dict(spec.options)
    mean = tuple(options.pop("mean", IMAGENET_MEAN))
    std = tuple(options.pop("std", IMAGENET_STD))
    if spec.tiny:
        options = {**TINY_VIT, **options}
    image_size = spec.image_size or (32 if spec.tiny else 224)
    return TimmViTExpert(spec.id, spec.id.removeprefix("timm:"), image_size, mean, std,
                         output=spec.output or "patch", model_kwargs=options)
