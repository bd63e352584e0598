"""`loss_averaging`: one accumulated step over two micro-batches whose answers differ in length gives the token mean
over both (`global_tokens`) or the mean of the two micro-batch token means (`micro_batch`, the published averaging)."""
from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from multimeditron.training.trainer import MultiMeditronTrainer
from tests.conftest import tiny_model


def micro_batch(answer_tokens: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 200, (1, 12), generator=generator)
    labels = torch.full_like(ids, -100)
    labels[0, -answer_tokens:] = ids[0, -answer_tokens:]  # the answer: the last `answer_tokens` tokens
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def summed_token_loss(model, batch) -> tuple[float, int]:
    """Sum of the answer tokens' cross entropies and their count, computed here from the logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    losses = torch.nn.functional.cross_entropy(logits[:, :-1][keep], targets[keep], reduction="none")
    return float(losses.sum()), int(keep.sum())


def step_loss(averaging: str, batches, tmp_path) -> float:
    """What one accumulated optimizer step backpropagates: the sum of the training steps' (scaled) losses."""
    model, _ = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path / averaging), report_to=[], gradient_accumulation_steps=2,
                             per_device_train_batch_size=1, use_cpu=True)
    trainer = MultiMeditronTrainer(model=model, args=args, loss_averaging=averaging)
    trainer.current_gradient_accumulation_steps = len(batches)  # as the training loop sets it
    items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    model.train()
    return sum(float(trainer.training_step(model, dict(b), items)) for b in batches)


def test_global_tokens_and_micro_batch_give_the_two_averages(tmp_path):
    model, _ = tiny_model()
    batches = [micro_batch(2, seed=0), micro_batch(9, seed=1)]
    (sum_a, n_a), (sum_b, n_b) = (summed_token_loss(model, b) for b in batches)
    assert (n_a, n_b) == (2, 9)
    over_tokens = (sum_a + sum_b) / (n_a + n_b)
    over_micro_batches = (sum_a / n_a + sum_b / n_b) / 2
    assert abs(over_tokens - over_micro_batches) > 1e-3  # the two rules differ on these batches
    ours = step_loss("global_tokens", batches, tmp_path)
    published = step_loss("micro_batch", batches, tmp_path)
    assert ours == pytest.approx(over_tokens, rel=1e-4)
    assert published == pytest.approx(over_micro_batches, rel=1e-4)


def test_the_run_config_key_is_validated():
    from multimeditron.config import ConfigError, parse_config

    base = {"model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
            "data": {"train": [{"path": "x"}]}, "stage": "alignment", "training_args": {"output_dir": "out"}}
    assert parse_config(base).loss_averaging == "global_tokens"
    assert parse_config({**base, "loss_averaging": "micro_batch"}).loss_averaging == "micro_batch"
    with pytest.raises(ConfigError, match="loss_averaging"):
        parse_config({**base, "loss_averaging": "tokens"})


def test_unknown_averaging_is_refused(tmp_path):
    model, _ = tiny_model()
    with pytest.raises(ValueError, match="loss_averaging: 'sum' is not one of"):
        MultiMeditronTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]),
                             loss_averaging="sum")
