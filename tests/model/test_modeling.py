"""Forward/backward over LLM families x fusions x projections, the token-count check, batching and mixed batches."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import GENERALIST, LLM_FAMILIES, SPECIALIST, prompt_batch, tiny_model

COMBINATIONS = [("none", "shared", [GENERALIST])] + [
    (fusion, projection, [GENERALIST, SPECIALIST])
    for fusion in ("avg", "cat", "attn") for projection in ("shared", "per_expert")
]


@pytest.mark.parametrize("llm", LLM_FAMILIES)
@pytest.mark.parametrize("fusion,projection,experts", COMBINATIONS,
                         ids=[f"{f}-{p}" for f, p, _ in COMBINATIONS])
def test_forward_backward(llm, fusion, projection, experts):
    model, processor = tiny_model(llm, experts, fusion=fusion, projection=projection,
                                  attn_heads=2)
    model.train()
    batch = prompt_batch(processor, [1, 2, 0])
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum()
    assert image_tokens == 3 * processor.num_image_tokens == 3 * model.num_image_tokens
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    projector_grads = [p.grad for p in model.vision.projectors.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in projector_grads)
    assert any(g.abs().sum() > 0 for g in projector_grads)


def test_token_count_mismatch_names_both_counts():
    model, processor = tiny_model()
    batch = prompt_batch(processor, [1])
    ids = batch["input_ids"].clone()
    first = (ids[0] == model.config.image_token_id).nonzero()[0, 0]
    ids[0, first] = processor.tokenizer.pad_token_id
    n = processor.num_image_tokens
    with pytest.raises(ValueError, match=f"holds {n - 1} image tokens but 1 image\\(s\\) give {n} features"):
        model(input_ids=ids, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=batch["input_ids"])


def test_processor_refuses_placeholder_image_mismatch():
    _, processor = tiny_model()
    with pytest.raises(ValueError, match="1 image placeholder"):
        processor([f"{processor.attachment_token} what?"], images=[])


def test_text_only_row_matches_text_only_batch():
    """A text-only sample gives the same logits alone and beside an image sample (right padding)."""
    model, processor = tiny_model()
    mixed = prompt_batch(processor, [2, 0])
    alone = prompt_batch(processor, [0])
    with torch.no_grad():
        mixed_logits = model(**mixed).logits[1]
        alone_logits = model(**alone).logits[0]
    length = alone["input_ids"].shape[1]
    torch.testing.assert_close(mixed_logits[-length:], alone_logits, atol=1e-4, rtol=1e-4)


def test_image_changes_the_answer_distribution():
    model, processor = tiny_model()
    batch = prompt_batch(processor, [1])
    with torch.no_grad():
        a = model(**batch).logits[0, -1]
        batch["pixel_values"] = 1 - batch["pixel_values"]
        b = model(**batch).logits[0, -1]
    assert not torch.allclose(a, b)


def test_shared_projection_with_different_widths_is_refused():
    wide = {"id": "timm:vit_base_patch16_224", "tiny": True, "options": {"embed_dim": 48}}
    with pytest.raises(ValueError, match="projection: `shared`.*same feature width"):
        tiny_model(experts=[GENERALIST, wide], fusion="avg", projection="shared")


@pytest.mark.parametrize("fusion", ["avg", "cat", "attn"])
def test_heterogeneous_experts_with_per_expert_projection(fusion):
    """Different widths, grids, input sizes and normalisations; every fusion emits the reserved token count."""
    other = {"id": "timm:vit_small_patch16_224", "tiny": True, "image_size": 64,
             "options": {"embed_dim": 48, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    model, processor = tiny_model(experts=[GENERALIST, other], fusion=fusion, projection="per_expert",
                                  attn_heads=2)
    assert processor.image_size == 64
    assert model.vision.experts[1].num_tokens == 16 and model.vision.experts[0].num_tokens == 4
    assert model.num_image_tokens == (8 if fusion == "cat" else 4)
    batch = prompt_batch(processor, [1, 1])
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"])
        assert features.shape == (2, model.num_image_tokens, model.config.text_config.hidden_size)
        assert torch.isfinite(model(**batch).logits).all()


def test_config_refusals_name_the_key():
    with pytest.raises(ValueError, match="fusion: 'sum'"):
        tiny_model(fusion="sum")
    with pytest.raises(ValueError, match="fusion: `none` takes exactly one expert"):
        tiny_model(experts=[GENERALIST, SPECIALIST], fusion="none")
    with pytest.raises(ValueError, match="router_top_k"):
        tiny_model(experts=[GENERALIST, SPECIALIST], fusion="avg", router_top_k=1)
    with pytest.raises(KeyError, match="unknown expert id 'nope'"):
        tiny_model(experts=[{"id": "nope"}])


def test_building_a_model_leaves_the_given_config_as_it_was():
    """Building a model records each expert's resolved architecture in the model's own config, never in the
    caller's `config.experts`."""
    import copy

    from multimeditron.model.configuration import MultiMeditronConfig
    from multimeditron.model.modeling import MultiMeditronForCausalLM
    from multimeditron.presets import build_tiny_llm

    llm = build_tiny_llm("tiny-qwen3")
    config = MultiMeditronConfig(text_config=llm.config, experts=[{"id": "biomedclip", "tiny": True}],
                                 image_token_id=1, image_start_token_id=2, image_end_token_id=3)
    given = copy.deepcopy(config.to_dict())
    model = MultiMeditronForCausalLM(config, language_model=llm)
    assert config.to_dict() == given
    assert "open_clip_model_cfg" in str(model.config.experts[0]["options"])  # the model records what it resolved
    assert model.config.text_config is llm.config  # one LLM config: resizing the vocabulary later updates both
