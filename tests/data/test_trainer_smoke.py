"""The datasets and collator under a stock HF Trainer: group-by-length sampling, packing, nothing but model inputs
in the batches."""
from __future__ import annotations

import datasets
import pytest
from transformers import Trainer, TrainingArguments

from multimeditron.config import DataSection, DatasetEntry
from multimeditron.data import SFTCollator, build_sft_datasets
from multimeditron.data.schema import conversation_features
from tests.conftest import tiny_model
from tests.data.conftest import vqa_row


@pytest.mark.parametrize("packing", [False, True])
def test_two_training_steps(tmp_path, packing):
    """A stock `Trainer`: before, every batch carried `skipped_samples`, which it passed to the model's forward."""
    model, processor = tiny_model("tiny-qwen3")
    rows = [vqa_row(question="Why? " * (i % 5), answer="Because. " * (1 + i % 3), seed=i) for i in range(12)]
    datasets.Dataset.from_list(rows, features=conversation_features()).save_to_disk(tmp_path / "d")
    section = DataSection(train=[DatasetEntry(str(tmp_path / "d"))], eval=[DatasetEntry(str(tmp_path / "d"))],
                          max_sequence_length=160, packing=packing)
    data = build_sft_datasets(section, processor, seed=0)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, per_device_train_batch_size=2,
                             per_device_eval_batch_size=2, max_steps=2, report_to="none", save_strategy="no",
                             remove_unused_columns=False, train_sampling_strategy="group_by_length",
                             dataloader_num_workers=0, logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                             data_collator=SFTCollator(processor, packing=packing))
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0
    assert trainer.evaluate()["eval_loss"] > 0
    assert data.collect_skipped().total == 0
