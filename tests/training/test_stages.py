"""Stages set requires_grad in one place; alignment trains only the new token rows of the embeddings."""
from __future__ import annotations

import pytest
import torch

from multimeditron.training.stages import STAGE_PARTS, apply_stage, format_table
from tests.conftest import GENERALIST, SPECIALIST, prompt_batch, tiny_model

# stage: (vision glue, experts, llm, llm input embeddings), as the stage table of the issue and README states them.
EXPECTED = {
    "alignment": ("trainable", "frozen", "frozen", "partly trainable"),
    "vision_alignment": ("trainable", "trainable", "frozen", "partly trainable"),
    "end2end": ("trainable", "frozen", "trainable", "trainable"),
    "full": ("trainable", "trainable", "trainable", "trainable"),
    "lm_only": ("frozen", "frozen", "trainable", "trainable"),
}


@pytest.mark.parametrize("stage", list(EXPECTED))
def test_stage_parts(stage):
    model, _ = tiny_model("tiny-llama", [GENERALIST, SPECIALIST], fusion="attn", projection="per_expert",
                          router="learned", attn_heads=2)
    table = {row.name: row.state for row in apply_stage(model, stage)}
    glue, experts, llm, embeddings = EXPECTED[stage]
    assert table["projectors"] == glue and table["router"] == glue and table["fusion (cross-attention)"] == glue
    assert table["expert[0] timm:vit_small_patch16_224"] == experts
    assert table["expert[1] timm:vit_base_patch16_224"] == experts
    assert table["llm"] == llm
    assert table["llm input embeddings"] == embeddings
    assert "all" in format_table(apply_stage(model, stage), stage)


def test_every_configurable_stage_is_covered():
    from multimeditron.config import STAGES

    assert set(STAGES) == set(EXPECTED)


def test_unknown_stage_is_refused():
    model, _ = tiny_model()
    with pytest.raises(ValueError, match="unknown stage 'aligment'"):
        apply_stage(model, "aligment")


def _embedding_rows_moved_by_one_step(model, processor) -> list[int]:
    model.train()
    batch = prompt_batch(processor, [1, 1])
    before = model.get_input_embeddings().weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model(**batch, labels=labels).loss.backward()
    optimizer.step()
    after = model.get_input_embeddings().weight.detach()
    return (after != before).any(dim=1).nonzero().flatten().tolist()


@pytest.mark.parametrize("stage", ["alignment", "vision_alignment"])
def test_frozen_llm_stages_update_only_new_token_rows(stage):
    model, processor = tiny_model("tiny-llama")
    apply_stage(model, stage)
    assert _embedding_rows_moved_by_one_step(model, processor) == sorted(
        [model.config.image_start_token_id, model.config.image_end_token_id])


@pytest.mark.parametrize("stage", ["end2end", "full"])
def test_lora_stages_update_the_new_token_rows(stage):
    from peft import LoraConfig, get_peft_model

    model, processor = tiny_model("tiny-llama")
    model.language_model = get_peft_model(model.language_model, LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    table = {row.name: row.state for row in apply_stage(model, stage, lora=True)}
    assert table["llm input embeddings"] == "partly trainable"
    assert _embedding_rows_moved_by_one_step(model, processor) == sorted(
        [model.config.image_start_token_id, model.config.image_end_token_id])


PRETRAINED_ROUTER = {"class_to_expert": [0, 1], "arch": "resnet18", "options": {"layers": [1, 1, 1, 1]},
                     "image_size": 16}


# fusion `none` means one expert, so only the uniform router applies to it: 20 buildable combinations.
BUILDABLE = [(fusion, projection, router) for fusion in ("none", "avg", "cat", "attn")
             for projection in ("shared", "per_expert") for router in ("uniform", "learned", "pretrained")
             if fusion != "none" or router == "uniform"]


@pytest.mark.parametrize(("fusion", "projection", "router"), BUILDABLE)
def test_every_parameter_is_in_exactly_one_part(fusion, projection, router):
    """The table's parts and the stage parts both come from `VisionStack.part_modules`: each claims every parameter
    once, for every fusion x projection x router."""
    from multimeditron.training.stages import model_parts, stage_parameters

    experts = [GENERALIST] if fusion == "none" else [GENERALIST, GENERALIST]
    extra = {"router_classifier": PRETRAINED_ROUTER} if router == "pretrained" else {}
    model, _ = tiny_model(experts=experts, fusion=fusion, projection=projection, router=router, attn_heads=2, **extra)
    everything = sorted(id(p) for p in model.parameters())
    for grouping in (model_parts(model), stage_parameters(model)):
        assert sorted(id(p) for params in grouping.values() for p in params) == everything
    for stage in ("alignment", "end2end", "full"):
        apply_stage(model, stage)
        parts = stage_parameters(model)
        trained = {id(p) for part in parts for p in parts[part] if p.requires_grad}
        assert trained == {id(p) for p in model.parameters() if p.requires_grad}, stage
        assert all(not p.requires_grad for part in set(parts) - STAGE_PARTS[stage] for p in parts[part]), stage
    embeddings = model.get_input_embeddings().weight
    apply_stage(model, "alignment")  # only the new token rows learn: the embeddings are vision glue
    assert any(p is embeddings for p in stage_parameters(model)["vision_glue"])
    apply_stage(model, "end2end")
    assert any(p is embeddings for p in stage_parameters(model)["llm"])


def test_a_parameter_no_part_claims_is_named():
    """A parameter outside every part is an error naming it, not a bare `KeyError` from `create_optimizer`."""
    from multimeditron.training.stages import stage_parameters

    model, _ = tiny_model()
    model.stray = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"belong to no training part: \['stray.weight', 'stray.bias'\]"):
        stage_parameters(model)
