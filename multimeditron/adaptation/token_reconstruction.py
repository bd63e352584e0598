"""RETFound-Green's Token Reconstruction: cheap self-supervised adaptation of a ViT expert to unlabelled images.

A frozen reference copy of the encoder sees the clean image; the trained copy sees a corrupted one (Gaussian pixel
noise at `noise` x each image's per-channel std, and a random fraction U(0, `mask_max`) of its patch embeddings
replaced by a learned mask token); a small residual projector (LayerScale `layerscale_init`) maps the trained
copy's output tokens onto the reference's, and the loss is the MSE over all tokens (class, registers, patches).
Only the trained copy is written out: projector and mask token serve the objective alone.

RETFound-Green's own choices are options (`cookbook/experts/retfound_green_token_reconstruction.yaml` sets them):
masks drawn per patch (Bernoulli), the last sample of each batch left clean, a zero corruption token outside the
optimiser, its training augmentation (`data.py`), a cooldown at the floor rate (`schedule.cooldown_epochs`).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from multimeditron.adaptation.engine import epoch_history, train_objective
from multimeditron.adaptation.images import CanvasDataset
from multimeditron.adaptation.recipes import AdaptRecipe, TokenReconstructionSection
from multimeditron.adaptation.trunk import (
    masked_patches,
    num_patches,
    set_drop_path,
    vit_trunk,
)
from multimeditron.experts.adapted import save_adapted_expert
from multimeditron.experts.base import ExpertSpec, VisionExpert


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

    def __init__(self, expert: VisionExpert, corruption: TokenReconstructionSection) -> None:
        super().__init__()
        self.corruption = corruption
        self.student = expert
        self.reference = copy.deepcopy(expert).requires_grad_(False).eval()
        if corruption.drop_path:
            set_drop_path(self.trunk, corruption.drop_path)
        width = int(getattr(self.trunk, "embed_dim", expert.feature_dim))
        if corruption.mask_token == "zero":  # a buffer: constant, never in the optimiser's groups
            self.register_buffer("mask_token", torch.zeros(width), persistent=False)
        else:
            self.mask_token = nn.Parameter(torch.zeros(width))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.projector = ResidualProjector(int(self.trunk.num_features), corruption.layerscale_init)

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

    def forward(self, pixel_values: torch.Tensor, corrupted_values: torch.Tensor,
                patch_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.corruption.clean_last and self.training:  # RETFound-Green: the batch's last sample stays clean
            corrupted_values = torch.cat([corrupted_values[:-1], pixel_values[-1:]])
            patch_mask = torch.cat([patch_mask[:-1], torch.zeros_like(patch_mask[-1:])])
        with torch.no_grad():
            target = self.reference_trunk.forward_features(self.reference.preprocess(pixel_values))
        with masked_patches(self.trunk, self.mask_token, patch_mask):
            tokens = self.trunk.forward_features(self.student.preprocess(corrupted_values))
        return {"loss": F.mse_loss(self.projector(tokens).float(), target.float())}


def corrupt(canvas: torch.Tensor, settings: TokenReconstructionSection, patches: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy canvas, patch mask (patches,) True = replaced by the mask token) of one image: Gaussian noise at
    `noise` x the image's per-channel std (the expert's normalisation is affine per channel, so this is the same
    noise on its input), and a fraction f ~ U(0, `mask_max`) of the patches: exactly floor(f x patches) of them
    (`mask_sampling` count), or each with probability f (bernoulli, RETFound-Green's)."""
    noisy = canvas
    if settings.noise > 0:
        std = canvas.float().std(dim=(1, 2), keepdim=True)
        noisy = canvas + torch.randn(canvas.shape, generator=generator) * std * settings.noise
    fraction = float(torch.rand((), generator=generator)) * settings.mask_max
    if settings.mask_sampling == "bernoulli":
        return noisy, torch.rand(patches, generator=generator) < fraction
    chosen = torch.randperm(patches, generator=generator)[: int(fraction * patches)]
    mask = torch.zeros(patches, dtype=torch.bool)
    mask[chosen] = True
    return noisy, mask


class CorruptedCanvases(CanvasDataset):
    """Each image clean (the reference's input) and corrupted (the trained copy's), drawn per sample and epoch."""

    def __init__(self, images: Sequence[Any], size: int, folder: Path | None, settings: TokenReconstructionSection,
                 patches: int, seed: int = 0) -> None:
        super().__init__(images, size, folder, augment=settings.augment and settings.augmentation == "crop_flip",
                         seed=seed)
        self.settings, self.patches = settings, patches

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(index)
        if self.settings.augment and self.settings.augmentation == "retfound_green":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.generator(index).initial_seed()))
                item["pixel_values"] = retfound_green_augment(item["pixel_values"], self.size)
        noisy, mask = corrupt(item["pixel_values"], self.settings, self.patches, self.generator(index, stream=1))
        return {**item, "corrupted_values": noisy, "patch_mask": mask}


def retfound_green_augment(canvas: torch.Tensor, size: int) -> torch.Tensor:
    """RETFound-Green's training augmentation (`data.py::get_default_training_transforms`, torchvision v2) on a
    canvas in [0, 1]: horizontal flip (p 0.5), vertical flip (p 0.05), black side padding of 33-150 px at 392 px
    (p 0.1; scaled to `size`), rotation up to 12.5 degrees (p 0.25), brightness/contrast jitter 0.33 (p 0.25), then
    one of: random resized crop (scale 0.7-1, ratio 3/5-5/3), resize to 1.3 x size + centre crop, plain resize.
    Torch's global generator draws (the caller seeds it per sample); the side padding draws from it too, where
    RETFound-Green's draws from numpy's."""
    from torchvision.transforms import v2

    def side_padding(image: torch.Tensor) -> torch.Tensor:
        low, high = round(33 * size / 392), max(round(150 * size / 392), round(33 * size / 392) + 1)
        amount = int(torch.randint(low, high, ()))
        return v2.functional.pad(image, [amount, 0, amount, 0], fill=0)

    resize = v2.RandomChoice([
        v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(3 / 5, 5 / 3), antialias=True),
        v2.Compose([v2.Resize(int(size * 1.3), antialias=True), v2.CenterCrop(size)]),
        v2.Resize((size, size), antialias=True)])
    pipeline = v2.Compose([
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(p=0.05),
        v2.RandomApply([v2.Lambda(side_padding)], p=0.1),
        v2.RandomApply([v2.RandomRotation(degrees=12.5)], p=0.25),
        v2.RandomApply([v2.ColorJitter(brightness=0.33, contrast=0.33)], p=0.25),
        resize])
    return pipeline(canvas).clamp(0.0, 1.0)


def adapt_token_reconstruction(expert: VisionExpert, spec: ExpertSpec, images: Sequence[Any], folder: Path | None,
                               recipe: AdaptRecipe, processes: int = 1,
                               refused: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Train `expert` by token reconstruction on `images` on the engine; writes `OUT/final/` (an adapted-expert
    folder the registry loads as `spec`'s expert; its record lists the `refused` files too), `OUT/checkpoint-*/`
    (resumable) and `OUT/history.json`."""
    from timm.optim import param_groups_weight_decay

    from multimeditron.training.arguments import training_arguments

    args = training_arguments(recipe.training_arguments(processes))
    out = Path(args.output_dir)
    method = recipe.token_reconstruction
    objective = TokenReconstruction(expert.requires_grad_(True), method)
    dataset = CorruptedCanvases(images, expert.image_size, folder, method, num_patches(objective.trunk), args.seed)
    # The reference is frozen, so the groups hold the trained copy, the projector and the mask token only (a zero
    # mask token is a buffer, outside them).
    groups = [{**g, "lr_scale": 1.0} for g in param_groups_weight_decay(objective, args.weight_decay)]
    trainer = train_objective(objective, dataset, args, groups, recipe.schedule, resume=args.resume_from_checkpoint,
                              log_name="adapt")
    history = epoch_history(trainer.state.log_history)
    final = out / "final"
    if trainer.is_world_process_zero():
        record = {"objective": recipe.objective, "recipe": recipe.to_dict(), "images": len(dataset),
                  "refused": list(refused), "history": history}
        save_adapted_expert(objective.student.cpu(), spec, final, record)
        (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    losses = [h["loss"] for h in history if "loss" in h]
    return {"final": str(final), "spec": {**spec.to_dict(), "checkpoint": str(final)},
            "first_loss": losses[0] if losses else float("nan"), "last_loss": losses[-1] if losses else float("nan"),
            "epochs": len(history)}


def adapt_plan(recipe: AdaptRecipe, images: int, expert: VisionExpert, processes: int = 1) -> str:
    from timm.optim import param_groups_weight_decay

    from multimeditron.adaptation.plan import format_plan

    method = recipe.token_reconstruction
    objective = TokenReconstruction(expert.requires_grad_(True), method)
    weight_decay = float(recipe.training_arguments(processes)["weight_decay"])
    data_lines = [f"data: {recipe.data.path}: {images} unlabelled images",
                  f"method: {recipe.objective}, noise {method.noise:g} x image std, mask U(0, {method.mask_max:.3g}) "
                  f"of the patches ({method.mask_sampling}), mask token {method.mask_token}, last sample of each batch "
                  f"{'clean' if method.clean_last else 'corrupted'}, LayerScale {method.layerscale_init:g}, drop path "
                  f"{method.drop_path:g}, augment {method.augment}"
                  + (f" ({method.augmentation})" if method.augment else ""),
                  f"schedule: cooldown {recipe.schedule.cooldown_epochs:g} epochs at the floor; gradient clip "
                  f"{recipe.training_arguments(processes)['max_grad_norm']:g} (0: off); AdamW betas "
                  f"({recipe.training_arguments(processes).get('adam_beta1', 0.9):g}, "
                  f"{recipe.training_arguments(processes).get('adam_beta2', 0.999):g})"]
    return format_plan("adapt", recipe, data_lines, expert, param_groups_weight_decay(objective, weight_decay),
                       ["checkpoint-*/ (resumable)", "final/ (adapted expert)", "history.json"], processes)
