"""`mermed_fm`: MerMED-FM (DINO/iBOT-style ViT-B/16 over many medical modalities) from its training checkpoint."""
from __future__ import annotations

from typing import Any

from multimeditron.experts.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ExpertSpec,
    LoadReport,
)
from multimeditron.experts.checkpoints import (
    drop_keys,
    flatten_block_chunks,
    resample_pos_embed_key,
    strip_prefix,
    unwrap_state_dict,
)
from multimeditron.experts.registry import register_expert
from multimeditron.experts.timm_vit import StateDict, TimmViTExpert, build_timm_family

# Per-modality statistics published with MerMED-FM (one value = the same for the three channels).
MERMED_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "colour_fundus": ((0.338, 0.213, 0.133), (0.296, 0.190, 0.139)),
    "oct": ((0.198,) * 3, (0.222,) * 3),
    "chest_xray": ((0.508,) * 3, (0.312,) * 3),
    "pathology": ((0.721, 0.605, 0.705), (0.249, 0.271, 0.246)),
    "ct": ((0.330,) * 3, (0.325,) * 3),
    "ultrasound": ((0.147,) * 3, (0.181,) * 3),
    "skin": ((0.661, 0.519, 0.471), (0.240, 0.220, 0.229)),
    # MerMED's fine-tuning code falls back to ImageNet statistics for any other modality.
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
# The short names MerMED's own scripts use (`--modality cfp|cxr|CT|US`).
MERMED_ALIASES = {"cfp": "colour_fundus", "color_fundus": "colour_fundus", "cxr": "chest_xray", "us": "ultrasound",
                  "other": "imagenet"}


def mermed_normalization(name: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std for a modality name; None = ImageNet (MerMED's default)."""
    if name is None:
        return MERMED_NORMALIZATION["imagenet"]
    key = MERMED_ALIASES.get(name.lower(), name.lower())
    if key not in MERMED_NORMALIZATION:
        raise ValueError(f"mermed_fm: unknown normalization {name!r}; valid: {sorted(MERMED_NORMALIZATION)} "
                         f"(aliases {sorted(MERMED_ALIASES)})")
    return MERMED_NORMALIZATION[key]


class MerMEDExpert(TimmViTExpert):
    def load_published_checkpoint(self, source: str) -> LoadReport:
        report = super().load_published_checkpoint(source)
        if report.entry == "student":
            report.notes.append("no `teacher` entry (the released EMA model): the student weights were loaded")
        return report

    def convert_checkpoint(self, raw: dict[str, Any], source: str) -> tuple[StateDict, list[str], str | None]:
        # The released model is the EMA teacher; a checkpoint holding only the student is still usable.
        state_dict, entry = unwrap_state_dict(raw, entries=("teacher", "student"), source=source)
        state_dict = strip_prefix(state_dict, "module.")
        state_dict = strip_prefix(strip_prefix(state_dict, "backbone.encoder."), "backbone.")
        # `head.*` is the DINO/iBOT projection head; `masked_embed` the iBOT mask token: training only.
        state_dict, dropped = drop_keys(state_dict, prefixes=("head.",), names=("masked_embed", "mask_token"))
        state_dict = flatten_block_chunks(state_dict)
        # Layer-scale checkpoints name it gamma_1/gamma_2; timm calls it ls1/ls2 (needs options init_values).
        state_dict = {k.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma"): v
                      for k, v in state_dict.items()}
        resample_pos_embed_key(state_dict, "pos_embed", self.vit.pos_embed, self.num_prefix_tokens)
        return state_dict, dropped, entry


@register_expert("mermed_fm")
def build_mermed(spec: ExpertSpec) -> TimmViTExpert:
    mean, std = mermed_normalization(spec.normalization)
    return build_timm_family(spec, MerMEDExpert, "vit_base_patch16_224", image_size=224, tiny_image_size=32,
                             mean=mean, std=std)
