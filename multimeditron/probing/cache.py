"""On-disk cache of embeddings, keyed by everything that determines them, so that every protocol reuses one pass.

The key hashes the expert's weights themselves (not only the checkpoint path: a file overwritten in place or a
random initialisation changes it), its class, input size, normalisation and pooling, the layers taken, the dtype,
the intensity window, the split and the data's fingerprint. A file is used only when its stored key equals the
wanted one and its row count matches; anything else is recomputed and overwritten.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from multimeditron.probing.embed import Embeddings

CACHE_VERSION = 1  # bump when the embedding code changes what it computes


def cache_key(fields: dict[str, Any]) -> str:
    """A stable digest of the JSON-serialisable `fields`."""
    text = json.dumps({"version": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_cached(cache_dir: str | Path, key: str, n_rows: int) -> Embeddings | None:
    """The embeddings stored under `key`, or None when absent, unreadable or not what the key promises."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(cache_dir) / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None
    if metadata.get("key") != key or "pooled" not in arrays or len(arrays["pooled"]) != n_rows:
        return None
    return Embeddings(arrays["pooled"], arrays.get("cls_layers"), arrays.get("patch_mean"))


def save_cached(cache_dir: str | Path, key: str, embeddings: Embeddings, fields: dict[str, Any]) -> Path:
    """Write atomically (a reader never sees half a file); the key's fields travel in the metadata."""
    from safetensors.numpy import save_file

    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.safetensors"
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in embeddings.arrays().items()}
    save_file(arrays, str(tmp), metadata={"key": key, "fields": json.dumps(fields, sort_keys=True, default=str)})
    os.replace(tmp, path)
    return path
