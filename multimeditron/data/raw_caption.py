"""Caption rows as raw text: no chat template and no "Describe the image" turn; the caption, with its images where its
placeholders are (or first when it has none), and the LM loss on its text tokens.

Two rules (`data.caption_format`):
- `raw`: the stripped text, an end-of-sequence token appended (so the model learns where a caption ends), the image
  span (start, image tokens, end) out of the loss;
- `published`: as the published MultiMeditron tokenised caption rows: the text as written with the tokenizer's own
  special tokens (a BOS for Llama-style tokenizers, none for Qwen), no end-of-sequence token, and only the image
  tokens out of the loss (its `<|image_start|>` / `<|image_end|>` delimiters are predicted like text).
"""
from __future__ import annotations

from multimeditron.data.chat import IGNORE_INDEX, Encoded
from multimeditron.data.report import TOO_LONG, BadSample
from multimeditron.model.processing import MultiMeditronProcessor

CAPTION_FORMATS = ("chat", "raw", "published")


def encode_raw_caption(processor: MultiMeditronProcessor, text: str, n_images: int, attachment_token: str,
                       max_length: int | None = None, published: bool = False) -> Encoded:
    """Token ids and labels of one caption (its placeholder count already checked against `n_images`), by the `raw`
    rule or, with `published`, the published one. Too long: cut at `max_length` when no image span is cut, else
    refused (`too_long`)."""
    span = processor.image_span
    if n_images and attachment_token not in text:
        text = "\n".join([attachment_token] * n_images + [text if published else text.strip()])
    tokenizer = processor.tokenizer
    if published:
        ids = tokenizer(text.replace(attachment_token, span), add_special_tokens=True)["input_ids"]
        masked = {processor.image_token_id}
    else:
        ids = tokenizer(text.strip().replace(attachment_token, span), add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        masked = {processor.image_token_id, processor.image_start_token_id, processor.image_end_token_id}
    labels = [IGNORE_INDEX if t in masked else t for t in ids]
    encoded = Encoded(ids, labels, [len(ids)])
    if max_length is None or len(ids) <= max_length:
        return encoded
    last_image_end = max((i + 1 for i, t in enumerate(ids) if t == processor.image_end_token_id), default=0)
    if last_image_end > max_length:
        raise BadSample(TOO_LONG, f"{len(ids)} tokens > max_sequence_length {max_length}, and the cut would fall "
                        f"inside an image span (ending at token {last_image_end})")
    return Encoded(ids[:max_length], labels[:max_length], [max_length], truncated=True)
