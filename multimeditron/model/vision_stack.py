"""The vision side of the model: experts -> router -> (projection) -> fusion -> (projection) -> image tokens.

Every combination emits exactly `num_image_tokens` tokens per image, the number the processor reserves.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multimeditron.experts.registry import build_expert, resolved_spec
from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.fusion import build_cross_attention, fuse
from multimeditron.model.projector import build_projector
from multimeditron.model.router import Router, Routing


def resample_tokens(tokens: torch.Tensor, source_grid: int | None, target_grid: int | None) -> torch.Tensor:
    """(B, g*g, D) patch tokens -> (B, G*G, D) on the target grid, by bilinear interpolation of the token map."""
    if source_grid == target_grid:
        return tokens
    b, _, d = tokens.shape
    grid = tokens.transpose(1, 2).reshape(b, d, source_grid, source_grid)
    grid = F.interpolate(grid.float(), size=(target_grid, target_grid), mode="bilinear", align_corners=False,
                         antialias=target_grid < source_grid)
    return grid.flatten(2).transpose(1, 2).to(tokens.dtype)


def _named_non_persistent_buffers(module: nn.Module):
    for owner_name, owner in module.named_modules():
        for leaf in owner._non_persistent_buffers_set:
            if owner._buffers.get(leaf) is not None:
                yield (f"{owner_name}.{leaf}" if owner_name else leaf), owner._buffers[leaf]


class VisionStack(nn.Module):
    def __init__(self, config: MultiMeditronConfig, text_hidden_size: int) -> None:
        super().__init__()
        if not config.experts:
            raise ValueError("experts: a MultiMeditron model needs at least one vision expert")
        self.fusion, self.projection = config.fusion, config.projection
        self.generalist_index, self.top_k = config.generalist_index, config.experts_top_k
        experts = [build_expert(spec, load_checkpoint=False) for spec in config.experts]
        # What each builder resolved from files beside its checkpoint (transformers/OpenCLIP configs); the model
        # records it in its own config, which then rebuilds the same experts offline, without the checkpoints.
        # Idempotent, so rebuilding from a saved config changes nothing; `checkpoint` stays as the weights' provenance.
        self.expert_specs = [resolved_spec(spec, expert).to_dict() for spec, expert in zip(config.experts, experts)]
        self.experts = nn.ModuleList(experts)
        generalist = self.experts[self.generalist_index]
        self.tokens_per_expert, self.target_grid = generalist.num_tokens, generalist.patch_grid
        self._check_token_grids()

        widths = [e.feature_dim for e in self.experts]
        if self.projection == "shared":
            if len(set(widths)) > 1:
                raise ValueError(
                    "projection: `shared` applies one projector after fusion, so every expert must have the same "
                    f"feature width; got {self._named(widths)}. Use projection: per_expert (one projector per expert, "
                    "fusion in LLM space)."
                )
            self.projectors = nn.ModuleList([build_projector(config.projector_type, widths[0], text_hidden_size)])
            fused_width = widths[0]
        else:
            self.projectors = nn.ModuleList(build_projector(config.projector_type, w, text_hidden_size) for w in widths)
            fused_width = text_hidden_size
        self.router = Router(config.router, len(self.experts), self.top_k, generalist.feature_dim,
                             getattr(config, "router_classifier", None))
        self.cross_attention = (build_cross_attention(getattr(config, "attn_variant", "residual"), fused_width,
                                                      config.attn_heads) if self.fusion == "attn" else None)
        self.num_image_tokens = self.tokens_per_expert * (self.top_k if self.fusion == "cat" else 1)

    def restore_non_persistent_buffers(self, specs: list[dict]) -> None:
        """Recompute the experts' non-persistent buffers (RoPE periods, position ids, ...).

        `from_pretrained` builds the model on the meta device and only fills what the checkpoint holds, so these
        buffers come back uninitialised; a twin expert with empty weights but real buffers supplies them.
        """
        from accelerate import init_empty_weights

        for expert, spec in zip(self.experts, specs):
            non_persistent = dict(_named_non_persistent_buffers(expert))
            if not non_persistent:
                continue
            with init_empty_weights(include_buffers=False):
                twin = build_expert(spec, load_checkpoint=False)
            for name, value in _named_non_persistent_buffers(twin):
                owner, _, leaf = name.rpartition(".")
                module = expert.get_submodule(owner) if owner else expert
                module._buffers[leaf] = value.to(non_persistent[name].device)

    def part_modules(self) -> dict[str, nn.Module]:
        """The stack's parts by name, as stages, per-part learning rates and the logged table read them: each expert,
        the projector(s), the router and the attention fusion (when there is one). Together they hold every parameter
        of the stack, each exactly once."""
        parts: dict[str, nn.Module] = {f"expert[{i}] {e.expert_id}": e for i, e in enumerate(self.experts)}
        parts["projector" + ("s" if len(self.projectors) > 1 else "")] = self.projectors
        parts["router"] = self.router
        if self.cross_attention is not None:
            parts["fusion (cross-attention)"] = self.cross_attention
        return parts

    def _named(self, values: list) -> str:
        return ", ".join(f"{e.expert_id}={v}" for e, v in zip(self.experts, values))

    def _check_token_grids(self) -> None:
        for expert in self.experts:
            if expert.num_tokens == self.tokens_per_expert:
                continue
            if expert.patch_grid is None or self.target_grid is None:
                raise ValueError(
                    "experts: token counts differ and cannot be resampled onto the generalist's grid (only square "
                    f"patch-token grids can): {self._named([e.num_tokens for e in self.experts])}"
                )

    def to_common_tokens(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        """One expert's raw tokens on the common grid, projected to LLM space when projection is per_expert."""
        tokens = resample_tokens(raw, self.experts[index].patch_grid, self.target_grid)
        return self.projectors[index](tokens) if self.projection == "per_expert" else tokens

    def forward(self, canvas: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """Canvas images (B, 3, S, S) in [0, 1] -> image tokens (B, num_image_tokens, LLM hidden size) and the
        routing that weighted the experts (for the balance loss and the usage logs, carried in the model output)."""
        batch = canvas.shape[0]
        needs_generalist = self.router.needs_generalist or self.fusion == "attn"
        generalist_raw = self.experts[self.generalist_index](canvas) if needs_generalist else None
        routing = self.router(generalist_raw, batch, canvas.device, canvas)
        weights = routing.weights

        per_expert, idle = [], []
        for index, expert in enumerate(self.experts):
            if index == self.generalist_index and generalist_raw is not None:
                rows = torch.arange(batch, device=canvas.device)
                tokens = self.to_common_tokens(index, generalist_raw)
            else:
                # Experts outside an image's top-k are not run for that image.
                rows = weights[:, index].nonzero().squeeze(1)
                if rows.numel() == 0:
                    # No image here routes to this expert, yet it runs on one blank canvas weighted zero: under
                    # ZeRO-3 every rank must join each expert's parameter gathers (forward and backward).
                    idle.append(self.to_common_tokens(index, expert(torch.zeros_like(canvas[:1]))).sum() * 0)
                    per_expert.append(None)
                    continue
                tokens = self.to_common_tokens(index, expert(canvas[rows]))
            full = tokens.new_zeros(batch, *tokens.shape[1:]).index_copy(0, rows, tokens)
            per_expert.append(full)
        template = next(t for t in per_expert if t is not None)
        stacked = torch.stack([t if t is not None else torch.zeros_like(template) for t in per_expert], dim=1)
        fused = fuse(self.fusion, stacked, weights.to(stacked.dtype), self.top_k, self.generalist_index,
                     self.cross_attention)
        if self.projection == "shared":
            fused = self.projectors[0](fused)
        return (fused + sum(idle).to(fused.dtype) if idle else fused), routing
