"""Which image placeholder a dataset's text uses (`data.attachment_token: auto`): this toolkit's `<|image|>`, the
published MultiMediset's `<|reserved_special_token_0|>` or LLaVA's `<image>`, read from the dataset's own rows."""
from __future__ import annotations

import logging
from typing import Any

import datasets

logger = logging.getLogger(__name__)

AUTO = "auto"
KNOWN_PLACEHOLDERS = ("<|image|>", "<|reserved_special_token_0|>", "<image>")
ROWS_READ = 512  # enough to see the convention; a dataset uses one placeholder throughout


def count_placeholders(dataset: datasets.Dataset, rows: int = ROWS_READ) -> dict[str, int]:
    """Occurrences of each known placeholder in the text (conversation turns or `text` captions) of the first rows;
    the image column is not read."""
    columns = [name for name in ("conversations", "text") if name in dataset.column_names]
    counts = dict.fromkeys(KNOWN_PLACEHOLDERS, 0)
    if not columns:
        return counts
    sample = dataset.select_columns(columns).select(range(min(rows, len(dataset))))
    for row in sample:
        for text in _texts(row):
            for token in KNOWN_PLACEHOLDERS:
                counts[token] += text.count(token)
    return counts


def _texts(row: dict[str, Any]) -> list[str]:
    texts = [row["text"]] if isinstance(row.get("text"), str) else []
    for turn in row.get("conversations") or ():
        if isinstance(turn, dict) and isinstance(turn.get("content"), str):
            texts.append(turn["content"])
    return texts


def resolve_attachment_token(setting: str | None, dataset: datasets.Dataset, model_token: str, name: str) -> str:
    """The placeholder to read `dataset` with: `setting` itself, the model's for None, else (for "auto") the known
    placeholder its rows use most, or the model's when they hold none (text-only data). Says what it picked."""
    if setting is None:
        return model_token
    if setting != AUTO:
        return setting
    counts = count_placeholders(dataset)
    found = {token: count for token, count in counts.items() if count}
    if not found:
        return model_token
    token = max(found, key=lambda t: (found[t], t == model_token))
    others = ", ".join(f"{t} x{c}" for t, c in found.items() if t != token)
    logger.info("data: %s: image placeholder %s (detected from its rows%s; set data.attachment_token to override)",
                name, token, f"; also seen: {others}" if others else "")
    return token
