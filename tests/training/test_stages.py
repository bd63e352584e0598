"""Stages set requires_grad in one place; alignment trains only the new token rows of the embeddings."""
from __future__ import annotations

import pytest
import torch

from multimeditron.training.stages import apply_stage, format_table
from tests.conftest import GENERALIST, SPECIALIST, prompt_batch, tiny_model


@pytest.mark.parametrize("stage", ["alignment", "end2end", "full", "lm_only"])
def test_stage_parts(stage):
    model, _ = tiny_model("tiny-llama", [GENERALIST, SPECIALIST], fusion="attn", projection="per_expert",
                          router="learned", attn_heads=2)
    table = {row.name: row.state for row in apply_stage(model, stage)}
    glue = "frozen" if stage == "lm_only" else "trainable"
    assert table["projectors"] == glue and table["router"] == glue and table["fusion (cross-attention)"] == glue
    assert table["expert[0] timm:vit_small_patch16_224"] == ("trainable" if stage == "full" else "frozen")
    assert table["llm"] == ("frozen" if stage == "alignment" else "trainable")
    assert table["llm input embeddings"] == ("partly trainable" if stage == "alignment" else
                                             "trainable" if stage != "alignment" else "frozen")
    assert "all" in format_table(apply_stage(model, stage), stage)


def test_alignment_updates_only_new_token_rows():
    model, processor = tiny_model("tiny-llama")
    apply_stage(model, "alignment")
    model.train()
    batch = prompt_batch(processor, [1, 1])
    before = model.get_input_embeddings().weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model(**batch, labels=labels).loss.backward()
    optimizer.step()
    after = model.get_input_embeddings().weight.detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == sorted([model.config.image_start_token_id, model.config.image_end_token_id])
