"""`architecture_options` / `resolved_spec` / `spec_agrees`: what a built expert records about its architecture."""
from __future__ import annotations

import pytest

from multimeditron.experts.registry import build_expert, resolved_spec, spec_agrees


@pytest.mark.parametrize("spec", [
    {"id": "timm:vit_small_patch16_224", "tiny": True},
    {"id": "dinov3_vits16", "tiny": True},
    {"id": "mermed_fm", "tiny": True, "normalization": "oct"},
])
def test_code_defined_families_record_nothing(spec):
    assert resolved_spec(spec, build_expert(spec)).options == {}


@pytest.mark.parametrize("spec", [
    {"id": "clip", "tiny": True, "options": {"layer": -2}},
    {"id": "biomedclip", "tiny": True, "image_size": 48},
])
def test_resolved_spec_rebuilds_the_same_expert_and_is_a_fixed_point(spec):
    expert = build_expert(spec)
    resolved = resolved_spec(spec, expert)
    assert resolved.options.items() >= spec.get("options", {}).items()
    twin = build_expert(resolved)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in expert.state_dict().items()}
    assert (twin.mean, twin.std, twin.image_size, twin.num_tokens) == (
        expert.mean, expert.std, expert.image_size, expert.num_tokens)
    assert resolved_spec(resolved, twin) == resolved


def test_spec_agrees_ignores_recorded_architecture_only():
    given = {"id": "clip", "tiny": True, "options": {"layer": -2}}
    stored = resolved_spec(given, build_expert(given)).to_dict()
    assert stored != given
    assert spec_agrees(given, stored)
    assert not spec_agrees({**given, "options": {"layer": -1}}, stored)
    assert not spec_agrees({**given, "image_size": 56}, stored)
    assert not spec_agrees({"id": "clip", "options": {"layer": -2}}, stored)  # tiny differs
