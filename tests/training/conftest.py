"""Fixtures for training tests: a small synthetic VQA set on disk and a tiny-model run config writer."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from multimeditron.data.synthetic import generate_synthetic_vqa

    out = tmp_path_factory.mktemp("synthetic") / "vqa"
    generate_synthetic_vqa(out, num_train=64, num_test=16, seed=0, image_size=32)
    return out


def write_run_config(path: Path, data_dir: Path, output_dir: Path, stage: str = "end2end", **training_args) -> Path:
    config = {
        "model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
        "data": {"train": [{"path": str(data_dir), "split": "train"}], "max_sequence_length": 256},
        "stage": stage,
        "seed": 0,
        "training_args": {"output_dir": str(output_dir), "max_steps": 4, "per_device_train_batch_size": 4,
                          "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no",
                          "dataloader_num_workers": 0, "disable_tqdm": True, **training_args},
    }
    path.write_text(yaml.safe_dump(config))
    return path
