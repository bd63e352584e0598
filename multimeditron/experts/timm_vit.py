"""A VisionExpert around a timm Vision Transformer: the shared body of every timm-based family."""
from __future__ import annotations

from typing import Any

import torch

from multimeditron.experts.base import VisionExpert, select_tokens

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)


class TimmViTExpert(VisionExpert):
    def __init__(
        self,
        expert_id: str,
        model_name: str,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        output: str = "patch",
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        self.expert_id, self.output, self.model_name = expert_id, output, model_name
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

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(pixel_values)
        return select_tokens(tokens, self.num_prefix_tokens, self.output)
