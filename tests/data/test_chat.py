"""Labels from each tiny family's own chat template: exactly the answers and their end-of-turn tokens are trained."""
from __future__ import annotations

import pytest

from multimeditron.data.chat import IGNORE_INDEX, ChatEncoder
from multimeditron.data.report import TEMPLATE_ERROR, BadSample
from tests.conftest import LLM_FAMILIES
from tests.data.conftest import tiny

CONVERSATION = [
    {"role": "system", "content": "You are a careful radiologist."},
    {"role": "user", "content": "<|image|> Is there a fracture?"},
    {"role": "assistant", "content": "No fracture is visible."},
    {"role": "user", "content": "And the <|image|> second image?"},
    {"role": "assistant", "content": "A small effusion,\nleft side."},
    {"role": "user", "content": "Thanks."},
    {"role": "assistant", "content": "You are welcome."},
]
ANSWERS = ["No fracture is visible.", "A small effusion,\nleft side.", "You are welcome."]


def labelled_runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_labels_are_exactly_the_answers(family):
    _, processor = tiny(family)
    encoder = ChatEncoder(processor)
    encoded = encoder.encode(CONVERSATION)
    tokenizer = processor.tokenizer
    eot = encoder.end_of_turn
    runs = [tokenizer.decode(run) for run in labelled_runs(encoded.labels)]
    assert runs == [answer + eot for answer in ANSWERS]
    # labelled tokens are the input tokens at those positions (labels are not shifted here; the model shifts)
    for token, label in zip(encoded.input_ids, encoded.labels):
        assert label in (IGNORE_INDEX, token)
    image_ids = {processor.image_token_id, processor.image_start_token_id, processor.image_end_token_id}
    assert encoded.input_ids.count(processor.image_token_id) == 2 * processor.num_image_tokens
    assert not image_ids & {label for label in encoded.labels}
    # the sequence ends with the last end-of-turn token: nothing of the template after it is trained
    assert tokenizer.decode(encoded.input_ids[encoded.turn_ends[-1] - 1:encoded.turn_ends[-1]]) == eot


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_single_turn_matches_generation_prompt(family):
    """The unlabelled prefix of a one-turn sample is the exact prompt inference renders and tokenises."""
    _, processor = tiny(family)
    encoder = ChatEncoder(processor)
    messages = CONVERSATION[1:3]
    encoded = encoder.encode(messages)
    prompt = processor.apply_chat_template(encoder.expand(messages[:1]), add_generation_prompt=True)
    prompt_ids = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    first = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    assert encoded.input_ids[:first] == prompt_ids


def test_published_attachment_token_loads_unchanged():
    """Data written for the published system uses a Llama reserved token as placeholder."""
    _, processor = tiny("tiny-llama")
    token = "<|reserved_special_token_0|>"
    encoder = ChatEncoder(processor, attachment_token=token)
    messages = [{"role": "user", "content": f"{token}\nDescribe."}, {"role": "assistant", "content": "Normal."}]
    encoded = encoder.encode(messages)
    reserved = processor.tokenizer.convert_tokens_to_ids(token)
    assert reserved not in encoded.input_ids
    assert encoded.input_ids.count(processor.image_token_id) == processor.num_image_tokens


def test_template_that_rewrites_history_is_a_clear_error():
    _, processor = tiny("tiny-qwen3")

    class Shuffling(ChatEncoder):
        def render(self, messages, add_generation_prompt=False):  # a template whose history changes per call
            text = super().render(messages, add_generation_prompt)
            return text.replace("<|im_start|>user", f"<|im_start|>user{len(messages)}")

    with pytest.raises(BadSample) as caught:
        Shuffling(processor).encode(CONVERSATION[1:5])
    assert caught.value.reason == TEMPLATE_ERROR


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_conversation_opening_with_an_answer(family):
    """A greeting by the assistant first: trained, or refused as a template error, never a crash."""
    _, processor = tiny(family)
    encoder = ChatEncoder(processor)
    messages = [{"role": "assistant", "content": "Hello, how can I help?"}] + CONVERSATION[1:3]
    try:
        encoded = encoder.encode(messages)
    except BadSample as bad:
        assert bad.reason == TEMPLATE_ERROR
        return
    runs = [processor.tokenizer.decode(run) for run in labelled_runs(encoded.labels)]
    assert runs == ["Hello, how can I help?" + encoder.end_of_turn, ANSWERS[0] + encoder.end_of_turn]
