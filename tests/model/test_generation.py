"""Generation through transformers: cached greedy == uncached greedy, batched left padding == one by one."""
from __future__ import annotations

import torch

from tests.conftest import prompt_batch, tiny_model


def _greedy(model, batch, use_cache: bool):
    return model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=use_cache,
                          pad_token_id=model.config.text_config.pad_token_id)


def test_cached_greedy_equals_uncached_greedy():
    model, processor = tiny_model()
    batch = prompt_batch(processor, [1, 2])
    with torch.no_grad():
        torch.testing.assert_close(_greedy(model, batch, True), _greedy(model, batch, False), rtol=0, atol=0)


def test_image_features_computed_once_at_prefill():
    model, processor = tiny_model()
    batch = prompt_batch(processor, [1])
    calls = []
    model.vision.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert len(calls) == 1


def test_batched_left_padding_equals_single_prompts():
    model, processor = tiny_model("tiny-llama")
    batch = prompt_batch(processor, [1, 0, 2])
    with torch.no_grad():
        together = _greedy(model, batch, True)[:, batch["input_ids"].shape[1]:]
        for row, count in enumerate([1, 0, 2]):
            single = prompt_batch(processor, [count])
            if count == 2:  # same images as in the batch: seeds 1, 2
                single["pixel_values"] = batch["pixel_values"][1:3]
            alone = _greedy(model, single, True)[0, single["input_ids"].shape[1]:]
            assert together[row].tolist()[: len(alone)] == alone.tolist()


def test_sampling_runs_and_stop_strings_stop():
    model, processor = tiny_model()
    batch = prompt_batch(processor, [1])
    prompt_length = batch["input_ids"].shape[1]
    with torch.no_grad():
        sampled = model.generate(**batch, max_new_tokens=5, do_sample=True, top_p=0.9, top_k=20, temperature=0.7)
        assert prompt_length < sampled.shape[1] <= prompt_length + 5
        free = _greedy(model, batch, True)[0, prompt_length:]
        stop = processor.decode(free[:2])  # greedy output's first two tokens as text
        stopped = model.generate(**batch, max_new_tokens=8, do_sample=False, stop_strings=[stop],
                                 tokenizer=processor.tokenizer)[0, prompt_length:]
    # generation ends as soon as the text holds the stop string: at the latest after those two tokens
    assert len(free) == 8 and 1 <= len(stopped) <= 2 and stopped.tolist() == free[: len(stopped)].tolist()
