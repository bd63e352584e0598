"""Typed sections from raw YAML mappings: unknown keys refused with their dotted path, values checked against the
dataclass's type hints (Literal choices, lists, nested sections), required keys named when missing."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from multimeditron.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem, with the dotted path of the key at fault."""


def join_key(where: str, key: Any) -> str:
    """`model` + `fusion` -> `model.fusion`; the top level has no prefix."""
    return f"{where}.{key}" if where else str(key)


def parse_section(cls: type, data: Any, where: str = "") -> Any:
    """A typed config dataclass from its raw mapping; `where` is the section's dotted path, for messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{join_key(where, unknown[0])}: unknown key; valid keys here: {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = coerce(hints[name], data[name], join_key(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{join_key(where, name)}: required key is missing")
    try:
        built = cls(**values)
    except (TypeError, ValueError) as error:
        text = str(error)  # a message that already names its key in full is not prefixed a second time
        raise ConfigError(text if where and text.startswith(f"{where}.") else f"{where or 'config'}: {text}") \
            from error
    # Which keys the user wrote (a default value cannot tell "not given" from "given the default"); see written_keys.
    object.__setattr__(built, "_written_keys", frozenset(data))
    return built


def written_keys(section: Any) -> frozenset[str]:
    """The keys of a parsed config section that the YAML (or a --set) wrote, whatever their values."""
    return getattr(section, "_written_keys", frozenset())


def coerce(hint: Any, value: Any, where: str) -> Any:
    """`value` checked against the type `hint` (ints widen to floats; nested dataclasses are parsed)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, where)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
