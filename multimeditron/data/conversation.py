"""One MultiMediset row -> (messages, image values), with every model-free check a row must pass.

Shared by tokenisation and `multimeditron check-dataset`, so both refuse exactly the same rows for the same reasons.
"""
from __future__ import annotations

from typing import Any

from multimeditron.data.report import (
    BAD_SCHEMA,
    EMPTY_ASSISTANT,
    EMPTY_USER,
    MISPLACED_SYSTEM,
    NO_ASSISTANT,
    PLACEHOLDER_IN_ANSWER,
    PLACEHOLDER_MISMATCH,
    UNKNOWN_ROLE,
    UNSUPPORTED_MODALITY,
    BadSample,
)
from multimeditron.data.schema import ROLES

# Caption rows (`text` instead of `conversations`) become this user prompt after the image placeholders, with the
# caption as the answer. The images are the question; the words only say what kind of answer is wanted.
CAPTION_PROMPT = "Describe the image."
CAPTION_PROMPT_PLURAL = "Describe the images."


def row_images(row: dict[str, Any]) -> list[Any]:
    """The row's image values in order (the `value` mappings of its modalities)."""
    modalities = row.get("modalities")
    if modalities is None:
        return []
    if not isinstance(modalities, list):
        raise BadSample(BAD_SCHEMA, f"`modalities` must be a list, got {type(modalities).__name__}")
    values = []
    for index, modality in enumerate(modalities):
        if not isinstance(modality, dict) or "value" not in modality:
            raise BadSample(BAD_SCHEMA, f"modality {index} is not a {{type, value}} mapping")
        if modality.get("type", "image") != "image":
            raise BadSample(UNSUPPORTED_MODALITY, f"modality {index} has type {modality.get('type')!r}; "
                            "only 'image' is supported")
        values.append(modality["value"])
    return values


def caption_messages(text: str, n_images: int, attachment_token: str) -> list[dict[str, str]]:
    """A caption row as a chat. Placeholders written inside the caption move to the user turn, in order."""
    found = text.count(attachment_token)
    if found not in (0, n_images):
        raise BadSample(PLACEHOLDER_MISMATCH, f"the caption holds {found} placeholder(s) {attachment_token!r} "
                        f"for {n_images} image(s)")
    caption = text.replace(attachment_token, "").strip()
    prompt = CAPTION_PROMPT_PLURAL if n_images > 1 else CAPTION_PROMPT
    user = "\n".join([attachment_token] * n_images + [prompt]) if n_images else prompt
    return [{"role": "user", "content": user}, {"role": "assistant", "content": caption}]


def row_messages(row: dict[str, Any], n_images: int, attachment_token: str) -> list[dict[str, str]]:
    """The row's chat, checked: known roles, system only first, no empty turn, an answer, placeholders = images.

    Turns after the last assistant turn are dropped: nothing would be trained on them.
    """
    conversations = row.get("conversations")
    if conversations is None:
        text = row.get("text")
        if not isinstance(text, str):
            raise BadSample(BAD_SCHEMA, "the row has neither `conversations` nor a `text` caption")
        messages = caption_messages(text, n_images, attachment_token)
    else:
        if not isinstance(conversations, list):
            raise BadSample(BAD_SCHEMA, f"`conversations` must be a list, got {type(conversations).__name__}")
        messages = []
        for index, turn in enumerate(conversations):
            if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) \
                    or not isinstance(turn.get("content"), str):
                raise BadSample(BAD_SCHEMA, f"turn {index} is not a {{role, content}} mapping of strings")
            messages.append({"role": turn["role"], "content": turn["content"]})
    check_messages(messages, n_images, attachment_token)
    last_answer = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last_answer + 1]


def check_messages(messages: list[dict[str, str]], n_images: int, attachment_token: str) -> None:
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise BadSample(UNKNOWN_ROLE, f"turn {index} has role {role!r}; valid roles: {list(ROLES)}")
        if role == "system" and index != 0:
            # several templates (Apertus, Llama) silently drop or misplace a later system turn
            raise BadSample(MISPLACED_SYSTEM, f"turn {index} is a system turn; only the first turn may be")
        if role == "assistant":
            if not content.strip():
                raise BadSample(EMPTY_ASSISTANT, f"assistant turn {index} is empty")
            if attachment_token in content:
                raise BadSample(PLACEHOLDER_IN_ANSWER, f"assistant turn {index} holds an image placeholder")
        if role == "user" and not content.strip():
            raise BadSample(EMPTY_USER, f"user turn {index} is empty")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadSample(NO_ASSISTANT, "the conversation has no assistant turn to train on")
    found = sum(m["content"].count(attachment_token) for m in messages)
    if found != n_images:
        raise BadSample(PLACEHOLDER_MISMATCH, f"{found} placeholder(s) {attachment_token!r} for {n_images} image(s)")


def parse_row(row: dict[str, Any], attachment_token: str) -> tuple[list[dict[str, str]], list[Any]]:
    """(messages, image values) of a row, or `BadSample`."""
    images = row_images(row)
    return row_messages(row, len(images), attachment_token), images
