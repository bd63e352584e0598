"""Special tokens: added once, padded vocabularies never shrink, new embeddings start at the mean."""
from __future__ import annotations

import pytest
import torch

from multimeditron.model.builder import load_llm
from multimeditron.model.tokens import add_image_tokens
from multimeditron.presets import TINY_LLMS
from multimeditron.presets.tiny_llm import TINY_PADDED_VOCAB


@pytest.mark.parametrize("llm_name", sorted(TINY_LLMS))
def test_new_tokens_fit_padded_vocab_and_start_at_mean(llm_name):
    llm, tokenizer = load_llm(llm_name)
    old_len = len(tokenizer)
    old_mean = llm.get_input_embeddings().weight[:old_len].mean(0).clone()
    ids = add_image_tokens(tokenizer, llm)
    assert llm.get_input_embeddings().num_embeddings == TINY_PADDED_VOCAB  # not shrunk to len(tokenizer)
    for token_id in ids.values():
        assert token_id >= old_len
        torch.testing.assert_close(llm.get_input_embeddings().weight[token_id], old_mean)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_vocab_grows_when_tokenizer_outgrows_it():
    llm, tokenizer = load_llm("tiny-qwen3")
    llm.resize_token_embeddings(len(tokenizer))
    ids = add_image_tokens(tokenizer, llm)
    assert llm.get_input_embeddings().num_embeddings == len(tokenizer)
    assert max(ids.values()) < len(tokenizer)
    assert llm.get_output_embeddings().weight.shape[0] == len(tokenizer)
