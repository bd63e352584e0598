"""multimeditron.inference: batched generation in request order, stop strings, continuation log-probabilities,
loading a saved folder, and the `generate` command."""
from __future__ import annotations

import pytest
import torch

from multimeditron.inference import (
    continuation_logprob,
    cut_at_stop,
    generate_answers,
    load_pretrained,
    messages_to_chat,
    render_prompt,
)
from tests.conftest import random_image
from tests.evaluation.conftest import checkpoint, lively_tiny_model  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def lively():
    return lively_tiny_model()


def _requests(processor):
    token = processor.attachment_token
    return [
        ([{"role": "user", "content": f"{token}\nIs there a lesion?"}], [random_image(seed=1)]),
        ("What organ is this?", []),
        ([{"role": "user", "content": f"{token} {token}\nCompare the two scans in detail, please."}],
         [random_image(seed=2), random_image(seed=3, width=30)]),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{token}\nModality?"}],
         [random_image(seed=4)]),
    ]


def test_answers_come_back_in_request_order_whatever_the_batch_size(lively):
    model, processor = lively
    requests = _requests(processor)
    one = generate_answers(model, processor, requests, batch_size=1, max_new_tokens=8, progress=False)
    three = generate_answers(model, processor, requests, batch_size=3, max_new_tokens=8, progress=False)
    assert one == three
    assert len(set(one)) == len(one) and all(one)  # distinct prompts, distinct (non-empty) answers
    reversed_answers = generate_answers(model, processor, requests[::-1], batch_size=3, max_new_tokens=8,
                                        progress=False)
    assert reversed_answers == one[::-1]


def test_stop_strings_cut_the_answer_and_stop_generation(lively):
    model, processor = lively
    requests = _requests(processor)[:2]
    full = generate_answers(model, processor, requests, batch_size=2, max_new_tokens=12, progress=False)
    stop = full[0].strip()[2:4]  # a string the unconstrained answer contains
    cut = generate_answers(model, processor, requests, batch_size=2, max_new_tokens=12, stop=[stop], progress=False)
    assert stop not in cut[0] and full[0].startswith(cut[0])
    seen = {}
    generate = model.generate
    model.generate = lambda **kwargs: seen.update(kwargs) or generate(**kwargs)  # instance attribute: this test only
    try:
        generate_answers(model, processor, requests[:1], stop=[stop, ""], max_new_tokens=2, progress=False)
    finally:
        del model.generate
    assert seen["stop_strings"] == [stop] and seen["tokenizer"] is processor.tokenizer  # generation stops early
    assert cut_at_stop("yes\n\nno", ["\n\n", "no"]) == "yes" and cut_at_stop("abc", []) == "abc"


def test_continuation_logprob_is_the_sum_of_token_log_softmax(lively):
    model, processor = lively
    image = random_image(seed=5)
    context = f"{processor.attachment_token}\nIs there a lesion?"
    logprob, greedy = continuation_logprob(model, processor, context, " yes, a small one", [image])
    assert logprob < 0 and not greedy

    prompt = processor(render_prompt(processor, context), images=[image])
    target = processor.tokenizer(" yes, a small one", add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt["input_ids"], torch.tensor([target])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=prompt["pixel_values"]).logits[0]
    start = prompt["input_ids"].shape[1]
    manual = sum(torch.log_softmax(logits[start - 1 + k], -1)[token].item() for k, token in enumerate(target))
    assert logprob == pytest.approx(manual, abs=1e-4)


def test_the_greedy_continuation_is_flagged_greedy(lively):
    model, processor = lively
    found = []
    for chat, images in _requests(processor):
        inputs = processor(render_prompt(processor, chat), images=images)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                 suppress_tokens=[processor.image_token_id])
        generated = out[0, inputs["input_ids"].shape[1]:].tolist()
        # greedy prefixes whose text re-tokenises to the same ids (a byte-level token may split a character)
        found += [(chat, images, generated[:n]) for n in range(len(generated), 0, -1)
                  if processor.tokenizer(processor.decode(generated[:n]), add_special_tokens=False)["input_ids"]
                  == generated[:n]][:1]
    assert found, "no greedy continuation of the tiny model round-trips through the tokenizer"
    chat, images, greedy_ids = found[0]
    continuation = processor.decode(greedy_ids)
    logprob, greedy = continuation_logprob(model, processor, chat, continuation, images)
    assert greedy and logprob < 0


def test_messages_to_chat_places_one_placeholder_per_image():
    image = random_image()
    chat, images = messages_to_chat([{"role": "user", "content": [{"type": "image", "url": image},
                                                                  {"type": "text", "text": "Which side?"}]}],
                                    "<|image|>")
    assert chat == [{"role": "user", "content": "<|image|>\nWhich side?"}] and len(images) == 1
    with pytest.raises(ValueError, match="video"):
        messages_to_chat([{"role": "user", "content": [{"type": "video", "url": "x.mp4"}]}], "<|image|>")


def test_load_pretrained_and_generate_command(checkpoint, tmp_path, capsys):  # noqa: F811 (the fixture)
    from multimeditron.cli import main

    model, processor = load_pretrained(checkpoint, dtype="float32", device="cpu")
    assert not model.training and model.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        load_pretrained(checkpoint, dtype="float8")
    path = tmp_path / "scan.png"
    random_image(seed=7).save(path)
    request = ([{"role": "user", "content": f"{processor.attachment_token}\nIs there a lesion?"}],
               [random_image(seed=7)])
    [expected] = generate_answers(model, processor, [request], max_new_tokens=6, progress=False)
    assert main(["generate", "--model", checkpoint, "--image", str(path), "--prompt", "Is there a lesion?",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == expected


def test_generation_prints_no_cache_deprecation_warning_and_uses_the_cache(lively):
    import warnings

    model, processor = lively
    requests = _requests(processor)[:1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cached = generate_answers(model, processor, requests, max_new_tokens=5, progress=False)
    assert not [w for w in caught if "past_key_values" in str(w.message) or "cache" in str(w.message)]
    inputs = processor(render_prompt(processor, requests[0][0]), images=requests[0][1])
    with torch.no_grad():
        a = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        b = model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(a, b) and cached[0] is not None
