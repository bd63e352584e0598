"""`attn_variant: published`: the published cross-attention fusion, checked against a forward written here by hand
from its description (generalist queries; every expert, the generalist included, as keys/values, scaled by a second
softmax over the router weights before the k/v projections; biased q/k/v/out; dropout 0.1; no norm, no residual)."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from multimeditron.model.configuration import MultiMeditronConfig
from multimeditron.model.fusion import CrossAttentionFusion, PublishedCrossAttention, fuse
from tests.conftest import GENERALIST, SPECIALIST, prompt_batch, tiny_model

B, E, T, D, HEADS = 2, 3, 4, 8, 2


def reference_forward(weights: dict[str, torch.Tensor], stacked: torch.Tensor, router: torch.Tensor,
                      generalist: int, dropout_masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The published forward, one image and one head at a time, with plain matrix products."""
    outputs = []
    for b in range(stacked.shape[0]):
        scale = torch.exp(router[b]) / torch.exp(router[b]).sum()  # softmax over the (already normalised) weights
        context = torch.cat([stacked[b, e] * scale[e] for e in range(stacked.shape[1])])  # (E*T, D)
        q = stacked[b, generalist] @ weights["q_proj.weight"].T + weights["q_proj.bias"]
        k = context @ weights["k_proj.weight"].T + weights["k_proj.bias"]
        v = context @ weights["v_proj.weight"].T + weights["v_proj.bias"]
        head_dim = D // HEADS
        heads = []
        for h in range(HEADS):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(head_dim)
            attention = torch.exp(scores - scores.max(-1, keepdim=True).values)
            attention = attention / attention.sum(-1, keepdim=True)
            if dropout_masks is not None:
                attention = attention * dropout_masks[0][b, h] / 0.9
            heads.append(attention @ v[:, cols])
        out = torch.cat(heads, dim=-1) @ weights["proj.weight"].T + weights["proj.bias"]
        if dropout_masks is not None:
            out = out * dropout_masks[1][b] / 0.9
        outputs.append(out)
    return torch.stack(outputs)


def fixed_layer() -> tuple[PublishedCrossAttention, dict[str, torch.Tensor]]:
    layer = PublishedCrossAttention(D, HEADS)
    generator = torch.Generator().manual_seed(7)
    weights = {name: torch.randn(p.shape, generator=generator) * 0.3 for name, p in layer.state_dict().items()}
    layer.load_state_dict(weights)
    return layer, weights


def test_published_names_and_no_norm_or_residual():
    layer, _ = fixed_layer()
    assert sorted(layer.state_dict()) == sorted(
        f"{m}.{p}" for m in ("q_proj", "k_proj", "v_proj", "proj") for p in ("weight", "bias"))


def test_the_second_softmax_flattens_the_gate_probabilities():
    probs = torch.tensor([0.9, 0.025, 0.025, 0.025, 0.025])
    assert torch.allclose(probs.softmax(-1), torch.tensor([0.375, 0.156, 0.156, 0.156, 0.156]), atol=1e-3)


@pytest.mark.parametrize("generalist", [0, E - 1])
def test_eval_forward_equals_the_hand_written_reference(generalist):
    layer, weights = fixed_layer()
    layer.eval()
    stacked = torch.randn(B, E, T, D)
    router = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    got = fuse("attn", stacked, router, E, generalist, layer)
    expected = reference_forward(weights, stacked, router, generalist)
    assert torch.allclose(got, expected, atol=1e-5)
    # The router weights reach the output (through the keys and the values).
    assert not torch.allclose(got, fuse("attn", stacked, router * 0 + 1 / E, E, generalist, layer), atol=1e-4)


def test_training_forward_applies_dropout_on_attention_weights_and_output():
    layer, weights = fixed_layer()
    layer.train()
    stacked, router = torch.randn(B, E, T, D), torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    torch.manual_seed(3)
    got = layer(stacked[:, 0], stacked, router, E)
    # The same random draws, in the published order: the attention weights' mask first, then the output's.
    torch.manual_seed(3)
    masks = (torch.nn.functional.dropout(torch.ones(B, HEADS, T, E * T), 0.1) * 0.9,
             torch.nn.functional.dropout(torch.ones(B, T, D), 0.1) * 0.9)
    assert (masks[0] == 0).any() and (masks[1] == 0).any()
    assert torch.allclose(got, reference_forward(weights, stacked, router, 0, masks), atol=1e-5)
    layer.eval()
    assert not torch.allclose(got, layer(stacked[:, 0], stacked, router, E))


def test_the_model_builds_the_variant_and_trains():
    model, processor = tiny_model("tiny-llama", [SPECIALIST, GENERALIST], fusion="attn", projection="per_expert",
                                  router="learned", attn_heads=2, attn_variant="published", generalist_index=-1)
    assert isinstance(model.vision.cross_attention, PublishedCrossAttention)
    assert model.config.attn_variant == "published"
    model.train()
    batch = prompt_batch(processor, [1, 1])
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    assert model.vision.cross_attention.k_proj.weight.grad.abs().sum() > 0
    default, _ = tiny_model("tiny-llama", [SPECIALIST, GENERALIST], fusion="attn", attn_heads=2)
    assert isinstance(default.vision.cross_attention, CrossAttentionFusion)


def test_published_variant_needs_every_expert():
    with pytest.raises(ValueError, match="attn_variant: `published` attends over every expert"):
        MultiMeditronConfig(experts=[GENERALIST, SPECIALIST, SPECIALIST], fusion="attn", router="learned",
                            router_top_k=2, attn_variant="published")


@pytest.mark.parametrize("projection", ["pep", "shared"])
def test_the_cookbook_attn_entries_ask_for_the_published_layer(projection):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / f"cookbook/sft/moe/attn/{projection}/stage1_alignment.yaml"
    model = yaml.safe_load(path.read_text())["model"]
    assert model["fusion"] == "attn" and model["attn_variant"] == "published"
