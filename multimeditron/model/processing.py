"""`MultiMeditronProcessor`: expands image placeholders into image-token spans and turns images into the canvas tensor.

Each placeholder becomes `<|image_start|>` + N x `<|image_pad|>` + `<|image_end|>`, N being exactly what the vision
stack emits per image. Images are padded to a square (so nothing at the borders, e.g. a laterality marker, is cropped),
resized to the canvas size (the largest expert input) and kept in [0, 1]; each expert then resizes and normalises
the canvas itself on the device (see `multimeditron.experts.base.VisionExpert.preprocess`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from multimeditron.model.configuration import (
    DEFAULT_ATTACHMENT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_TOKEN,
)

PROCESSOR_FILE = "multimeditron_processor.json"


class MultiMeditronProcessor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_image_tokens: int,
        image_size: int,
        attachment_token: str = DEFAULT_ATTACHMENT_TOKEN,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.num_image_tokens = int(num_image_tokens)
        self.image_size = int(image_size)
        self.attachment_token = attachment_token
        # Qwen3 renders an empty thinking block with enable_thinking=False: the models here answer directly.
        self.chat_template_kwargs = dict(chat_template_kwargs or {"enable_thinking": False})
        ids = tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN])
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise ValueError("the tokenizer lacks the image special tokens; build it with multimeditron.build_model")
        self.image_token_id, self.image_start_token_id, self.image_end_token_id = ids

    # ---- text -------------------------------------------------------------------------------------------------
    @property
    def image_span(self) -> str:
        return IMAGE_START_TOKEN + IMAGE_TOKEN * self.num_image_tokens + IMAGE_END_TOKEN

    def count_placeholders(self, text: str) -> int:
        return text.count(self.attachment_token)

    def expand_placeholders(self, text: str) -> str:
        return text.replace(self.attachment_token, self.image_span)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
                            **kwargs: Any) -> str:
        """Render messages with the tokenizer's own chat template (placeholders left unexpanded)."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  **{**self.chat_template_kwargs, **kwargs})

    # ---- images -----------------------------------------------------------------------------------------------
    def image_to_canvas(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> (3, S, S) float tensor in [0, 1], padded to a square then resized."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        side = max(width, height)
        if width != height:
            square = Image.new("RGB", (side, side), (0, 0, 0))
            square.paste(image, ((side - width) // 2, (side - height) // 2))
            image = square
        if side != self.image_size:
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def images_to_pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.zeros(0, 3, self.image_size, self.image_size)
        return torch.stack([self.image_to_canvas(image) for image in images])

    # ---- both -------------------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | list[str],
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None = None,
        padding_side: str = "left",
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Tokenise prompts whose placeholders are expanded; images are given in order of appearance
        (a flat list, or one list per text). Pads on the left by default, as generation wants."""
        texts = [text] if isinstance(text, str) else list(text)
        flat_images = _flatten_images(images, len(texts))
        n_placeholders = sum(self.count_placeholders(t) for t in texts)
        if n_placeholders != len(flat_images):
            raise ValueError(f"the text holds {n_placeholders} image placeholder(s) {self.attachment_token!r} but "
                             f"{len(flat_images)} image(s) were given")
        expanded = [self.expand_placeholders(t) for t in texts]
        encoded = self.tokenizer(expanded, add_special_tokens=False, padding=True, padding_side=padding_side,
                                 return_tensors=return_tensors)
        data = dict(encoded)
        data["pixel_values"] = self.images_to_pixel_values(flat_images)
        return BatchFeature(data=data)

    def decode(self, token_ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, **kwargs)

    def batch_decode(self, token_ids: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(token_ids, **kwargs)

    # ---- persistence ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"processor_class": type(self).__name__, "num_image_tokens": self.num_image_tokens,
                "image_size": self.image_size, "attachment_token": self.attachment_token,
                "chat_template_kwargs": self.chat_template_kwargs}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        (directory / PROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **tokenizer_kwargs: Any) -> "MultiMeditronProcessor":
        path = Path(directory) / PROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {directory} is not a MultiMeditron model/processor folder")
        settings = json.loads(path.read_text())
        settings.pop("processor_class", None)
        tokenizer = AutoTokenizer.from_pretrained(directory, **tokenizer_kwargs)
        return cls(tokenizer, **settings)


def _flatten_images(images: Any, n_texts: int) -> list[Image.Image]:
    if images is None:
        return []
    if isinstance(images, Image.Image):
        return [images]
    images = list(images)
    if images and all(isinstance(i, (list, tuple)) for i in images):
        if len(images) != n_texts:
            raise ValueError(f"{len(images)} image lists for {n_texts} texts")
        return [image for group in images for image in group]
    return images
