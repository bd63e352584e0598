"""A run with `on_bad_sample: skip` over a dataset with planted bad rows finishes and reports every one of them."""
from __future__ import annotations

import json

from multimeditron.config import parse_config
from multimeditron.training.run import run_training
from tests.data.test_bad_samples import planted


def test_skip_run_finishes_and_reports_counts(tmp_path, caplog):
    folder, bad = planted(tmp_path)
    config = parse_config({
        "model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
        "data": {"train": [{"path": str(folder)}], "max_sequence_length": 128, "on_bad_sample": "skip",
                 "max_bad_sample_share": 1.0},  # nearly every planted row is bad
        "stage": "alignment",
        "training_args": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 2,
                          "save_strategy": "no", "disable_tqdm": True},
    })
    result = run_training(config)
    assert result.bad_samples == {reason: 1 for reason in bad.values()}
    assert json.loads((tmp_path / "out" / "bad_samples.json").read_text()) == result.bad_samples
    assert "bad samples skipped" in caplog.text
    assert (result.final_dir / "model.safetensors").is_file()
    checkpoint_files = {p.name for p in result.final_dir.iterdir()}
    assert {"config.json", "processor_config.json", "tokenizer.json"} <= checkpoint_files
