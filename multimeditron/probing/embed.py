"""Frozen-expert embeddings of an image list: the global vector, and the class token of the last layers plus the
mean patch token (what DINOv2-style linear probes read), at the expert's own resolution and normalisation.

Images go through the project's decoder (`multimeditron.data.images`, optionally an intensity window) and the
model's canvas (`MultiMeditronImageProcessor`: long side resized, short side padded), so a probe sees exactly what
the expert sees inside a MultiMeditron model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from multimeditron.data.bad_images import undecodable
from multimeditron.data.images import ImageResolver
from multimeditron.data.intensity import IntensityWindow, load_windowed
from multimeditron.data.report import BadSample
from multimeditron.data.splits import ImageDataError
from multimeditron.dtypes import parse_dtype
from multimeditron.experts.base import VisionExpert


@dataclass
class Embeddings:
    """Per image (or per group after `aggregate`): `pooled` (N, D) the expert's global output; `cls_layers`
    (N, L, D) the class token of the last L blocks (oldest first) and `patch_mean` (N, D) the mean patch token of
    the last block, both None when the expert cannot give intermediate layers."""

    pooled: np.ndarray
    cls_layers: np.ndarray | None = None
    patch_mean: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pooled)

    def take(self, rows: np.ndarray) -> Embeddings:
        pick = (lambda a: None if a is None else a[rows])
        return Embeddings(self.pooled[rows], pick(self.cls_layers), pick(self.patch_mean))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in (("pooled", self.pooled), ("cls_layers", self.cls_layers),
                                  ("patch_mean", self.patch_mean)) if v is not None}


class ImageCanvases(torch.utils.data.Dataset):
    """Stored image values -> canvas tensors (3, S, S) in [0, 1] at the expert's input size."""

    def __init__(self, images: Sequence[Any], size: int, folder: Path | None = None,
                 window: IntensityWindow | None = None) -> None:
        from multimeditron.model.image_processing import MultiMeditronImageProcessor

        self.images, self.window = images, window
        self.resolver = ImageResolver(default_dir=folder)
        self.processor = MultiMeditronImageProcessor(image_size=size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        value = self.images[index]
        try:
            image = (self.resolver.load(value) if self.window is None
                     else load_windowed(self.resolver, value, self.window))
        except BadSample as error:  # the load-time check (`data.bad_images`) passed it: one error line naming it
            raise undecodable(value, index, error) from error
        return self.processor.to_canvas(image)


@torch.no_grad()
def embed(expert: VisionExpert, images: Sequence[Any], *, folder: Path | None = None,
          window: IntensityWindow | None = None, batch_size: int = 64, num_workers: int = 0,
          device: str | torch.device = "cpu", dtype: str = "float32", n_layers: int = 4,
          progress: bool | None = None, desc: str = "embedding") -> Embeddings:
    """Embed every image with the frozen `expert` (moved to `device` / `dtype`); float32 numpy results."""
    expert = expert.to(device=device, dtype=parse_dtype(dtype)).eval()
    loader = torch.utils.data.DataLoader(ImageCanvases(images, expert.image_size, folder, window),
                                         batch_size=batch_size, num_workers=num_workers, shuffle=False)
    pooled, cls_layers, patch_mean = [], [], []
    layered = expert.supports_layers and n_layers > 0
    for canvas in tqdm(loader, desc=desc, unit="batch", disable=None if progress is None else not progress):
        pixels = expert.preprocess(canvas.to(device))
        if layered:
            layers = expert.encode_layers(pixels, n_layers)
            prefix = int(getattr(expert, "num_prefix_tokens", 1))
            pooled.append(expert.pool_tokens(layers[-1]).float().cpu())
            cls_layers.append(torch.stack([t[:, 0] for t in layers], dim=1).float().cpu())
            patch_mean.append(layers[-1][:, prefix:].mean(dim=1).float().cpu())
        else:
            tokens = expert.encode(pixels)
            pooled.append((tokens[:, 0] if tokens.shape[1] == 1 else tokens.mean(dim=1)).float().cpu())
    if not pooled:
        raise ValueError(f"{desc}: no images to embed")
    cat = (lambda parts: torch.cat(parts).numpy() if parts else None)
    return Embeddings(cat(pooled), cat(cls_layers), cat(patch_mean))


def aggregate(embeddings: Embeddings, labels: np.ndarray, groups: np.ndarray | None,
              ) -> tuple[Embeddings, np.ndarray, np.ndarray | None]:
    """One row per group (study / patient): the mean of its images' embeddings and their common label.

    Groups keep the order of their first image. Images of one group with different labels are an error.
    """
    if groups is None:
        return embeddings, labels, None
    names, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first)  # group ids in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    inverse = rank[inverse]
    counts = np.bincount(inverse, minlength=len(order)).astype(np.float64)

    def mean(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        out = np.zeros((len(order), *a.shape[1:]), dtype=np.float64)
        np.add.at(out, inverse, a)
        return (out / counts.reshape(-1, *([1] * (a.ndim - 1)))).astype(np.float32)

    group_labels = labels[first[order]]
    wrong = (labels != group_labels[inverse]).reshape(len(labels), -1).any(axis=1)
    disagree = names[order][np.unique(inverse[wrong])]
    if len(disagree):
        raise ImageDataError(f"images of group {str(disagree[0])!r} carry different labels ({len(disagree)} such groups); "
                         f"a study or patient must have one label")
    pooled = mean(embeddings.pooled)
    assert pooled is not None
    return Embeddings(pooled, mean(embeddings.cls_layers), mean(embeddings.patch_mean)), group_labels, \
        names[order]
