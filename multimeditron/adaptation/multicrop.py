"""MerMED-FM's multi-crop views of unlabelled images from one or several sources (modalities), each with its own
normalisation, intensity window and sampling weight.

The augmentation follows `DataAugmentationMerMED` (yangzhou12/MerMED `pretraining/main_mermed.py`), built from
torchvision transforms v2 on the canvas tensor: every crop is rotated (+-30 degrees), cropped at random
(`RandomResizedCrop`, bicubic; global crops at the expert's input over `global_crops_scale`, local crops at
96/224 of it over `local_crops_scale`), flipped (p 0.5), colour-jittered (brightness 0.2, contrast 0.2, saturation
0.1, hue 0.02, p 0.8) and blurred (sigma 0.1-1.0 px at 224 px; p 1.0 on the first global crop, 0.1 on the second,
0.5 on the local ones), then normalised with its source's mean/std. MerMED removed DINO's grey-scale and
solarisation (`solarization` puts DINO's back on the second global crop).

Every draw is seeded per (seed, epoch, image) (`CanvasDataset.generator`), so the crops do not depend on the
number of processes or workers, and a resumed run repeats them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from multimeditron.adaptation.errors import AdaptDataError
from multimeditron.adaptation.images import CanvasDataset, UnlabelledImages, load_unlabelled_images
from multimeditron.probing.embed import ImageCanvases

REFERENCE_SIZE = 224  # MerMED's global crop; its local crop is 96 and its blur sigma is in pixels at this size
REFERENCE_LOCAL = 96


@dataclass(frozen=True)
class Source:
    """One source, resolved: its images, the folder they resolve against, its mean/std, window and weight."""
    name: str
    images: Sequence[Any]
    folder: Path | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    window: Any = None  # data.intensity.IntensityWindow
    weight: float = 1.0


def load_source_images(data: Any) -> list[UnlabelledImages]:
    """The images of the data section's `path`, or of each of its `sources`, every file checked by the section's
    one bad-image policy (`data.on_bad_image`)."""
    if data.path is not None:
        return [load_unlabelled_images(data.path, data.image_column, data.on_bad_image)]
    loaded = []
    for i, entry in enumerate(data.sources):
        images = load_unlabelled_images(entry.path, entry.image_column, data.on_bad_image)
        if not len(images.images):
            raise AdaptDataError(f"data.sources[{i}]: {entry.path} holds no image")
        loaded.append(images)
    return loaded


def resolve_sources(data: Any, expert_mean: Sequence[float], expert_std: Sequence[float],
                    loaded: Sequence[UnlabelledImages] | None = None) -> list[Source]:
    """The recipe's data section (`path`, or `sources`) as resolved sources, their images `loaded` (by
    `load_source_images` when not given): a MerMED modality name gives its published mean/std
    (`experts.families.mermed.mermed_normalization`), explicit `mean`/`std` win, and neither leaves the expert's own.
    Sources with the same `name` share a modality label."""
    from multimeditron.data.intensity import parse_window
    from multimeditron.experts.families.mermed import mermed_normalization

    def three(values: Sequence[float]) -> tuple[float, float, float]:
        values = tuple(float(v) for v in values)
        return values * 3 if len(values) == 1 else values  # type: ignore[return-value]

    loaded = load_source_images(data) if loaded is None else loaded
    if data.path is not None:
        return [Source(str(data.path), loaded[0].images, loaded[0].folder, three(expert_mean), three(expert_std))]
    sources = []
    for i, (entry, images) in enumerate(zip(data.sources, loaded)):
        if entry.mean is not None:
            mean, std = entry.mean, entry.std
        elif entry.normalization is not None:
            try:
                mean, std = mermed_normalization(entry.normalization)
            except ValueError as error:
                raise AdaptDataError(f"data.sources[{i}].normalization: {error}") from None
        else:
            mean, std = expert_mean, expert_std
        window = parse_window(entry.intensity) if entry.intensity else None
        name = entry.name or entry.normalization or str(entry.path)
        sources.append(Source(name, images.images, images.folder, three(mean), three(std), window,
                              float(entry.weight)))
    return sources


def local_crop_size(image_size: int, patch: int, size: int | None = None) -> int:
    """The local crops' side: `size`, or MerMED's 96/224 of the expert's input, as whole patches (at least one)."""
    side = size if size is not None else image_size * REFERENCE_LOCAL / REFERENCE_SIZE
    return max(patch, round(side / patch) * patch)


def crop_transforms(global_size: int, local_size: int, settings: Any) -> tuple[Any, Any, Any]:
    """(first global, second global, local) torchvision v2 pipelines on a canvas tensor in [0, 1]."""
    from torchvision.transforms import InterpolationMode, v2

    def pipeline(size: int, scale: Sequence[float], blur: float, solarize: float = 0.0) -> Any:
        sigma = (0.1 * size / REFERENCE_SIZE, 1.0 * size / REFERENCE_SIZE)  # MerMED's pixels, relative to 224 px
        kernel = 2 * math.ceil(3 * sigma[1]) + 1
        # On 8-bit images, as the code's PIL pipeline: bicubic resampling saturates at 0 and 255 (float values past
        # [0, 1] make ColorJitter's hue/saturation NaN).
        steps = [v2.ToDtype(torch.uint8, scale=True), v2.RandomRotation(30),
                 v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC,
                                      antialias=True),
                 v2.RandomHorizontalFlip(0.5),
                 v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02)], p=0.8),
                 v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=blur)]
        if solarize > 0:
            steps.append(v2.RandomSolarize(128, p=solarize))
        return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])

    return (pipeline(global_size, settings.global_crops_scale, 1.0),
            pipeline(global_size, settings.global_crops_scale, 0.1, settings.solarization),
            pipeline(local_size, settings.local_crops_scale, 0.5))


class MultiCropCanvases(CanvasDataset):
    """Every image of the sources, as {"global_crops": (2, 3, G, G), "local_crops": (N, 3, L, L), "modality": id},
    crops normalised with their source's mean/std."""

    def __init__(self, sources: Sequence[Source], size: int, local_size: int, settings: Any, seed: int = 0) -> None:
        super().__init__([], size, seed=seed)
        self.sources = list(sources)
        self.canvases = torch.utils.data.ConcatDataset(
            [ImageCanvases(s.images, size, s.folder, window=s.window) for s in self.sources])
        names = list(dict.fromkeys(s.name for s in self.sources))
        self.labels = torch.cat([torch.full((len(s.images),), names.index(s.name), dtype=torch.long)
                                 for s in self.sources])
        self.which = torch.cat([torch.full((len(s.images),), i, dtype=torch.long) for i, s in enumerate(self.sources)])
        self.modalities, self.local_crops_number = names, int(settings.local_crops_number)
        self.transforms = crop_transforms(size, local_size, settings)

    def sample_weights(self) -> torch.Tensor | None:
        """Per-image weights that draw each source in proportion to its `weight` whatever its size (MerMED's
        sampler puts every modality equally in each batch); None for one source (a plain permutation)."""
        if len(self.sources) == 1:
            return None
        sizes = torch.tensor([len(s.images) for s in self.sources], dtype=torch.double)
        weights = torch.tensor([s.weight for s in self.sources], dtype=torch.double)
        return (weights / sizes)[self.which]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        canvas = self.canvases[index]
        source = self.sources[int(self.which[index])]
        mean = torch.tensor(source.mean).view(3, 1, 1)
        std = torch.tensor(source.std).view(3, 1, 1)
        first, second, local = self.transforms
        # torchvision's transforms draw from the global generator: fork it, seeded for this sample and epoch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.generator(index).initial_seed()))
            views = [first(canvas), second(canvas)]
            locals_ = [local(canvas) for _ in range(self.local_crops_number)]
        norm = (lambda crops: torch.stack([(c - mean) / std for c in crops]))
        side = local.transforms[2].size[0]
        return {"global_crops": norm(views),
                "local_crops": norm(locals_) if locals_ else torch.zeros(0, 3, side, side),
                "modality": self.labels[index]}
