"""Registry of vision experts: id -> builder. `timm:<name>` builds any timm ViT as an expert."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

from multimeditron.experts.adapted import adapted_spec
from multimeditron.experts.base import ExpertSpec, VisionExpert

ExpertBuilder = Callable[[ExpertSpec], VisionExpert]
_BUILDERS: dict[str, ExpertBuilder] = {}
_PREFIX_BUILDERS: dict[str, ExpertBuilder] = {}


def register_expert(*expert_ids: str, prefix: bool = False) -> Callable[[ExpertBuilder], ExpertBuilder]:
    """Decorator: register a builder under one or more ids (or an id prefix such as `timm:`)."""

    def wrap(builder: ExpertBuilder) -> ExpertBuilder:
        table = _PREFIX_BUILDERS if prefix else _BUILDERS
        for expert_id in expert_ids:
            if expert_id in table:
                raise ValueError(f"expert id {expert_id!r} registered twice")
            table[expert_id] = builder
        return builder

    return wrap


def _ensure_families_loaded() -> None:
    # Importing the family modules runs their @register_expert decorators.
    from multimeditron.experts import families  # noqa: F401


def available_experts() -> list[str]:
    _ensure_families_loaded()
    return sorted(_BUILDERS) + [f"{p}<name>" for p in sorted(_PREFIX_BUILDERS)]


def build_expert(spec: ExpertSpec | dict[str, Any], load_checkpoint: bool = True) -> VisionExpert:
    """Build the expert a spec names; load its checkpoint when it has one and `load_checkpoint` is set."""
    _ensure_families_loaded()
    spec = adapted_spec(spec)  # a folder written by finetune/adapt brings its architecture
    builder = _BUILDERS.get(spec.id)
    if builder is None:
        builder = next((b for p, b in _PREFIX_BUILDERS.items() if spec.id.startswith(p)), None)
    if builder is None:
        raise KeyError(f"unknown expert id {spec.id!r}; valid ids: {', '.join(available_experts())}")
    expert = builder(spec)
    if load_checkpoint and spec.checkpoint:
        expert.load_checkpoint(spec.checkpoint)
    return expert


def resolved_spec(spec: ExpertSpec | dict[str, Any], expert: VisionExpert) -> ExpertSpec:
    """`spec` with the architecture its built `expert` resolved (`architecture_options`) merged into its options.

    Building from the result needs no file beside the checkpoint and no hub access for the architecture; the
    `checkpoint` field is kept as the record of where the weights came from. Values are normalised through JSON
    (tuples become lists) so that the spec compares equal after a save/load of the model config.
    """
    spec = adapted_spec(spec)
    recorded = json.loads(json.dumps(expert.architecture_options()))
    return dataclasses.replace(spec, options={**spec.options, **recorded})


def spec_agrees(given: ExpertSpec | dict[str, Any], stored: ExpertSpec | dict[str, Any]) -> bool:
    """Whether a user's spec names the expert a model config stores, ignoring what the stored spec recorded.

    A stored spec holds the user's options plus the resolved architecture (`resolved_spec`), so it agrees with a
    given spec whose fields are equal and whose options it all carries with the same values.
    """
    given, stored = adapted_spec(given), ExpertSpec.from_dict(stored)
    given_options = json.loads(json.dumps(given.options))
    if dataclasses.replace(given, options={}) != dataclasses.replace(stored, options={}):
        return False
    return all(key in stored.options and stored.options[key] == value for key, value in given_options.items())
