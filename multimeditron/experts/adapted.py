"""Adapted-expert checkpoints: a folder written by `multimeditron finetune` / `adapt` that the registry loads as the
expert it came from, with no conversion.

The folder holds `expert.json` (the spec the weights belong to, plus how they were made) and `expert.safetensors`
(the expert's own `state_dict`, in its module layout). `ExpertSpec(id=..., checkpoint=FOLDER)` then builds that
architecture (`adapted_spec` fills in `tiny`, `image_size`, `options` from the record) and
`VisionExpert.load_checkpoint(FOLDER)` loads those weights strictly, for every family.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from multimeditron.experts.base import ExpertSpec, LoadReport

RECORD_FILE = "expert.json"
WEIGHTS_FILE = "expert.safetensors"
FORMAT = "multimeditron-adapted-expert"
FORMAT_VERSION = 1


def _folder(source: str | Path | None) -> Path | None:
    if source is None:
        return None
    path = Path(source).expanduser()
    return path if path.is_dir() and (path / RECORD_FILE).is_file() else None


def is_adapted_checkpoint(source: str | Path | None) -> bool:
    """Whether `source` is a folder written by `save_adapted_expert`."""
    return _folder(source) is not None


def read_adapted_record(source: str | Path) -> dict[str, Any]:
    """The parsed `expert.json` of an adapted-expert folder (its `spec` validated as an `ExpertSpec`)."""
    folder = _folder(source)
    if folder is None:
        raise FileNotFoundError(f"{source}: not an adapted-expert folder (no {RECORD_FILE})")
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder / RECORD_FILE}: not valid JSON ({error})") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT or "spec" not in record:
        raise ValueError(f"{folder / RECORD_FILE}: not an adapted-expert record (expected format {FORMAT!r} and a "
                         f"`spec`)")
    record["spec"] = ExpertSpec.from_dict(record["spec"], where=f"{folder / RECORD_FILE} spec")
    return record


def save_adapted_expert(expert: nn.Module, spec: ExpertSpec | dict[str, Any], folder: str | Path,
                        provenance: dict[str, Any] | None = None) -> Path:
    """Write `expert`'s weights and the spec that rebuilds its architecture into `folder`.

    `spec` should be the resolved spec (`registry.resolved_spec`), so that the record needs no file beside the
    original checkpoint. Its `checkpoint` is recorded as `started_from` (provenance, not part of the stored spec);
    `output` is left to the user of the folder (the weights do not depend on it). `provenance` (JSON) records how the weights
    were made (objective, data, epochs, metrics).
    """
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    spec = ExpertSpec.from_dict(spec)
    state = {k: v.detach().to("cpu").contiguous() for k, v in expert.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    # The record rebuilds the architecture; where the weights started from is provenance, not a spec field.
    stored = dataclasses.replace(spec, output=None, checkpoint=None).to_dict()
    record = {"format": FORMAT, "version": FORMAT_VERSION, "spec": stored, "started_from": spec.checkpoint,
              "provenance": provenance or {}}
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


# Fields that decide the architecture: a spec pointing at an adapted folder must agree with the record on them.
_ARCHITECTURE_FIELDS = ("tiny", "image_size")


def adapted_spec(spec: ExpertSpec | dict[str, Any]) -> ExpertSpec:
    """`spec` completed from its checkpoint's record when that checkpoint is an adapted-expert folder (else as is).

    The id must be the record's; `tiny`, `image_size` and `options` left unset are taken from the record, and a
    value that contradicts it is an error naming the field; `normalization` defaults to the record's; `output` and
    `checkpoint` stay the user's.
    """
    spec = ExpertSpec.from_dict(spec)
    if not is_adapted_checkpoint(spec.checkpoint):
        return spec
    recorded: ExpertSpec = read_adapted_record(spec.checkpoint)["spec"]
    where = f"expert {spec.id!r} with checkpoint {spec.checkpoint}"
    if spec.id != recorded.id:
        raise ValueError(f"{where}: the folder holds an adapted {recorded.id!r} expert; set id: {recorded.id}")
    changes: dict[str, Any] = {}
    for name in _ARCHITECTURE_FIELDS:
        given, stored = getattr(spec, name), getattr(recorded, name)
        default = getattr(ExpertSpec(id=spec.id), name)
        if given != stored and given != default:
            raise ValueError(f"{where}: {name}={given!r} contradicts the adapted weights ({name}={stored!r}); "
                             f"remove it")
        changes[name] = stored
    stored_options = json.loads(json.dumps(recorded.options))
    given_options = json.loads(json.dumps(spec.options))
    clash = sorted(k for k in given_options if k in stored_options and given_options[k] != stored_options[k])
    if clash:
        raise ValueError(f"{where}: options {clash} contradict the adapted weights "
                         f"({ {k: stored_options[k] for k in clash} }); remove them")
    changes["options"] = {**stored_options, **given_options}
    changes["normalization"] = spec.normalization if spec.normalization is not None else recorded.normalization
    return dataclasses.replace(spec, **changes)


def load_adapted_weights(expert: nn.Module, source: str | Path) -> LoadReport:
    """Load an adapted folder's `expert.safetensors` into `expert`, strictly (every key, every shape)."""
    from safetensors.torch import load_file

    from multimeditron.experts.checkpoints import load_state_dict_checked

    folder = _folder(source)
    if folder is None or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{source}: adapted-expert folder without {WEIGHTS_FILE}")
    state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    return load_state_dict_checked(expert, state, str(folder / WEIGHTS_FILE))
