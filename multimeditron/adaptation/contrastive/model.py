"""The contrastive model: the expert's OpenCLIP vision tower as the `visual` of an open_clip model whose text tower,
tokenizer and logit scale come from the family's checkpoint, trained with open_clip's `ClipLoss`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimeditron.adaptation.contrastive.recipe import (
    TEXT_FILE,
    TINY_TEXT,
    TINY_TEXT_CFG,
    TINY_TOKENIZER,
    ContrastiveSection,
)
from multimeditron.adaptation.errors import AdaptationError
from multimeditron.experts.base import ExpertSpec, VisionExpert


def _tower_of(expert: VisionExpert, where: str = "expert.spec") -> nn.Module:
    if not hasattr(expert, "model_cfg") or not hasattr(expert, "visual"):
        raise AdaptationError(f"{where}: contrastive training needs an OpenCLIP vision tower (biomedclip, or clip "
                              f"with the open_clip backend); {expert.expert_id} is a {type(expert).__name__}")
    return expert.visual


def text_source(spec: ExpertSpec, tiny: bool, section: ContrastiveSection) -> tuple[str, str | None]:
    """(open_clip model name / hf-hub id of the text tower and tokenizer, its weights) for `spec`: the recipe's,
    else an adapted folder's own text tower, else the family's checkpoint (BiomedCLIP's hub repository; a CLIP hub
    repository, or the open_clip model the expert names with its checkpoint file or tag)."""
    from multimeditron.experts.adapted import is_adapted_checkpoint, read_adapted_record
    from multimeditron.experts.families.biomedclip import BIOMEDCLIP_HUB_ID
    from multimeditron.experts.families.clip import DEFAULT_OPEN_CLIP_MODEL

    checkpoint = spec.checkpoint
    if section.text is not None:
        return section.text, section.text_pretrained
    if is_adapted_checkpoint(checkpoint) and (Path(checkpoint) / TEXT_FILE).is_file():
        recorded = read_adapted_record(checkpoint).get("provenance", {}).get("text")
        return recorded or (TINY_TEXT if tiny else DEFAULT_OPEN_CLIP_MODEL), str(Path(checkpoint) / TEXT_FILE)
    if tiny:
        return TINY_TEXT, section.text_pretrained
    if checkpoint and checkpoint.startswith("hf-hub:"):
        return checkpoint, section.text_pretrained
    if spec.id == "biomedclip":
        return BIOMEDCLIP_HUB_ID, section.text_pretrained
    return str(spec.options.get("model", DEFAULT_OPEN_CLIP_MODEL)), section.text_pretrained or checkpoint


def build_clip_model(expert: VisionExpert, spec: ExpertSpec, tiny: bool,
                     section: ContrastiveSection) -> tuple[nn.Module, Any, int, tuple[str, str | None]]:
    """(open_clip model whose `visual` is the expert's tower, tokenizer, context length, text source)."""
    import open_clip

    tower = _tower_of(expert)
    embed_dim = int(expert.model_cfg["embed_dim"])
    source, weights = text_source(spec, tiny, section)
    weight_file = weights if weights and Path(weights).expanduser().is_file() else None
    if source == TINY_TEXT:
        if weights and weight_file is None:
            raise AdaptationError(f"contrastive.text_pretrained: {weights} is not a file (the tiny text tower "
                                  f"loads only a {TEXT_FILE})")
        clip = open_clip.CLIP(embed_dim, {"width": 32, "layers": 1, "head_width": 16, "image_size": 32,
                                          "patch_size": 16}, dict(TINY_TEXT_CFG))
        tokenizer = open_clip.get_tokenizer(TINY_TOKENIZER)
    else:
        clip = open_clip.create_model(source, pretrained=None if weight_file else weights)
        tokenizer = open_clip.get_tokenizer(source)
    clip.visual = tower  # the expert's own module: what trains is what the registry loads
    if weight_file is not None:
        _load_text_tower(clip, weight_file)
    context = int(section.context_length or getattr(clip, "context_length", 77))
    with torch.no_grad():
        width = clip.encode_text(tokenizer(["x"], context_length=context)).shape[-1]
    if width != embed_dim:
        raise AdaptationError(f"contrastive.text: the text tower of {source} embeds into {width} dimensions, the "
                              f"expert {expert.expert_id}'s tower into {embed_dim}; pair it with its own CLIP model")
    return clip, tokenizer, context, (source, weights)


def text_state(clip: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items() if not k.startswith("visual.")}


def _load_text_tower(clip: nn.Module, file: str) -> None:
    from multimeditron.experts.checkpoints import load_weight_file

    state = {k: v for k, v in load_weight_file(file).items() if not k.startswith("visual.")}
    missing, unexpected = clip.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("visual.")]
    if missing or unexpected:
        raise AdaptationError(f"contrastive.text_pretrained: {file} does not match the text tower: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}")


class ContrastiveObjective(nn.Module):
    """open_clip's model and `ClipLoss` as the engine's model: `forward(pixel_values, input_ids)` -> {"loss",
    "logits": [image embedding | text embedding] (normalised), which the metrics split}. Under several processes
    the training loss sees the embeddings of every process (open_clip's gather_with_grad)."""

    def __init__(self, clip: nn.Module, expert: VisionExpert) -> None:
        super().__init__()
        self.clip = clip
        self._expert = (expert,)  # its preprocessing only; its tower is clip.visual (one copy of the weights)

    def embed(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.clip.encode_image(self._expert[0].preprocess(pixel_values), normalize=True)
        return image.float(), self.clip.encode_text(input_ids, normalize=True).float()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`labels` (the pairs' indices) only make the engine gather the embeddings for the metrics."""
        from open_clip import ClipLoss

        image, text = self.embed(pixel_values, input_ids)
        # Training: every process's embeddings enter the loss; evaluation: each batch on its own.
        distributed = self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
        loss_fn = ClipLoss(local_loss=distributed, gather_with_grad=distributed,
                           rank=torch.distributed.get_rank() if distributed else 0,
                           world_size=torch.distributed.get_world_size() if distributed else 1)
        # open_clip clamps the learned temperature at 100 (its training loop, after each step)
        scale = self.clip.logit_scale.clamp(max=math.log(100)).exp()
        return {"loss": loss_fn(image, text, scale), "logits": torch.cat([image, text], dim=-1)}


def param_groups(objective: ContrastiveObjective, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's rule: no weight decay on gains, biases, norms, embeddings of rank < 2 and the logit scale."""
    decay, plain = [], []
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (plain if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
