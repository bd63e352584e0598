"""The shared choices: the run config, the model config, the builder and the converters read one definition."""
from __future__ import annotations

import inspect
import typing

import pytest

from multimeditron import choices
from multimeditron.config import ConfigError, ModelSection, parse_config
from multimeditron.model.configuration import MultiMeditronConfig

FIELDS = {"fusion": choices.Fusion, "projection": choices.Projection, "router": choices.Router,
          "projector_type": choices.ProjectorType, "image_geometry": choices.ImageGeometry,
          "attn_variant": choices.AttnVariant}


def test_the_run_config_and_the_model_config_accept_the_same_values():
    hints = typing.get_type_hints(ModelSection)
    for key, literal in FIELDS.items():
        assert hints[key] is literal, key
        with pytest.raises(ValueError, match=f"{key}: 'bogus' is not one of"):
            MultiMeditronConfig(**{key: "bogus"})
        with pytest.raises(ConfigError, match=f"model.{key}"):
            parse_config({"model": {"llm": "tiny-qwen3", key: "bogus"}, "data": {"train": [{"path": "x"}]},
                          "stage": "alignment", "training_args": {"output_dir": "out"}})


def test_one_default_attachment_token():
    from multimeditron.data import convert, synthetic
    from multimeditron.model import processing

    token = choices.DEFAULT_ATTACHMENT_TOKEN
    assert ModelSection().attachment_token == MultiMeditronConfig().attachment_token == token
    assert synthetic.ATTACHMENT_TOKEN == convert.DEFAULT_ATTACHMENT_TOKEN == token
    for function in (processing.MultiMeditronProcessor.__init__, convert.llava_row):
        assert inspect.signature(function).parameters["attachment_token"].default == token, function
