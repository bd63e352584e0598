"""RETFound-Green's Token Reconstruction: cheap self-supervised adaptation of a ViT expert to unlabelled images.

A frozen reference copy of the encoder sees the clean image; the trained copy sees a corrupted one (Gaussian pixel
noise at `noise` x each image's per-channel std, and a random fraction U(0, `mask_max`) of its patch embeddings
replaced by a learned mask token); a small residual projector (LayerScale `layerscale_init`) maps the trained
copy's output tokens onto the reference's, and the loss is the MSE over all tokens (class, registers, patches).
Only the trained copy is written out: projector and mask token serve the objective alone.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from multimeditron.adaptation.errors import AdaptationError
from multimeditron.adaptation.images import CanvasDataset
from multimeditron.adaptation.loop import LoopSettings, run_epochs
from multimeditron.adaptation.trunk import masked_patches, num_patches, set_drop_path, vit_trunk
from multimeditron.experts.adapted import save_adapted_expert
from multimeditron.experts.base import ExpertSpec, VisionExpert


@dataclass
class CorruptionSettings:
    noise: float = 0.2  # pixel noise std, as a fraction of each image's per-channel std (0: none)
    mask_max: float = 1 / 3  # each image masks a fraction of its patches drawn from U(0, mask_max) (0: none)

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise AdaptationError(f"--noise must be >= 0, got {self.noise}")
        if not 0 <= self.mask_max < 1:
            raise AdaptationError(f"--mask-max must lie in [0, 1), got {self.mask_max}")


class ResidualProjector(nn.Module):
    """x + gamma * MLP(LayerNorm(x)), gamma a per-channel LayerScale starting at `init` (near the identity)."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.mlp(self.norm(x))


class TokenReconstruction(nn.Module):
    """The objective as a module: `forward(canvas)` -> loss. `student` is the expert being adapted."""

    def __init__(self, expert: VisionExpert, corruption: CorruptionSettings, layerscale_init: float = 1e-5,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.corruption = corruption
        self.student = expert
        self.reference = copy.deepcopy(expert).requires_grad_(False).eval()
        if drop_path:
            set_drop_path(self.trunk, drop_path)
        width = int(getattr(self.trunk, "embed_dim", expert.feature_dim))
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.projector = ResidualProjector(int(self.trunk.num_features), layerscale_init)

    @property
    def trunk(self) -> nn.Module:
        return vit_trunk(self.student)

    @property
    def reference_trunk(self) -> nn.Module:
        return vit_trunk(self.reference)

    def train(self, mode: bool = True) -> TokenReconstruction:
        super().train(mode)
        self.reference.eval()  # the reference never trains (no dropout / drop path)
        return self

    def corrupt(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy pixels, patch mask (B, N) True = replaced by the mask token); draws from torch's generator."""
        b = pixels.shape[0]
        noisy = pixels
        if self.corruption.noise > 0:
            std = pixels.float().std(dim=(2, 3), keepdim=True)
            noisy = pixels + (torch.randn_like(pixels.float()) * std * self.corruption.noise).to(pixels.dtype)
        n = num_patches(self.trunk)
        fraction = torch.rand(b, 1, device=pixels.device) * self.corruption.mask_max
        ranks = torch.rand(b, n, device=pixels.device).argsort(dim=1).argsort(dim=1)
        masks = ranks < (fraction * n).floor()
        return noisy, masks

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        pixels = self.student.preprocess(canvas)
        with torch.no_grad():
            target = self.reference_trunk.forward_features(pixels)
        noisy, masks = self.corrupt(pixels)
        with masked_patches(self.trunk, self.mask_token, masks):
            tokens = self.trunk.forward_features(noisy)
        return F.mse_loss(self.projector(tokens).float(), target.float())


def adapt_token_reconstruction(expert: VisionExpert, spec: ExpertSpec, images: Sequence[Any], folder: Path | None,
                               out_dir: str | Path, loop: LoopSettings, corruption: CorruptionSettings,
                               *, layerscale_init: float = 1e-5, drop_path: float = 0.0, weight_decay: float = 0.05,
                               augment: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train `expert` by token reconstruction on `images`; write `OUT/final/` (an adapted-expert folder the registry
    loads as `spec`'s expert), `OUT/last/` (resumable state) and `OUT/history.json`. Returns a summary."""
    from timm.optim import param_groups_weight_decay

    out = Path(out_dir)
    objective = TokenReconstruction(expert.requires_grad_(True), corruption, layerscale_init, drop_path)
    dataset = CanvasDataset(images, expert.image_size, folder, augment=augment)
    # The reference is frozen, so the groups hold the trained copy, the projector and the mask token only.
    groups = param_groups_weight_decay(objective, weight_decay)
    history = run_epochs(objective, dataset, groups, lambda module, batch: module(batch[0]), loop, out,
                         resume=resume, desc="token reconstruction")
    record = {"objective": "token-reconstruction", **asdict(corruption), "layerscale_init": layerscale_init,
              "drop_path": drop_path, "weight_decay": weight_decay, "augment": augment, "images": len(dataset),
              "loop": loop.to_dict(), "history": history}
    final = save_adapted_expert(objective.student.cpu(), spec, out / "final", record)
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return {"final": str(final), "spec": {**spec.to_dict(), "checkpoint": str(final)},
            "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"], "epochs": len(history)}
