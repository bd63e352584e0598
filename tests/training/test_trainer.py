"""`MultiMeditronTrainer` throughput counts: right for padded and packed batches, and read from the device once per
log instead of every step."""
from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from multimeditron.training.trainer import MultiMeditronTrainer
from tests.conftest import tiny_model

HOST_READS = ("__int__", "__float__", "__bool__", "__index__", "item", "tolist", "cpu", "numpy")


class HostReadSpy(torch.Tensor):
    """A tensor that records every read of its values on the host (each one a GPU sync on a CUDA tensor)."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            cls.reads.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.fixture
def trainer(tmp_path):
    model, _ = tiny_model()
    return MultiMeditronTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))


def test_counting_a_batch_reads_nothing_on_the_host(trainer, monkeypatch):
    """Counting a batch reads nothing on the host: a per-step read is a sync that stalls the GPU pipeline."""
    monkeypatch.setattr(HostReadSpy, "reads", [])
    padded = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).as_subclass(HostReadSpy)}
    packed = {"sample_ids": torch.tensor([[0, 0, 1, 1, 1, -1], [2, 2, 2, 2, 3, 3]]).as_subclass(HostReadSpy)}
    for _ in range(3):
        trainer._count_batch(padded)
    trainer._count_batch(packed)
    assert HostReadSpy.reads == []
    assert int(trainer._window_samples) == 3 * 2 + 4 and int(trainer._window_tokens) == 3 * 5 + 11
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert logs["samples_per_second"] > 0 and logs["tokens_per_second"] / logs["samples_per_second"] == \
        pytest.approx(26 / 10, rel=1e-2)
    assert (trainer._window_samples, trainer._window_tokens) == (0, 0)  # a new window starts
