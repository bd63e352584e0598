"""The training fast path (LM head only at labelled positions) against the LLM's own full-logits loss."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import LLM_FAMILIES, prompt_batch, tiny_model


def _batch(processor):
    batch = prompt_batch(processor, [1, 2, 0])
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[:, : labels.shape[1] // 2] = -100  # the prompt half carries no labels, as in SFT
    batch["labels"] = labels
    return batch


def _loss_and_grads(model, batch, fast: bool, **extra):
    model.zero_grad(set_to_none=True)
    model.train()
    if not fast:  # the LLM's own forward: full logits + HF ForCausalLMLoss
        model._logits_are_plain_projection = lambda: False
    try:
        loss = model(**batch, **extra).loss
    finally:
        model.__dict__.pop("_logits_are_plain_projection", None)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("llm", LLM_FAMILIES)
@pytest.mark.parametrize("num_items", [None, 37])
def test_labelled_positions_loss_equals_full_logits_loss(llm: str, num_items: int | None) -> None:
    model, processor = tiny_model(llm)
    batch = _batch(processor)
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    fast_loss, fast_grads = _loss_and_grads(model, batch, fast=True, **extra)
    slow_loss, slow_grads = _loss_and_grads(model, batch, fast=False, **extra)
    torch.testing.assert_close(fast_loss, slow_loss, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == slow_grads.keys()
    for name in slow_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_labelled_positions_logits_are_the_labelled_rows() -> None:
    model, processor = tiny_model()
    batch = _batch(processor)
    model.train()
    fast = model(**batch)
    model.eval()
    with torch.no_grad():
        full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    targets = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
    torch.testing.assert_close(fast.logits.detach(), full[targets != -100].float(), rtol=1e-5, atol=1e-5)


def test_batch_without_labels_gives_zero_loss_not_nan() -> None:
    model, processor = tiny_model()
    batch = _batch(processor)
    batch["labels"][:] = -100
    model.train()
    loss = model(**batch).loss
    assert loss.item() == 0.0
    loss.backward()  # still differentiable, so every rank of a distributed step runs its backward


def test_an_unlisted_llm_family_keeps_its_own_forward(monkeypatch) -> None:
    """An allow-list: before, a deny-list of logit transforms let any family it did not name take the fast path."""
    model, processor = tiny_model("tiny-qwen3")
    assert model._logits_are_plain_projection()
    monkeypatch.setattr(model.config.text_config, "model_type", "some_new_family")
    assert not model._logits_are_plain_projection()
    batch = _batch(processor)
    model.train()
    output = model(**batch)
    assert output.logits.shape[:2] == batch["input_ids"].shape  # the full logits: the LLM's own forward ran
