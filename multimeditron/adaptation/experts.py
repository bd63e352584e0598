"""An expert to adapt, from a SPEC string of part 1's parser (`multimeditron.probing.specs`): built with its
weights, trainable, emitting its family's global (`cls`) output, plus the spec to record beside the result."""
from __future__ import annotations

import dataclasses
from typing import Any

from multimeditron.experts.base import ExpertSpec, VisionExpert
from multimeditron.experts.registry import resolved_spec
from multimeditron.probing.specs import build_probe_expert, parse_spec


def load_expert(text: str, tiny: bool = False, options: dict[str, Any] | None = None, seed: int | None = None,
                ) -> tuple[VisionExpert, ExpertSpec]:
    """(the expert with its weights, in train mode with gradients on; its resolved spec for the adapted folder).

    `options` are added to the spec's (an explicit option in SPEC wins); `seed` is `build_probe_expert`'s (the
    random start of an expert without a checkpoint)."""
    parsed = parse_spec(text, tiny=tiny)
    if options:
        parsed = dataclasses.replace(parsed, spec=dataclasses.replace(
            parsed.spec, options={**options, **parsed.spec.options}))
    expert = build_probe_expert(parsed, seed).requires_grad_(True).train()
    return expert, resolved_spec(parsed.spec, expert)


def spec_text(spec: str | dict[str, Any]) -> str:
    """A recipe's `expert.spec` (a SPEC string, or a mapping of expert keys) as the text `parse_spec` reads."""
    if isinstance(spec, dict):
        import json

        return json.dumps(spec)
    return spec
