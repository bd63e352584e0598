"""Images drawn by the adaptation tests (unlabelled stripes and noise, a two-class texture folder, image + mask
pairs with squares or dots) and the tiny experts they use."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A tiny timm ViT with a 4 x 4 grid of 8-px patches on 32-px images.
TEXTURE_EXPERT = '{id: "timm:vit_small_patch16_224", tiny: true, image_size: 32, options: {patch_size: 8}}'


def stripes(rng: np.random.Generator, size: int, vertical: bool, period: int = 2) -> np.ndarray:
    """A grey image of thin stripes (random phase and contrast) plus noise: the class is the stripes'
    orientation, which the mean colour and the coarse layout of the image do not tell."""
    axis = np.arange(size)
    wave = (((axis + rng.integers(period)) % period) < period // 2).astype(np.float32)
    pattern = np.tile(wave, (size, 1)) if vertical else np.tile(wave[:, None], (1, size))
    contrast = rng.uniform(0.3, 0.6)
    image = 0.5 + contrast * (pattern - 0.5) + rng.normal(0, 0.05, (size, size))
    return (np.clip(np.repeat(image[..., None], 3, axis=2), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def unlabelled_folder(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("unlabelled")
    for i in range(24):
        array = stripes(rng, 28, bool(i % 2)) if i % 3 else (rng.random((28, 28, 3)) * 255).astype(np.uint8)
        sub = root / ("a" if i < 12 else "b")  # nested folders are searched too
        sub.mkdir(exist_ok=True)
        Image.fromarray(array).save(sub / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def texture_folder(tmp_path_factory) -> Path:
    """ROOT/{train,val,test}/{horizontal,vertical}/ with 32 / 16 / 16 images of 32 px, stripes of period 4."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("texture")
    for split, n in (("train", 32), ("val", 16), ("test", 16)):
        for name, vertical in (("horizontal", False), ("vertical", True)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n // 2):
                Image.fromarray(stripes(rng, 32, vertical, period=4)).save(folder / f"{i:03d}.png")
    return root


# Patches of 4 px: an 8 x 8 grid on 32-px images, for segmentation.
SEGMENT_EXPERT = '{id: "timm:vit_small_patch16_224", tiny: true, image_size: 32, options: {patch_size: 4}}'


def _segmentation_folder(root: Path, rng: np.random.Generator, draw) -> Path:
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            image = rng.normal(0.3, 0.08, (32, 32))
            mask = np.zeros((32, 32), dtype=np.uint8)
            draw(rng, mask)
            image[mask > 0] += 0.4
            rgb = (np.clip(np.repeat(image[..., None], 3, axis=2), 0, 1) * 255).astype(np.uint8)
            Image.fromarray(rgb).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask * 255).save(root / split / "masks" / f"{i:03d}.png")  # black/white = 0/1
    return root


@pytest.fixture(scope="session")
def square_masks(tmp_path_factory) -> Path:
    """A bright square of 10-16 px per image; the mask is the square."""
    def draw(rng, mask):
        side = int(rng.integers(10, 17))
        top, left = rng.integers(0, 32 - side, size=2)
        mask[top:top + side, left:left + side] = 1

    return _segmentation_folder(tmp_path_factory.mktemp("squares"), np.random.default_rng(2), draw)


@pytest.fixture(scope="session")
def dot_masks(tmp_path_factory) -> Path:
    """Six bright 2 x 2 dots per image (smaller than a patch); the mask is the dots."""
    def draw(rng, mask):
        for _ in range(6):
            top, left = rng.integers(0, 30, size=2)
            mask[top:top + 2, left:left + 2] = 1

    return _segmentation_folder(tmp_path_factory.mktemp("dots"), np.random.default_rng(3), draw)


def recipe(schema, **keys):
    """A recipe of `schema` from dotted keys (`**{"training_args.num_train_epochs": 2}`), as the CLI builds it."""
    from multimeditron.adaptation.recipes import load_recipe

    return load_recipe(schema, None, [(key, value, key) for key, value in keys.items()])
