"""Expert SPEC strings of `multimeditron probe` -> built experts with their weights.

Parse rule, first match wins:
- a mapping in YAML flow style, `{id: dinov2_vits14, tiny: true, image_size: 56}`: every `ExpertSpec` field;
- a saved MultiMeditron model folder (its `config.json` lists experts), `DIR` or `DIR#i` for its i-th expert;
- an adapted-expert folder written by `multimeditron finetune` / `adapt` (its `expert.json` names the expert);
- `timm:NAME[:CHECKPOINT]`: timm model names never hold a colon, so the first colon after `timm:` starts the
  checkpoint;
- `ID[:CHECKPOINT]`: a registry id, and everything after the first colon is the checkpoint (which may itself hold
  colons, e.g. `biomedclip:hf-hub:microsoft/...`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from multimeditron.errors import UserError
from multimeditron.experts.adapted import is_adapted_checkpoint, read_adapted_record
from multimeditron.experts.base import ExpertSpec, VisionExpert
from multimeditron.experts.registry import build_expert


class ExpertSpecError(UserError, ValueError):
    """A SPEC string that names no buildable expert; the message quotes it."""


@dataclass
class ParsedSpec:
    spec: ExpertSpec
    name: str  # how tables name it
    model_dir: Path | None = None  # a saved MultiMeditron model the weights come from
    index: int | None = None  # the expert's position in that model


def _saved_model(text: str) -> tuple[Path, int | None] | None:
    folder, _, index = text.rpartition("#") if "#" in text else (text, "", "")
    path = Path(folder)
    if not (path / "config.json").is_file():
        return None
    if index and not index.isdigit():
        raise ExpertSpecError(f"expert {text!r}: the part after '#' must be an expert index, got {index!r}")
    return path, int(index) if index else None


def parse_spec(text: str, tiny: bool = False) -> ParsedSpec:
    """One SPEC string -> what to build (see the module docstring for the rule); `tiny` sets `tiny: true`."""
    text = text.strip()
    if not text:
        raise ExpertSpecError("expert: an empty SPEC")
    if text.startswith("{"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problem = str(getattr(error, "problem", None) or error).strip()
            raise ExpertSpecError(f"expert {text!r}: not a valid YAML mapping ({problem}); write it as "
                                  f"'{{id: ..., checkpoint: ..., options: {{...}}}}'") from None
        if not isinstance(data, dict):
            raise ExpertSpecError(f"expert {text!r}: a YAML SPEC must be a mapping such as '{{id: dinov2_vits14}}'")
        try:
            spec = ExpertSpec.from_dict({"tiny": tiny, **data} if tiny else data, where=f"expert {text!r}")
        except (TypeError, ValueError) as error:
            raise ExpertSpecError(str(error)) from None
        return ParsedSpec(spec, _default_name(spec))
    if is_adapted_checkpoint(text):  # written by finetune/adapt: its record names the expert
        try:
            spec = ExpertSpec(id=read_adapted_record(text)["spec"].id, checkpoint=text)
        except (TypeError, ValueError) as error:
            raise ExpertSpecError(f"expert {text!r}: {error}") from None
        return ParsedSpec(spec, _default_name(spec))
    saved = _saved_model(text)
    if saved is not None:
        folder, index = saved
        config = json.loads((folder / "config.json").read_text())
        experts = config.get("experts")
        if not experts:
            raise ExpertSpecError(f"expert {text!r}: {folder}/config.json lists no experts (not a MultiMeditron model)")
        if index is None and len(experts) > 1:
            ids = ", ".join(f"#{i}={e['id']}" for i, e in enumerate(experts))
            raise ExpertSpecError(f"expert {text!r}: the model has {len(experts)} experts ({ids}); pick one with DIR#i")
        index = 0 if index is None else index
        if index >= len(experts):
            raise ExpertSpecError(f"expert {text!r}: the model has {len(experts)} experts, no #{index}")
        spec = ExpertSpec.from_dict(experts[index], where=f"{folder}/config.json experts[{index}]")
        return ParsedSpec(spec, f"{folder.name}#{index}:{spec.id}", folder, index)
    if text.startswith("timm:"):
        name, _, checkpoint = text.removeprefix("timm:").partition(":")
        expert_id = f"timm:{name}"
    else:
        expert_id, _, checkpoint = text.partition(":")
    if not expert_id or expert_id == "timm:":
        raise ExpertSpecError(f"expert {text!r}: no expert id")
    spec = ExpertSpec(id=expert_id, checkpoint=checkpoint or None, tiny=tiny)
    return ParsedSpec(spec, _default_name(spec))


def _default_name(spec: ExpertSpec, depth: int = 1) -> str:
    """`id[:last depth parts of the checkpoint path][@image_size]`."""
    tail = "/".join(Path(spec.checkpoint).parts[-depth:]) if spec.checkpoint else ""
    name = spec.id + (f":{tail}" if tail else "")
    return name + (f"@{spec.image_size}" if spec.image_size else "")


def _name_at_depth(parsed: ParsedSpec, depth: int) -> str:
    if parsed.model_dir is not None:
        return f"{'/'.join(parsed.model_dir.parts[-depth:])}#{parsed.index or 0}:{parsed.spec.id}"
    return _default_name(parsed.spec, depth)


def unique_names(specs: list[ParsedSpec], texts: list[str] | None = None) -> list[ParsedSpec]:
    """The specs with names that tell them apart in tables and plot files: two experts whose short names collide
    (`runs/a/best` and `runs/b/best` are both `retfound_green:best`) are named by as much of their paths as it
    takes (`retfound_green:a/best`). The same expert given twice is refused."""
    texts = texts or [p.name for p in specs]
    seen: dict[tuple[Any, ...], int] = {}
    for i, parsed in enumerate(specs):
        key = (json.dumps(parsed.spec.to_dict(), sort_keys=True, default=str), str(parsed.model_dir), parsed.index)
        if key in seen:
            raise ExpertSpecError(f"expert {texts[i]!r} is given twice (experts {seen[key] + 1} and {i + 1}); give "
                                  f"each expert once")
        seen[key] = i
    names = [p.name for p in specs]
    for depth in range(2, 1 + max([len(Path(p.spec.checkpoint or "").parts) for p in specs]
                                  + [len(p.model_dir.parts) if p.model_dir else 0 for p in specs] + [1])):
        clashing = {n for n in names if names.count(n) > 1}
        if not clashing:
            break
        names = [_name_at_depth(p, depth) if names[i] in clashing else names[i] for i, p in enumerate(specs)]
    for i, name in enumerate(list(names)):  # still equal (one checkpoint, other options): numbered
        if names.count(name) > 1:
            names[i] = f"{name}#{names[:i].count(name) + 1}"
    return [dataclasses.replace(p, name=n) for p, n in zip(specs, names)]


def check_spec(parsed: ParsedSpec) -> None:
    """What can be checked of an expert before anything heavy: its local checkpoint exists, and its family builds
    with these options (on the meta device: no memory, no weights read). Errors name the expert."""
    from multimeditron.experts.checkpoints import check_checkpoint_source

    if parsed.spec.checkpoint:
        check_checkpoint_source(parsed.spec.checkpoint)  # CheckpointNotFoundError, a UserError naming the path
    if parsed.model_dir is not None:
        return
    # OSError is left to the real build: what the meta build cannot reach (a hub id on a machine without network, a
    # file the family reads beside its weights) is reported there, naming the expert; the local checkpoint was
    # checked above.
    with torch.device("meta"), _named_errors(parsed.name, ignore=OSError):
        build_expert(dataclasses.replace(parsed.spec, output="cls"), load_checkpoint=False)


@contextmanager
def _named_errors(name: str, ignore: type[BaseException] | tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Errors of building or loading an expert (an unknown id or option, a checkpoint that is missing, unreadable or
    does not fit) as one `ExpertSpecError` naming the expert; `ignore`d ones pass silently."""
    import pickle

    try:
        yield
    except ExpertSpecError:
        raise
    except ignore:
        pass
    except KeyError as error:  # an unknown registry id: the message lists the valid ones
        raise ExpertSpecError(f"expert {name!r}: {error.args[0]}") from error
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, TypeError, RuntimeError, NotImplementedError, pickle.UnpicklingError) as error:
        text = str(error).strip() or type(error).__name__
        raise ExpertSpecError(f"expert {name!r}: {text}") from error


def build_probe_expert(parsed: ParsedSpec, seed: int | None = None) -> VisionExpert:
    """The expert with its weights, in eval mode, emitting its global (`cls`) output.

    `seed` seeds torch just before building (every command passes its `--seed`): an expert without a checkpoint
    (or with layers its checkpoint lacks) starts from the seed's random weights, the same on every run."""
    spec = dataclasses.replace(parsed.spec, output="cls")
    if seed is not None:
        torch.manual_seed(seed)
    with _named_errors(parsed.name):
        if parsed.model_dir is None:
            expert = build_expert(spec)
        else:
            expert = build_expert(spec, load_checkpoint=False)
            _load_from_saved_model(expert, parsed.model_dir, parsed.index or 0)
    return expert.eval().requires_grad_(False)


def _load_from_saved_model(expert: VisionExpert, folder: Path, index: int) -> None:
    from safetensors import safe_open

    prefix = f"vision.experts.{index}."
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        files = sorted({f for k, f in weight_map.items() if k.startswith(prefix)})
    else:
        files = ["model.safetensors"]
    state: dict[str, Any] = {}
    for name in files:
        if not (folder / name).is_file():
            raise ExpertSpecError(f"{folder}: weight file {name} is missing")
        with safe_open(str(folder / name), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefix):
                    state[key.removeprefix(prefix)] = handle.get_tensor(key)
    if not state:
        raise ExpertSpecError(f"{folder}: no weights under {prefix!r}; is it a MultiMeditron model?")
    missing, unexpected = expert.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExpertSpecError(f"{folder} expert #{index}: weights do not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def weights_digest(expert: torch.nn.Module) -> str:
    """A digest of every parameter and persistent buffer: the cache key's guarantee that the weights are these."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(expert.state_dict().items()):
        digest.update(name.encode())
        data = tensor.detach().to("cpu").contiguous()
        digest.update(str(data.dtype).encode() + str(tuple(data.shape)).encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()
