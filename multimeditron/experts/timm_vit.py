"""A VisionExpert around a timm Vision Transformer: the shared body of every timm-based family."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from multimeditron.experts.base import (
    GLOBAL_POOLS,
    ExpertSpec,
    LoadReport,
    VisionExpert,
    check_pool,
    pool_global,
    select_tokens,
)
from multimeditron.experts.checkpoints import (
    DEFAULT_WEIGHT_FILES,
    checkpoint_positions,
    drop_keys,
    load_state_dict_checked,
    read_checkpoint,
    resample_pos_embed_key,
    strip_prefix,
    unwrap_state_dict,
)

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)

# How the single `cls` vector is made from the final tokens: every family's pools, plus timm's own head.
CLS_POOLS = (*GLOBAL_POOLS, "head")
# How a freshly built (not loaded) position embedding starts: timm's own random init, or a 2D sin-cos table.
POS_EMBED_INITS = ("learn", "sincos")

StateDict = dict[str, torch.Tensor]


def timm_checkpoint_filter(model: torch.nn.Module) -> Callable[[StateDict, torch.nn.Module], StateDict] | None:
    """The `checkpoint_filter_fn` of the timm module that defines `model` (it converts Meta/OpenAI/... layouts)."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def timm_layers(vit: torch.nn.Module, pixel_values: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The last `n` blocks' tokens of a timm ViT ([prefix tokens..., patch tokens...], final norm applied)."""
    n = min(int(n), len(vit.blocks))
    out = vit.forward_intermediates(pixel_values, indices=n, norm=True, stop_early=True, output_fmt="NLC",
                                    intermediates_only=True, return_prefix_tokens=True)
    return [torch.cat([prefix, patches], dim=1) for patches, prefix in out]


class TimmViTExpert(VisionExpert):
    # Weight files looked for inside a checkpoint folder or hub repository, in order.
    checkpoint_files: tuple[str, ...] = DEFAULT_WEIGHT_FILES
    # Key prefixes the expert may legitimately lack in a checkpoint (left at their initialisation).
    allowed_missing: tuple[str, ...] = ()

    def __init__(
        self,
        expert_id: str,
        model_name: str,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        output: str = "patch",
        model_kwargs: dict[str, Any] | None = None,
        cls_pool: str = "token",
        pos_embed_init: str = "learn",
    ) -> None:
        super().__init__()
        import timm

        check_pool(expert_id, cls_pool, CLS_POOLS)
        if pos_embed_init not in POS_EMBED_INITS:
            raise ValueError(f"{expert_id}: pos_embed_init {pos_embed_init!r} is not one of {list(POS_EMBED_INITS)}")
        self.expert_id, self.output, self.model_name, self.cls_pool = expert_id, output, model_name, cls_pool
        self.model_kwargs = dict(model_kwargs or {})
        self.vit = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=image_size,
                                     **self.model_kwargs)
        self.image_size = image_size
        self.feature_dim = self.vit.num_features
        self.num_prefix_tokens = int(getattr(self.vit, "num_prefix_tokens", 1))
        grid = self.vit.patch_embed.grid_size
        self.patch_grid = grid[0] if output == "patch" and grid[0] == grid[1] else None
        patches = grid[0] * grid[1]
        self.num_tokens = {"patch": patches, "cls": 1, "all": patches + self.num_prefix_tokens}[output]
        self._set_normalization(mean, std)
        if pos_embed_init == "sincos":
            self._init_sincos_pos_embed(expert_id)

    def _init_sincos_pos_embed(self, expert_id: str) -> None:
        # A ViT trained from scratch on little data learns where its patches are slowly (measured on the synthetic
        # side questions: chance level); a 2D sin-cos start (as in MAE) gives every patch its row and column from
        # step 0. Prefix tokens (class, registers) keep their initialisation. Checkpoints overwrite all of it.
        from timm.layers import build_sincos2d_pos_embed

        pos_embed = getattr(self.vit, "pos_embed", None)
        dim = self.feature_dim
        if pos_embed is None or dim % 4:
            raise ValueError(f"{expert_id}: pos_embed_init 'sincos' needs a learned position embedding and a width "
                             f"divisible by 4 (got width {dim})")
        grid = list(self.vit.patch_embed.grid_size)
        table = build_sincos2d_pos_embed(grid, dim=dim)
        with torch.no_grad():
            pos_embed[0, pos_embed.shape[1] - table.shape[0]:].copy_(table)

    supports_layers = True

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(pixel_values)
        pooled = self.pool_tokens(tokens) if self.output == "cls" else None
        return select_tokens(tokens, self.num_prefix_tokens, self.output, pooled)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cls_pool == "head":
            return self.vit.forward_head(tokens, pre_logits=True)
        return pool_global(tokens, self.num_prefix_tokens, self.cls_pool)

    def encode_layers(self, pixel_values: torch.Tensor, n: int) -> list[torch.Tensor]:
        return timm_layers(self.vit, pixel_values, n)

    # Checkpoint loading: families override `convert_checkpoint`, the rest is shared.
    def load_published_checkpoint(self, source: str) -> LoadReport:
        raw = read_checkpoint(source, self.checkpoint_files)
        given = checkpoint_positions(raw)  # before the conversion resamples them to this expert's grid
        state_dict, dropped, entry = self.convert_checkpoint(raw, source)
        report = load_state_dict_checked(self.vit, state_dict, source, dropped=dropped,
                                         allowed_missing=self.allowed_missing, entry=entry)
        own = getattr(self.vit, "pos_embed", None)
        if given is not None and own is not None and given != own.shape[-2]:
            report.notes.append(f"position embeddings resampled from {given} to {own.shape[-2]} positions")
        return report

    def convert_checkpoint(self, raw: dict[str, Any], source: str) -> tuple[StateDict, list[str], str | None]:
        """Generic timm path: a timm-layout state dict, or any layout timm's own filter of this model converts
        (Meta DINOv2, OpenAI CLIP, OpenCLIP timm towers, ...); position embeddings are resampled by the filter."""
        state_dict, entry = unwrap_state_dict(raw, source=source)
        state_dict = strip_prefix(state_dict, "module.")  # DistributedDataParallel wrapper
        filter_fn = timm_checkpoint_filter(self.vit)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, self.vit)
        elif getattr(self.vit, "pos_embed", None) is not None:
            prefix = 0 if getattr(self.vit, "no_embed_class", False) else self.num_prefix_tokens
            resample_pos_embed_key(state_dict, "pos_embed", self.vit.pos_embed, prefix)
        return (*self.drop_classifier(state_dict), entry)

    def drop_classifier(self, state_dict: StateDict) -> tuple[StateDict, list[str]]:
        """The expert is a feature extractor without a classifier: a checkpoint's `head.*` is dropped on purpose."""
        if any(k.startswith("head.") for k in self.vit.state_dict()):
            return state_dict, []
        return drop_keys(state_dict, prefixes=("head.",))


def build_timm_family(
    spec: ExpertSpec,
    expert_cls: type[TimmViTExpert],
    model_name: str,
    *,
    image_size: int,
    tiny_image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    model_kwargs: dict[str, Any] | None = None,
    tiny_kwargs: dict[str, Any] | None = None,
    cls_pool: str = "token",
    output: str = "patch",
) -> TimmViTExpert:
    """Build one timm-based family from its defaults, the spec's overrides and, for `tiny`, a small architecture.

    `spec.options` may set `mean`, `std`, `cls_pool`, `pos_embed_init`; every other option is passed to `timm.create_model`.
    """
    options = dict(spec.options)
    mean = tuple(options.pop("mean", mean))
    std = tuple(options.pop("std", std))
    cls_pool = options.pop("cls_pool", cls_pool)
    pos_embed_init = options.pop("pos_embed_init", "learn")
    kwargs = dict(model_kwargs or {})
    if spec.tiny:
        kwargs.update(TINY_VIT if tiny_kwargs is None else tiny_kwargs)
    kwargs.update(options)
    size = spec.image_size or (tiny_image_size if spec.tiny else image_size)
    return expert_cls(spec.id, model_name, size, mean, std, output=spec.output or output, model_kwargs=kwargs,
                      cls_pool=cls_pool, pos_embed_init=pos_embed_init)
