"""The MultiMediset Arrow schema: `modalities` (images as bytes or paths) + `conversations` (or `text` for captions).

Compatible with data written for the published MultiMeditron; `make_row` builds rows for converters and generators.
"""
from __future__ import annotations

from typing import Any

from datasets import Features, Value

MODALITY = {"type": Value("string"), "value": {"bytes": Value("binary"), "path": Value("string")}}
TURN = {"role": Value("string"), "content": Value("string")}
ROLES = ("system", "user", "assistant")


def conversation_features(extra: dict[str, Any] | None = None) -> Features:
    """Features of a VQA/chat dataset (plus any extra metadata columns)."""
    return Features({"modalities": [MODALITY], "conversations": [TURN], **(extra or {})})


def caption_features(extra: dict[str, Any] | None = None) -> Features:
    """Features of a caption/pretraining dataset: images + one `text`."""
    return Features({"modalities": [MODALITY], "text": Value("string"), **(extra or {})})


def image_modality(data: bytes | None = None, path: str | None = None) -> dict[str, Any]:
    if (data is None) == (path is None):
        raise ValueError("an image modality holds either bytes or a path")
    return {"type": "image", "value": {"bytes": data, "path": path}}


def make_row(images: list[dict[str, Any]], conversations: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    """A conversation row; `images` are `image_modality(...)` values in placeholder order."""
    return {"modalities": images, "conversations": [{"role": t["role"], "content": t["content"]} for t in conversations],
            **extra}


__all__ = ["MODALITY", "TURN", "ROLES", "conversation_features", "caption_features", "image_modality", "make_row"]
