"""Conversations -> token ids + labels with the tokenizer's own chat template, whatever the LLM family.

Only the assistant's content and its end-of-turn token are trained; prompts, role headers, image tokens and the
template's whitespace after the end-of-turn token get -100.
"""
from __future__ import annotations

from dataclasses import dataclass

from multimeditron.data.report import TEMPLATE_ERROR, TOO_LONG, BadSample
from multimeditron.model.processing import MultiMeditronProcessor

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    turn_ends: list[int]  # token index just after each assistant end-of-turn token: the only safe cuts
    truncated: bool = False


class ChatEncoder:
    """Renders with `processor.apply_chat_template` and finds each assistant span by character offsets.

    A prompt rendered with `add_generation_prompt=True` must be a prefix of the full rendering; templates that
    render history turns differently from the last one (Qwen3 drops the empty think block of earlier answers) are
    handled by finding the answer text after the rendered history instead. Anything else is a `chat_template_error`.
    """

    def __init__(self, processor: MultiMeditronProcessor, attachment_token: str | None = None) -> None:
        self.processor = processor
        self.attachment_token = attachment_token or processor.attachment_token
        self._end_of_turn: str | None = None

    # ---- text -----------------------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        except Exception as error:  # jinja raises many types (TemplateError, UndefinedError, TypeError, ...)
            raise BadSample(TEMPLATE_ERROR, f"the chat template failed on {len(messages)} turn(s): {error}") \
                from error

    def _render_or_none(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str | None:
        """Prefix renderings may fail where the full one works (templates reading messages[0] of an empty list)."""
        try:
            return self.render(messages, add_generation_prompt)
        except BadSample:
            return None

    def expand(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """Placeholders (the data's attachment token) -> the model's image spans, before rendering."""
        span = self.processor.image_span
        return [{"role": m["role"], "content": m["content"].replace(self.attachment_token, span)} for m in messages]

    @property
    def end_of_turn(self) -> str:
        """The text the template closes an assistant turn with, found once from a probe conversation."""
        if self._end_of_turn is None:
            prompt = self.render([{"role": "user", "content": "q"}], add_generation_prompt=True)
            full = self.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
            if not full.startswith(prompt) or full[len(prompt):len(prompt) + 1] != "a":
                raise BadSample(TEMPLATE_ERROR, "cannot find where the chat template closes an assistant turn")
            self._end_of_turn = full[len(prompt) + 1:].rstrip()
        return self._end_of_turn

    def assistant_spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The full rendering and, per assistant turn, the [start, end) characters of its content + end-of-turn."""
        full = self.render(messages)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            content = message["content"].strip()
            prompt = self._render_or_none(messages[:index], add_generation_prompt=True)
            if prompt is not None and full.startswith(prompt):
                start = len(prompt)
            else:
                history = self._render_or_none(messages[:index]) if index else ""
                if history is None or not full.startswith(history):
                    raise BadSample(TEMPLATE_ERROR, f"the template renders the turns before turn {index} "
                                    "differently when more turns follow; cannot locate the answer")
                start = full.find(content, len(history))
                if start < 0:
                    raise BadSample(TEMPLATE_ERROR, f"assistant turn {index} does not appear in the rendering")
            upto = self._render_or_none(messages[:index + 1])
            if upto is not None and full.startswith(upto) and len(upto.rstrip()) > start:
                end = len(upto.rstrip())  # drop the template's whitespace after the end-of-turn token
            else:
                marker = self.end_of_turn
                found = full.find(marker, start + len(content)) if marker else -1
                if found < 0:
                    raise BadSample(TEMPLATE_ERROR, f"cannot find the end of assistant turn {index}")
                end = found + len(marker)
            if spans and start < spans[-1][1]:
                raise BadSample(TEMPLATE_ERROR, f"assistant turn {index} overlaps the previous one")
            spans.append((start, end))
        return full, spans

    # ---- tokens ---------------------------------------------------------------------------------------------
    def encode(self, messages: list[dict[str, str]], max_length: int | None = None) -> Encoded:
        """Token ids and labels (placeholders already counted against images by the caller).

        Segments are tokenised separately so every answer starts on a token boundary, exactly as at generation
        time when the prompt is tokenised alone and the model continues from it.
        """
        full, spans = self.assistant_spans(self.expand(messages))
        pieces, position = [], 0
        for start, end in spans:
            pieces += [(full[position:start], False), (full[start:end], True)]
            position = end
        pieces.append((full[position:], False))
        texts = [text for text, _ in pieces if text]
        trained = [flag for text, flag in pieces if text]
        tokenised = self.processor.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        image_ids = {self.processor.image_token_id, self.processor.image_start_token_id,
                     self.processor.image_end_token_id}
        input_ids, labels, turn_ends = [], [], []
        for ids, flag in zip(tokenised, trained):
            input_ids += ids
            labels += [IGNORE_INDEX if not flag or t in image_ids else t for t in ids]
            if flag:
                turn_ends.append(len(input_ids))
        encoded = Encoded(input_ids, labels, turn_ends)
        return truncate(encoded, max_length, self.processor.image_end_token_id) if max_length else encoded


def truncate(encoded: Encoded, max_length: int, image_end_id: int) -> Encoded:
    """Fit `max_length` by dropping whole tail turns: the cut is at the end of an assistant turn that lies after
    the last image span (so no image span is cut and no answer is left unclosed); otherwise the row is refused."""
    length = len(encoded.input_ids)
    if length <= max_length:
        return encoded
    ids = encoded.input_ids
    last_image_end = max((i + 1 for i, t in enumerate(ids) if t == image_end_id), default=0)
    cuts = [c for c in encoded.turn_ends if last_image_end <= c <= max_length]
    if not cuts:
        raise BadSample(TOO_LONG, f"{length} tokens > max_sequence_length {max_length}, and no assistant turn "
                        f"ends within the limit after the last image (token {last_image_end})")
    cut = max(cuts)
    return Encoded(ids[:cut], encoded.labels[:cut], [c for c in encoded.turn_ends if c <= cut], truncated=True)
