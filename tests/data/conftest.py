"""Fixtures for the data tests: tiny models/processors (built once per session) and tiny MultiMediset rows."""
from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image

from multimeditron.data.schema import image_modality, make_row


@functools.cache
def tiny(family: str = "tiny-qwen3"):
    """(model, processor) of a tiny family, built once per session; tests must not modify them."""
    from tests.conftest import tiny_model

    return tiny_model(family)


@pytest.fixture(scope="session")
def qwen():
    return tiny("tiny-qwen3")


def png_bytes(seed: int = 0, size: tuple[int, int] = (20, 16), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 255, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if channels == 1 else array, mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def vqa_row(question: str = "What is shown?", answer: str = "A chest X-ray.", n_images: int = 1, seed: int = 0,
            token: str = "<|image|>", **extra):
    images = [image_modality(png_bytes(seed + i)) for i in range(n_images)]
    content = " ".join([token] * n_images + [question])
    return make_row(images, [{"role": "user", "content": content}, {"role": "assistant", "content": answer}],
                    **extra)
