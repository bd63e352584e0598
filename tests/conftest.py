"""Shared fixtures: tiny models and images, all built offline."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every model here is tiny: with several intra-op threads on a shared 2-core machine, thread hand-offs cost up to 20x
# the arithmetic (measured on the router, probe and packing tests). Subprocesses (torchrun, the CLI) inherit the env.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
threadpool_limits(1)

LLM_FAMILIES = ["tiny-qwen3", "tiny-llama", "tiny-apertus"]
GENERALIST = {"id": "timm:vit_small_patch16_224", "tiny": True}
SPECIALIST = {"id": "timm:vit_base_patch16_224", "tiny": True}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def random_image(width: int = 40, height: int = 36, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8))


def tiny_model(llm: str = "tiny-qwen3", experts: list[dict] | None = None, **kwargs):
    import multimeditron as mm

    torch.manual_seed(0)
    model, processor = mm.build_model(llm, experts or [GENERALIST], **kwargs)
    model.eval()
    return model, processor


def prompt_batch(processor, images_per_prompt: list[int], question: str = "Is there a lesion?"):
    """One chat prompt per entry, each with that many images; returns the processor's batch."""
    texts, images, seed = [], [], 0
    for count in images_per_prompt:
        content = " ".join([processor.attachment_token] * count + [question])
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
        group = []
        for _ in range(count):
            group.append(random_image(seed=seed))
            seed += 1
        images.append(group)
    return processor(texts, images=images)
