"""An expert to adapt, from a SPEC string of part 1's parser (`multimeditron.probing.specs`): checked before anything
heavy (`expert_spec`), then built with its weights, trainable, emitting its family's global (`cls`) output, plus
the spec to record beside the result."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from multimeditron.experts.base import ExpertSpec, VisionExpert
from multimeditron.experts.registry import resolved_spec
from multimeditron.probing.specs import (
    ExpertSpecError,
    ParsedSpec,
    build_probe_expert,
    check_spec,
    parse_spec,
)


def expert_spec(text: str, tiny: bool = False, options: dict[str, Any] | None = None,
                options_from: str = "the recipe") -> ParsedSpec:
    """The parsed SPEC with `options` added, checked (`check_spec`: checkpoint present, family accepts the options);
    an option that the SPEC sets to another value is refused, naming `options_from`."""
    parsed = parse_spec(text, tiny=tiny)
    if options:
        own = json.loads(json.dumps(parsed.spec.options))
        clash = sorted(k for k, v in options.items() if k in own and own[k] != v)
        if clash:
            raise ExpertSpecError(f"expert {parsed.name!r}: its options set {clash[0]}={own[clash[0]]!r}, "
                                  f"{options_from} {options[clash[0]]!r}; give it once")
        parsed = dataclasses.replace(parsed, spec=dataclasses.replace(parsed.spec,
                                                                      options={**parsed.spec.options, **options}))
    check_spec(parsed)
    return parsed


def load_expert(spec: str | ParsedSpec, tiny: bool = False, options: dict[str, Any] | None = None,
                seed: int | None = None) -> tuple[VisionExpert, ExpertSpec]:
    """(the expert with its weights, in train mode with gradients on; its resolved spec for the adapted folder).

    `spec`: a SPEC string (checked by `expert_spec` with `tiny` and `options`) or one already checked; `seed` is
    `build_probe_expert`'s (the random start of an expert without a checkpoint)."""
    parsed = spec if isinstance(spec, ParsedSpec) else expert_spec(spec, tiny, options)
    expert = build_probe_expert(parsed, seed).requires_grad_(True).train()
    return expert, resolved_spec(parsed.spec, expert)


def spec_text(spec: str | dict[str, Any]) -> str:
    """A recipe's `expert.spec` (a SPEC string, or a mapping of expert keys) as the text `parse_spec` reads."""
    if isinstance(spec, dict):
        return json.dumps(spec)
    return spec
