"""Beside `base_model`, every architecture key the user wrote must agree with the stored model, even when its value
is the default; the dry run performs the same check as the real run."""
from __future__ import annotations

import pytest

from multimeditron.config import ConfigError, check_base_model_agrees, parse_config
from multimeditron.training.plan import format_plan
from tests.conftest import GENERALIST, SPECIALIST, tiny_model


@pytest.fixture(scope="module")
def stored_model(tmp_path_factory):
    model, processor = tiny_model("tiny-llama", [GENERALIST, SPECIALIST], fusion="avg", projection="per_expert",
                                  router="learned", attn_heads=4)
    folder = tmp_path_factory.mktemp("stage1") / "final"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def run_config(tmp_path, base_model, **model_keys):
    return parse_config({"model": {"base_model": str(base_model), **model_keys},
                         "data": {"train": [{"path": str(tmp_path)}]}, "stage": "end2end",
                         "training_args": {"output_dir": str(tmp_path / "out")}})


@pytest.mark.parametrize("key,value", [("fusion", "none"), ("projection", "shared"), ("router", "uniform"),
                                       ("attn_heads", 8), ("fusion", "cat"), ("generalist_index", 0),
                                       ("experts", [GENERALIST])])
def test_written_key_that_contradicts_is_an_error_in_run_and_dry_run(tmp_path, stored_model, key, value):
    if (key, value) == ("generalist_index", 0):
        value = 1  # 0 is what the stored model has
    config = run_config(tmp_path, stored_model, **{key: value})
    with pytest.raises(ConfigError, match=rf"model\.{key}: .* contradicts the architecture stored"):
        from transformers import AutoConfig

        check_base_model_agrees(config.model, AutoConfig.from_pretrained(stored_model).to_dict())
    with pytest.raises(ConfigError, match=rf"model\.{key}: .* contradicts"):
        format_plan(config)


def test_agreeing_keys_pass(tmp_path, stored_model):
    config = run_config(tmp_path, stored_model, fusion="avg", projection="per_expert", router="learned",
                        attn_heads=4, generalist_index=0, experts=[GENERALIST, SPECIALIST], llm="tiny-llama")
    assert "continue from" in format_plan(config)
