"""`MultiMeditronProcessor`: a transformers `ProcessorMixin` (tokenizer + `MultiMeditronImageProcessor`) that expands
image placeholders into image-token spans and turns images into the canvas tensor.

Each placeholder becomes `<|image_start|>` + N x `<|image_pad|>` + `<|image_end|>`, N being exactly what the vision
stack emits per image. Saved with transformers' conventions (`processor_config.json` + tokenizer files), so
`AutoProcessor.from_pretrained(dir)` returns it once `multimeditron` is imported; folders saved before (with
`multimeditron_processor.json`) still load.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase
from transformers.processing_utils import ProcessorMixin

from multimeditron.model.configuration import (
    DEFAULT_ATTACHMENT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_TOKEN,
)
from multimeditron.model.image_processing import MultiMeditronImageProcessor, flatten_images

LEGACY_PROCESSOR_FILE = "multimeditron_processor.json"  # written before the processor became a ProcessorMixin
PROCESSOR_CONFIG_FILE = "processor_config.json"


def split_content(messages: Sequence[dict[str, Any]], attachment_token: str,
                  separator: str = "\n") -> tuple[list[dict[str, Any]], list]:
    """Messages whose content is a string or HF content parts (`{"type": "image", "image"|"url"|"path": ...}`,
    `{"type": "text", "text": ...}`) -> (messages with string content, one placeholder per image part, parts joined
    by `separator` (a newline; "" is the published evaluation's join); the image values in order, undecoded)."""
    chat, images = [], []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"message {index} must be a dict with 'role' and 'content', got {message!r:.80}")
        content = message.get("content")
        if isinstance(content, str) or content is None:
            chat.append({**message, "content": content or ""})
            continue
        pieces = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                pieces.append(part.get("text") or "")
            elif kind == "image":
                value = next((part[key] for key in ("image", "url", "path") if part.get(key) is not None), None)
                if value is None:
                    raise ValueError(f"message {index}: an image part without 'image', 'url' or 'path'")
                images.append(value)
                pieces.append(attachment_token)
            else:
                raise ValueError(f"message {index}: MultiMeditron reads text and image parts only, got {part!r:.80}")
        chat.append({**message, "content": separator.join(pieces)})
    return chat, images


class MultiMeditronProcessor(ProcessorMixin):
    """Tokenizer + image processor. `processor(text=..., images=...)` needs exactly one placeholder per image."""

    def __init__(
        self,
        image_processor: MultiMeditronImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        num_image_tokens: int = 1,
        attachment_token: str = DEFAULT_ATTACHMENT_TOKEN,
        chat_template_kwargs: dict[str, Any] | None = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(image_processor, PreTrainedTokenizerBase):
            raise TypeError("MultiMeditronProcessor(image_processor, tokenizer, ...): the image processor comes first;"
                            " use multimeditron.build_model or MultiMeditronProcessor.from_pretrained")
        if tokenizer is None or image_processor is None:
            raise ValueError("MultiMeditronProcessor needs both an image_processor and a tokenizer")
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.num_image_tokens = int(num_image_tokens)
        self.attachment_token = attachment_token
        # Qwen3 renders an empty thinking block with enable_thinking=False: the models here answer directly.
        self.chat_template_kwargs = dict(chat_template_kwargs if chat_template_kwargs is not None
                                         else {"enable_thinking": False})
        ids = tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN])
        if any(i is None for i in ids) or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
            raise ValueError("the tokenizer lacks the image special tokens; build it with multimeditron.build_model")
        self.image_token_id, self.image_start_token_id, self.image_end_token_id = ids

    @property
    def image_size(self) -> int:
        return self.image_processor.image_size

    # ---- text -------------------------------------------------------------------------------------------------
    @property
    def image_span(self) -> str:
        return IMAGE_START_TOKEN + IMAGE_TOKEN * self.num_image_tokens + IMAGE_END_TOKEN

    def count_placeholders(self, text: str) -> int:
        return text.count(self.attachment_token)

    def expand_placeholders(self, text: str) -> str:
        return text.replace(self.attachment_token, self.image_span)

    def apply_chat_template(self, conversation: list[dict[str, Any]], add_generation_prompt: bool = False,
                            tokenize: bool = False, return_dict: bool = False, **kwargs: Any) -> Any:
        """Render messages with the tokenizer's chat template. Content may be a string holding placeholders or HF
        content parts (each image part becomes a placeholder). `tokenize=False` (default): the text, placeholders
        unexpanded; `tokenize=True, return_dict=True`: `processor(text, images)` with the parts' images (PIL)."""
        chat, images = split_content(conversation, self.attachment_token)
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  **{**self.chat_template_kwargs, **kwargs})
        if not tokenize:
            return text
        for value in images:
            if not isinstance(value, Image.Image):
                raise TypeError("apply_chat_template(tokenize=True) takes PIL images in image parts; read files with "
                                "multimeditron.data.images.load_image (the decoder training uses)")
        batch = self(text=text, images=images)
        return batch if return_dict else batch["input_ids"]

    # ---- images -----------------------------------------------------------------------------------------------
    def image_to_canvas(self, image: Image.Image) -> torch.Tensor:
        """One image -> (3, S, S) float tensor in [0, 1] (see `MultiMeditronImageProcessor.to_canvas`)."""
        return self.image_processor.to_canvas(image)

    def images_to_pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.image_processor.preprocess(list(images))["pixel_values"]

    # ---- both -------------------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Any = None,
        padding_side: str = "left",
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenise prompts whose placeholders are expanded; images are given in order of appearance (a flat list,
        or one list per text). Pads on the left by default, as generation wants. Raises when the number of
        placeholders in the text differs from the number of images, so images are never silently dropped."""
        if text is None:
            raise ValueError("MultiMeditronProcessor needs text (with one placeholder per image)")
        texts = [text] if isinstance(text, str) else list(text)
        if images is not None and not isinstance(images, Image.Image) and len(images) and \
                all(isinstance(group, (list, tuple)) for group in images) and len(images) != len(texts):
            raise ValueError(f"{len(images)} image lists for {len(texts)} texts")
        flat_images = flatten_images(images)
        n_placeholders = sum(self.count_placeholders(t) for t in texts)
        if n_placeholders != len(flat_images):
            raise ValueError(f"the text holds {n_placeholders} image placeholder(s) {self.attachment_token!r} but "
                             f"{len(flat_images)} image(s) were given: put one {self.attachment_token} in the text "
                             f"(or one {{'type': 'image'}} part in apply_chat_template) where each image goes")
        expanded = [self.expand_placeholders(t) for t in texts]
        kwargs.setdefault("padding", True)
        encoded = self.tokenizer(expanded, add_special_tokens=False, padding_side=padding_side,
                                 return_tensors=return_tensors, **kwargs)
        data = dict(encoded)
        data["pixel_values"] = self.images_to_pixel_values(flat_images)
        return BatchFeature(data=data)

    def decode(self, token_ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, **kwargs)

    def batch_decode(self, token_ids: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(token_ids, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    # ---- persistence ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> MultiMeditronProcessor:
        """A saved folder: `processor_config.json` (transformers' layout) or, from older saves,
        `multimeditron_processor.json`; both with the tokenizer files beside them."""
        directory = Path(pretrained_model_name_or_path)
        legacy = directory / LEGACY_PROCESSOR_FILE
        if directory.is_dir() and not (directory / PROCESSOR_CONFIG_FILE).is_file():
            if not legacy.is_file():
                raise FileNotFoundError(f"{directory} holds neither {PROCESSOR_CONFIG_FILE} nor {LEGACY_PROCESSOR_FILE}"
                                        ": it is not a MultiMeditron model/processor folder")
            settings = json.loads(legacy.read_text())
            settings.pop("processor_class", None)
            image_size = settings.pop("image_size")
            tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
            return cls(MultiMeditronImageProcessor(image_size=image_size), tokenizer, **settings)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
