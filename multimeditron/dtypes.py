"""Torch dtype names, written once for every place a user names a dtype (`generate --dtype`, `eval --dtype`, the
lmms-eval model's `dtype=`, `probe --dtype`, `load_pretrained`, `probing.embed`), with the one parse that refuses
an unknown name by listing the accepted ones.

The map holds names only, so the command-line parsers can offer them without importing torch."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from multimeditron.errors import UserError

if TYPE_CHECKING:
    import torch

# accepted name (lower case) -> the torch dtype's own name; the long names first, then the aliases users also write
DTYPES: dict[str, str] = {
    "float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
    "fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
}
AUTO = "auto"  # "as saved": only where a saved model's own dtype exists (`load_pretrained`)


class DtypeError(UserError, ValueError):
    """A dtype name that is not in `DTYPES`; the message lists the accepted names."""


def dtype_name(name: str | Any, allow_auto: bool = False) -> str:
    """The canonical name ("float32", "bfloat16", "float16", or "auto" when `allow_auto`) of an accepted name (any
    letter case) or of a torch dtype: what records and cache keys store."""
    if not isinstance(name, str):  # a torch.dtype
        return str(name).removeprefix("torch.")
    key = name.strip().lower()
    if allow_auto and key == AUTO:
        return AUTO
    if key not in DTYPES:
        valid = ", ".join([AUTO, *DTYPES] if allow_auto else DTYPES)
        raise DtypeError(f"unknown dtype {name!r}; valid: {valid}")
    return DTYPES[key]


def parse_dtype(name: str | torch.dtype, allow_auto: bool = False) -> torch.dtype | str:
    """The torch dtype a name stands for (a torch dtype passes through), or "auto" when `allow_auto` and the name
    says so; an unknown name raises `DtypeError` naming the valid ones."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    canonical = dtype_name(name, allow_auto)
    return AUTO if canonical == AUTO else getattr(torch, canonical)


__all__ = ["AUTO", "DTYPES", "DtypeError", "dtype_name", "parse_dtype"]
