"""The interface every vision expert implements: its dimensions, its input transform and its checkpoint loading.

The vision stack sizes routers, fusion and projectors from these attributes, never from a duplicated config value.
An expert receives the processor's canvas (RGB in [0, 1], any square size) and resizes and normalises it itself on
the device, so that one `pixel_values` tensor serves experts with different input sizes and normalisations.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

OUTPUTS = ("patch", "cls", "all")
# How every family can make its one global (`cls`) vector from a token sequence [prefix tokens..., patch tokens...]:
# the class token, the mean of the patch tokens, or the mean of all tokens (option `cls_pool`, `finetune --pool`).
GLOBAL_POOLS = ("token", "avg", "avg_all")


@dataclass
class ExpertSpec:
    """How to build one expert: the registry id plus optional overrides. Stored as a dict in the model config.

    - id: a registry id (`biomedclip`, `dinov2_vitb14_reg4`, `timm:vit_small_patch16_224`, ...).
    - checkpoint: a local file/folder or a hub id in the expert's original published layout; None = random weights.
    - tiny: build the family's tiny architecture (width 32, 2 blocks, 32 px) for tests and smoke runs.
    - image_size: input resolution override (position embeddings are resampled when a checkpoint differs).
    - output: which tokens the expert emits: `patch` (patch tokens), `cls` (one pooled/class token),
      `all` (class/register tokens followed by patch tokens). None = the family's default.
    - normalization: a named normalisation of the family (MerMED-FM modalities) or None for its default.
    - options: extra keyword arguments for the architecture builder (timm/open_clip kwargs). A built model's config
      also records here what the builder resolved from files beside the checkpoint (see
      `VisionExpert.architecture_options`), so that the model can be rebuilt without them.
    """

    id: str
    checkpoint: str | None = None
    tiny: bool = False
    image_size: int | None = None
    output: str | None = None
    normalization: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | "ExpertSpec", where: str = "experts") -> "ExpertSpec":
        if isinstance(data, ExpertSpec):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"{where}: an expert must be a mapping with at least an `id`, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where}: unknown expert key(s) {unknown}; valid keys are {sorted(names)}")
        if "id" not in data:
            raise ValueError(f"{where}: an expert needs an `id`")
        return cls(**data)

    def __post_init__(self) -> None:
        if self.output is not None and self.output not in OUTPUTS:
            raise ValueError(f"expert {self.id!r}: output {self.output!r} is not one of {list(OUTPUTS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LoadReport:
    """What a checkpoint load did: keys the expert expected but did not get, keys it got and did not use."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # keys removed on purpose (decoders, heads, mask tokens)
    entry: str | None = None  # the entry of a training checkpoint that was loaded (`model`, `teacher`, ...)
    notes: list[str] = field(default_factory=list)  # what else changed the weights (resampling, a fallback entry)

    def summary(self) -> str:
        """One line: the source, the entry used, the keys dropped on purpose or left unloaded, and the notes."""
        parts = [f"loaded {self.source}"] + ([f"entry {self.entry!r}"] if self.entry else [])
        for count_of, keys in (("keys dropped on purpose", self.dropped), ("keys not in the checkpoint (allowed)",
                                                                          self.missing)):
            if keys:
                parts.append(f"{len(keys)} {count_of} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        return "; ".join(parts + self.notes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def raise_if_incomplete(self, allowed_missing: tuple[str, ...] = ()) -> "LoadReport":
        missing = [k for k in self.missing if not any(k.startswith(p) for p in allowed_missing)]
        if missing or self.unexpected:
            raise ValueError(
                f"checkpoint {self.source} does not match the expert: missing keys {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''} ({len(missing)} in all), unexpected keys "
                f"{self.unexpected[:10]}{' ...' if len(self.unexpected) > 10 else ''} ({len(self.unexpected)} in all)"
            )
        return self


class VisionExpert(nn.Module):
    """A vision encoder that turns a batch of images into `num_tokens` feature vectors of width `feature_dim`.

    Subclasses set the attributes in `__init__` and implement `encode` and `load_published_checkpoint`.
    """

    expert_id: str
    feature_dim: int
    image_size: int
    num_tokens: int
    patch_grid: int | None  # tokens per side when the output is a square grid of patch tokens, else None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str

    def __init__(self) -> None:
        super().__init__()

    def _set_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        # Plain tuples, not buffers: non-persistent buffers come back uninitialised from a meta-device load.
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def preprocess(self, canvas: torch.Tensor) -> torch.Tensor:
        """Canvas images (B, 3, S, S) in [0, 1] -> this expert's normalised input (B, 3, image_size, image_size)."""
        if canvas.shape[-1] != self.image_size or canvas.shape[-2] != self.image_size:
            canvas = F.interpolate(
                canvas.float(), size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                align_corners=False,
            ).clamp_(0.0, 1.0)
        weight_dtype = next(self.parameters()).dtype
        mean = torch.tensor(self.mean, device=canvas.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=canvas.device).view(1, 3, 1, 1)
        return ((canvas.float() - mean) / std).to(weight_dtype)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, image_size, image_size) -> features (B, num_tokens, feature_dim)."""
        raise NotImplementedError

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        return self.encode(self.preprocess(canvas))

    # Evaluation of frozen features (linear probes on the last n layers, as DINOv2's) needs intermediate layers;
    # families that cannot give them leave `encode_layers` unimplemented and `supports_layers` False.
    supports_layers: bool = False

    def encode_layers(self, pixel_values: torch.Tensor, n: int) -> list[torch.Tensor]:
        """Normalised images -> the token sequences (B, num_prefix_tokens + patches, D) of the last `n` blocks
        (fewer when the model has fewer), oldest first, each through the final norm; the last one is the tokens
        `encode` selects from."""
        raise NotImplementedError(f"{type(self).__name__} does not give intermediate layers")

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """A full token sequence (B, T, D) -> the expert's one global vector (B, D), pooled as its `cls` output."""
        return tokens[:, 0]

    def load_checkpoint(self, source: str) -> LoadReport:
        """Load weights from `source`: a folder written by `multimeditron finetune` / `adapt` (the expert's own
        layout, `multimeditron.experts.adapted`), else a local path or hub id in the family's published layout."""
        from multimeditron.experts.adapted import (
            is_adapted_checkpoint,
            load_adapted_weights,
        )

        report = load_adapted_weights(self, source) if is_adapted_checkpoint(source) \
            else self.load_published_checkpoint(source)
        logger.info("%s: %s", self.expert_id, report.summary())  # one line per loaded expert
        return report

    def load_published_checkpoint(self, source: str) -> LoadReport:
        """Load weights from a local path or hub id in the expert's original published layout."""
        raise NotImplementedError(f"{type(self).__name__} cannot load checkpoints")

    def architecture_options(self) -> dict[str, Any]:
        """Options that, merged into this expert's `spec.options`, let its builder rebuild the same architecture
        without reading anything beside the checkpoint (config files, the hub).

        Families whose architecture (and normalisation) follows from the spec and code alone return {}; families
        that resolve it from files at build time (transformers/OpenCLIP configs) return what they resolved, so a
        saved model's config is self-contained. Values must be JSON-serialisable.
        """
        return {}

    def describe(self) -> str:
        return (f"{self.expert_id}: {self.num_tokens} tokens x {self.feature_dim} d, input {self.image_size} px, "
                f"output={self.output}")


def pool_global(tokens: torch.Tensor, num_prefix: int, how: str) -> torch.Tensor:
    """A token sequence (B, T, D) -> one vector per image (B, D), pooled as `how` (one of `GLOBAL_POOLS`) says."""
    if how == "avg":
        return tokens[:, num_prefix:].mean(dim=1)
    if how == "avg_all":
        return tokens.mean(dim=1)
    if how == "token":
        return tokens[:, 0]
    raise ValueError(f"cls_pool {how!r} is not one of {list(GLOBAL_POOLS)}")


def check_pool(expert_id: str, how: Any, allowed: tuple[str, ...] = GLOBAL_POOLS) -> str:
    """`how` when it is one of `allowed`, else an error naming the expert and the choices."""
    if how not in allowed:
        raise ValueError(f"{expert_id}: cls_pool {how!r} is not one of {list(allowed)}")
    return how


def select_tokens(tokens: torch.Tensor, num_prefix: int, output: str, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """Pick the requested output from a ViT token sequence [prefix tokens..., patch tokens...].

    `pooled` (B, D) replaces the class token for `cls` when the family pools differently (mean, attention pool).
    """
    if output == "patch":
        return tokens[:, num_prefix:]
    if output == "cls":
        return (pooled if pooled is not None else tokens[:, 0]).unsqueeze(1)
    if output == "all":
        return tokens
    raise ValueError(f"unknown expert output {output!r}; valid: {list(OUTPUTS)}")
