"""The model section -> model config mapping: one function for the run and the dry run, covering every key."""
from __future__ import annotations

from multimeditron.config import ModelSection, parse_config
from multimeditron.training.model_setup import architecture_kwargs


def test_every_architecture_key_reaches_the_model_config():
    assert set(ModelSection.ARCHITECTURE_KEYS) - {"llm"} <= set(architecture_kwargs(ModelSection()))


def test_the_dry_run_builds_the_architecture_the_run_builds(tmp_path):
    """Before: the dry run's own copy of the mapping left `attachment_token` out."""
    from multimeditron.training.plan import _meta_model

    config = parse_config({
        "model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}] * 2,
                  "fusion": "attn", "router": "learned", "attn_heads": 2, "attachment_token": "<image>"},
        "data": {"train": [{"path": "x"}]}, "stage": "alignment", "training_args": {"output_dir": str(tmp_path)}})
    stored = _meta_model(config).config
    for key, value in architecture_kwargs(config.model).items():
        assert getattr(stored, key) == value, key
