"""save_pretrained + from_pretrained (through the Auto classes) rebuild the same model and processor offline."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from multimeditron import MultiMeditronProcessor
from tests.conftest import GENERALIST, SPECIALIST, prompt_batch, tiny_model


@pytest.mark.parametrize("llm,kwargs", [
    ("tiny-qwen3", {}),
    ("tiny-llama", {"experts": [GENERALIST, SPECIALIST], "fusion": "attn", "projection": "per_expert",
                    "router": "learned", "router_top_k": 1, "attn_heads": 2}),
])
def test_round_trip_gives_identical_logits(tmp_path, llm, kwargs):
    model, processor = tiny_model(llm, **kwargs)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "multimeditron"
    assert AutoConfig.from_pretrained(tmp_path).fusion == model.config.fusion

    reloaded_processor = MultiMeditronProcessor.from_pretrained(tmp_path)
    assert reloaded_processor.num_image_tokens == processor.num_image_tokens
    batch = prompt_batch(reloaded_processor, [1, 2])
    assert torch.equal(batch["input_ids"], prompt_batch(processor, [1, 2])["input_ids"])
    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        reloaded = auto.from_pretrained(tmp_path).eval()
        assert reloaded.config._attn_implementation == "sdpa"
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
