"""Reading expert checkpoints in their original published layouts (local file, folder or hub id) and loading them
strictly: every key the expert expects must arrive, every key that arrives must be used or dropped on purpose.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimeditron.errors import UserError
from multimeditron.experts.base import LoadReport
from multimeditron.hub_ids import looks_like_hub_id, parse_hub_id

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

# Names tried, in order, inside a folder or a hub repository when the caller gives none of its own.
DEFAULT_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
SHARD_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# Training checkpoints of MAE/DINO/iBOT-style repositories pickle their argparse Namespace next to the weights.
# It only holds plain values, so it is allowed; any other class is refused by weights_only loading.
SAFE_PICKLE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

# Containers that wrap a state dict in the checkpoints of the families we load.
WRAPPER_ENTRIES = ("model", "state_dict", "model_ema", "module")


class CheckpointDownloadError(OSError):
    """A hub checkpoint could not be fetched (offline, unknown repository, missing file)."""



class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A checkpoint that names no file, folder or hub id: a path the user can fix (one `error:` line in the CLI)."""


def hub_download(repo_id: str, filename: str) -> Path | None:
    """Download one file of a hub repository; None when the repository has no such file.

    Fails with `CheckpointDownloadError` naming the repository when the hub cannot be reached (offline machines)
    or the repository does not exist.
    """
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import hf_hub_download

    remote_missing = getattr(hub_errors, "RemoteEntryNotFoundError", hub_errors.EntryNotFoundError)
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except hub_errors.LocalEntryNotFoundError as exc:
        # Subclass of EntryNotFoundError, so it must be caught first: it means "no network and not cached".
        raise CheckpointDownloadError(
            f"cannot download {filename!r} from hub id {repo_id!r}: the hub is unreachable (offline?) and the file "
            f"is not in the local cache. Download it on a machine with network access or pass a local path."
        ) from exc
    except remote_missing:
        return None
    except hub_errors.RepositoryNotFoundError as exc:
        raise CheckpointDownloadError(f"hub id {repo_id!r} does not exist or is private/gated: {exc}") from exc
    except (hub_errors.HfHubHTTPError, OSError) as exc:
        raise CheckpointDownloadError(f"cannot download {filename!r} from hub id {repo_id!r}: {exc}") from exc


def _find_in_folder(folder: Path, candidates: Sequence[str]) -> list[Path]:
    for index_name in SHARD_INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    for name in candidates:
        if (folder / name).is_file():
            return [folder / name]
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if len(found) == 1:
        return found
    if not found:
        raise FileNotFoundError(f"no weight file ({', '.join(WEIGHT_SUFFIXES)}) in checkpoint folder {folder}")
    raise ValueError(
        f"checkpoint folder {folder} holds several weight files {[p.name for p in found]}; name one of them"
    )


def check_checkpoint_source(source: str) -> None:
    """The one rule for a checkpoint a user names: an existing file or folder, or a hub id (not downloaded here)."""
    if not Path(source).expanduser().exists() and not looks_like_hub_id(source, with_file=True):
        raise CheckpointNotFoundError(f"checkpoint {source!r} is neither an existing file or folder nor a hub id")


def resolve_checkpoint(source: str, candidates: Sequence[str] = DEFAULT_WEIGHT_FILES) -> list[Path]:
    """A local file, a local folder or a hub id -> the local weight file(s) (several for sharded checkpoints)."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return _find_in_folder(path, candidates)
    check_checkpoint_source(source)
    repo_id, filename = parse_hub_id(source)
    names = [filename] if filename else list(SHARD_INDEX_FILES) + list(candidates)
    for name in names:
        local = hub_download(repo_id, name)
        if local is None:
            continue
        if name in SHARD_INDEX_FILES:
            shards = sorted(set(json.loads(local.read_text())["weight_map"].values()))
            return [_required_download(repo_id, s) for s in shards]
        return [local]
    raise CheckpointDownloadError(f"hub id {repo_id!r} has none of the weight files {names}; name one as "
                                  f"{repo_id}/<file>")


def _required_download(repo_id: str, filename: str) -> Path:
    local = hub_download(repo_id, filename)
    if local is None:
        raise CheckpointDownloadError(f"hub id {repo_id!r} has no file {filename!r}")
    return local


def resolve_companion_file(source: str, filename: str, download: bool = True) -> Path | None:
    """A file that travels with a checkpoint (a config JSON): inside the folder, beside the file, or in the
    hub repository. None when there is none (or, with `download=False`, when the source is a hub id)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path / filename if (path / filename).is_file() else None
    if path.is_file():
        return path.parent / filename if (path.parent / filename).is_file() else None
    if download and looks_like_hub_id(source, with_file=True):
        return hub_download(parse_hub_id(source)[0], filename)
    return None


def load_weight_file(path: str | Path) -> dict[str, Any]:
    """Read one weight file. `.safetensors` via safetensors; anything else via `torch.load(weights_only=True)`,
    which refuses pickled objects other than tensors, containers, plain values and `SAFE_PICKLE_GLOBALS`."""
    path = Path(path)
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    try:
        with torch.serialization.safe_globals(list(SAFE_PICKLE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"refusing to load {path}: it pickles objects other than tensors, and loading it would run arbitrary "
            f"code. Re-save its weights as a plain state dict (torch.save(model.state_dict())) or as safetensors. "
            f"Detail: {str(exc).splitlines()[0]}"
        ) from exc


def read_checkpoint(source: str, candidates: Sequence[str] = DEFAULT_WEIGHT_FILES) -> dict[str, Any]:
    """Resolve `source` and read its weights; shards are merged into one mapping."""
    files = resolve_checkpoint(source, candidates)
    if len(files) == 1:
        return load_weight_file(files[0])
    merged: dict[str, Any] = {}
    for f in files:
        merged.update(load_weight_file(f))
    return merged


def unwrap_state_dict(
    checkpoint: Mapping[str, Any], entries: Sequence[str] = (), source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Find the state dict inside a training checkpoint.

    `entries` are tried first, in order (e.g. `teacher` then `student`), then the usual wrappers (`model`,
    `state_dict`, ...). Returns the flat {name: tensor} dict and the entry it came from (None = top level).
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: expected a mapping of tensors, got {type(checkpoint).__name__}")
    chosen: str | None = None
    current: Mapping[str, Any] = checkpoint
    for _ in range(4):  # wrappers nest at most a few levels (e.g. {"model": {"state_dict": ...}})
        if any(isinstance(v, torch.Tensor) for v in current.values()):
            break
        entry = next((e for e in list(entries) + list(WRAPPER_ENTRIES)
                      if isinstance(current.get(e), Mapping)), None)
        if entry is None:
            raise ValueError(f"{source}: no state dict found; top-level entries are {sorted(current)[:20]}, "
                             f"expected tensors or one of {list(entries) + list(WRAPPER_ENTRIES)}")
        chosen = entry if chosen is None else f"{chosen}.{entry}"
        current = current[entry]
    not_tensors = sorted(k for k, v in current.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{source}: state dict{f' in {chosen!r}' if chosen else ''} has non-tensor entries "
                         f"{not_tensors[:10]}")
    return dict(current), chosen


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove `prefix` from the keys that carry it; other keys are kept unchanged."""
    return {k.removeprefix(prefix): v for k, v in state_dict.items()}


def drop_keys(
    state_dict: Mapping[str, torch.Tensor],
    prefixes: Iterable[str] = (),
    names: Iterable[str] = (),
    suffixes: Iterable[str] = (),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove keys on purpose (decoders, heads, pretraining-only tokens); returns (kept, dropped names)."""
    prefixes, names, suffixes = tuple(prefixes), set(names), tuple(suffixes)
    kept: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in state_dict.items():
        if k in names or (prefixes and k.startswith(prefixes)) or (suffixes and k.endswith(suffixes)):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def flatten_block_chunks(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2-style training (`block_chunks > 0`) saves `blocks.<chunk>.<index>.*`; the index is already global."""
    if not any(_CHUNKED_BLOCK.match(k) for k in state_dict):
        return dict(state_dict)
    return {_CHUNKED_BLOCK.sub(r"blocks.\2.", k): v for k, v in state_dict.items()}


def checkpoint_positions(raw: Mapping[str, Any], key: str = "pos_embed", depth: int = 3) -> int | None:
    """How many positions the first `*{key}` tensor of a (possibly wrapped) checkpoint holds, read before any
    conversion resamples it; None when it has none."""
    for name, value in raw.items():
        if isinstance(value, torch.Tensor) and str(name).endswith(key) and value.ndim >= 2:
            return int(value.shape[-2])
    for value in raw.values():
        if depth > 1 and isinstance(value, Mapping):
            found = checkpoint_positions(value, key, depth - 1)
            if found is not None:
                return found
    return None


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: Sequence[int], num_prefix_tokens: int,
) -> torch.Tensor:
    """Resample a (1, prefix + H*W, D) absolute position embedding to `new_grid`, keeping prefix tokens as they are.
    (N, D) embeddings (OpenCLIP, HF CLIP) are accepted and returned in the same shape."""
    from timm.layers import resample_abs_pos_embed

    unbatched = pos_embed.ndim == 2
    pos = pos_embed.unsqueeze(0) if unbatched else pos_embed
    old = pos.shape[1] - num_prefix_tokens
    side = round(old ** 0.5)
    if side * side != old:
        raise ValueError(f"position embedding with {old} patch positions is not a square grid")
    out = resample_abs_pos_embed(pos, new_size=list(new_grid), old_size=[side, side],
                                 num_prefix_tokens=num_prefix_tokens)
    return out[0] if unbatched else out


def resample_pos_embed_key(
    state_dict: dict[str, torch.Tensor], key: str, target: torch.Tensor, num_prefix_tokens: int,
) -> None:
    """Resample `state_dict[key]` in place when its number of positions differs from `target`'s."""
    if key not in state_dict or state_dict[key].shape == target.shape:
        return
    n = (target.shape[-2]) - num_prefix_tokens
    side = round(n ** 0.5)
    if side * side != n:
        raise ValueError(f"cannot resample {key}: the expert's grid of {n} positions is not square")
    state_dict[key] = resample_pos_embed(state_dict[key], (side, side), num_prefix_tokens)


def load_state_dict_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    dropped: Sequence[str] = (),
    allowed_missing: tuple[str, ...] = (),
    entry: str | None = None,
) -> LoadReport:
    """Load with strict=False, then fail on any missing (outside `allowed_missing`), unexpected or mis-shaped key.

    strict=False is only used so that the error can name every problem at once instead of torch's first one.
    """
    own = module.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs expert {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ValueError(f"checkpoint {source} does not match the expert: shape mismatch for {mismatched[:10]}"
                         f"{' ...' if len(mismatched) > 10 else ''}")
    result = module.load_state_dict(dict(state_dict), strict=False)
    report = LoadReport(source=source, missing=list(result.missing_keys),
                        unexpected=list(result.unexpected_keys), dropped=list(dropped), entry=entry)
    return report.raise_if_incomplete(allowed_missing)
