"""The model section -> `MultiMeditronConfig`: the one function through which the config checks, the preflight, the
dry run and the run build the model's config (no caller can leave a key out), and the check that the keys written
beside `base_model` agree with the stored architecture."""
from __future__ import annotations

from typing import Any

from multimeditron.config.schema import ModelSection
from multimeditron.config.typed import ConfigError, written_keys
from multimeditron.experts.registry import spec_agrees
from multimeditron.model.configuration import TRAINING_SETTINGS, MultiMeditronConfig, counted_from_the_start


def model_config(section: ModelSection, text_config: Any = None,
                 token_ids: dict[str, int] | None = None) -> MultiMeditronConfig:
    """The run's model config. A new model: every key of the section (`SECTION_KEYS`), plus the LLM's config and the
    special tokens' ids once the LLM is loaded (without them the architecture is still validated); an error names
    `model.<key>`. With `base_model`: the stored config, after checking that the written keys agree with it, with
    the section's training settings (`TRAINING_SETTINGS`)."""
    if section.base_model is not None:
        from transformers import AutoConfig

        stored = AutoConfig.from_pretrained(section.base_model)
        check_base_model_agrees(section, stored.to_dict())
        for key in TRAINING_SETTINGS:
            setattr(stored, key, getattr(section, key))
        return stored
    try:
        return MultiMeditronConfig(text_config=text_config, base_llm=section.llm, **(token_ids or {}),
                                   **section.model_config_kwargs())
    except ValueError as error:  # its messages start with the key ("fusion: ...")
        raise ConfigError(f"model.{error}") from error


def check_base_model_agrees(section: ModelSection, stored: dict[str, Any]) -> None:
    """Every architecture key written beside `base_model` must match the checkpoint, whatever its value (a key
    equal to its default counts too); the stored architecture wins."""
    for key in ModelSection.ARCHITECTURE_KEYS:
        if key not in written_keys(section):
            continue
        given = getattr(section, key)
        if key == "experts":
            stored_value = stored.get("experts") or []
            if len(given) == len(stored_value) and all(spec_agrees(g, s) for g, s in zip(given, stored_value)):
                continue
            given = [e.to_dict() for e in given]
        elif key == "router_classifier":
            given, stored_value = section.router_classifier_dict(), stored.get(key)
            if given is not None and stored_value is not None and all(stored_value.get(k) == v for k, v in given.items()):
                continue
        elif key == "generalist_index":  # negative: counted from the end, as the model config counts it
            stored_value = stored.get(key)
            given = counted_from_the_start(given, len(stored.get("experts") or []))
        elif key == "llm":
            stored_value = stored.get("base_llm")
            if stored_value is None:  # a model saved without the record of its LLM: nothing to compare with
                continue
        else:
            stored_value = stored.get(key)
        if given == stored_value:
            continue
        raise ConfigError(
            f"model.{key}: {given!r} contradicts the architecture stored in model.base_model "
            f"({section.base_model}: {stored_value!r}); remove model.{key} or start a new model without base_model"
        )
