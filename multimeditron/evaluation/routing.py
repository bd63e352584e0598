"""Router usage per modality in evaluation: which experts each image ran (the routing the vision stack returns with
its features, the one the model's output carries as `expert_mask`), summarised per modality as the fraction of its
images sent to each expert, by expert name (the names a gate's `class_experts` uses)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from multimeditron.model.gate_classifier import expert_name
from multimeditron.model.modeling import MultiMeditronForCausalLM
from multimeditron.model.processing import MultiMeditronProcessor

ALL = "all"  # the row over every image, beside the per-modality rows
NO_MODALITY = "(none)"  # rows without a modality value


def routes_images(model: MultiMeditronForCausalLM) -> bool:
    """Whether the model chooses experts per image (a learned or pretrained router); the uniform one runs them all."""
    return getattr(model.config, "router", "uniform") != "uniform"


def expert_names(model: MultiMeditronForCausalLM) -> list[str]:
    """Each expert's name (`expert_name`: an adapted folder's recorded name, else its registry id); names shared by
    several experts get their index in front (`0:clip`), so every column is one expert."""
    names = [expert_name(spec) for spec in model.config.experts]
    return [f"{i}:{n}" if names.count(n) > 1 else n for i, n in enumerate(names)]


@torch.inference_mode()
def route_images(model: MultiMeditronForCausalLM, processor: MultiMeditronProcessor,
                 images: Sequence[Sequence[Image.Image]], batch_size: int = 8) -> list[list[list[int]]]:
    """For each request's images, the indices of the experts each image ran: the router's selection on the same
    canvases generation sees (deterministic in eval mode, so the experts the answer was generated with)."""
    flat = [image for request in images for image in request]
    selected: list[list[int]] = []
    for start in range(0, len(flat), max(1, batch_size)):
        pixel_values = processor.images_to_pixel_values(flat[start:start + max(1, batch_size)])
        _, routing = model.vision(pixel_values.to(model.device, model.dtype))
        selected += [row.nonzero().flatten().tolist() for row in routing.selected.cpu()]
    out, offset = [], 0
    for request in images:
        out.append(selected[offset:offset + len(request)])
        offset += len(request)
    return out


def usage_by_modality(modalities: Sequence[str | None], selections: Sequence[Sequence[Sequence[int]]],
                      names: Sequence[str]) -> dict[str, Any]:
    """Per modality (one per row, for each of the row's images) and over all images: the number of images and the
    fraction of them that ran each expert (summing to top-k). {"experts": names, "per_modality": {modality:
    {"images": n, "usage": {name: fraction}}}, "all": {...}}; modalities sorted, rows without one as `(none)`."""
    counts: dict[str, list[int]] = {}
    for modality, row in zip(modalities, selections, strict=True):
        key = NO_MODALITY if modality is None or str(modality) == "" else str(modality)
        for experts in row:
            tally = counts.setdefault(key, [0] * (len(names) + 1))
            tally[-1] += 1
            for index in experts:
                tally[index] += 1

    def summary(tally: list[int]) -> dict[str, Any]:
        images = tally[-1]
        return {"images": images, "usage": {name: round(tally[i] / images, 4) if images else 0.0
                                            for i, name in enumerate(names)}}

    total = [sum(t[i] for t in counts.values()) for i in range(len(names) + 1)]
    return {"experts": list(names), "per_modality": {m: summary(counts[m]) for m in sorted(counts)},
            ALL: summary(total)}


def usage_table(usage: dict[str, Any]) -> str:
    """`| modality | images | expert 1 | expert 2 ... |` with each modality's fraction of images per expert, then
    the row over all images."""
    names = usage["experts"]
    lines = ["| modality | images | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    rows = [*usage["per_modality"].items(), (ALL, usage[ALL])]
    for modality, row in rows:
        lines.append(f"| {modality} | {row['images']} | "
                     + " | ".join(f"{row['usage'][name]:.2f}" for name in names) + " |")
    return "\n".join(lines)
