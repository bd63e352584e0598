"""Reading a run config: YAML (with `1e-4` read as a float), command-line values and `--set key=value` overrides,
`${VAR}` / `$VAR` from the environment (an unset variable is an error; `$$` is a `$`), then the typed schema and its
checks. A config of the published toolkit is recognised here and refused with the command that converts it."""
from __future__ import annotations

import itertools
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from multimeditron.config.schema import RunConfig
from multimeditron.config.typed import ConfigError, join_key, parse_section
from multimeditron.config.validation import check_config

# Keys only the published schema has at the top level: any of them marks a file as a published config.
PUBLISHED_MARKERS = ("base_llm", "modalities", "training_mode", "datasets", "tokenizer_type", "token_size", "loaders")


class _Loader(yaml.SafeLoader):
    """yaml.safe_load, but `1e-4` is a float (YAML 1.1 reads it as a string, a classic learning-rate trap)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: typing.IO | str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def is_published_config(data: Any) -> bool:
    """Whether a raw mapping is a config of the published MultiMeditron toolkit (base_llm, modalities, ...)."""
    return isinstance(data, dict) and any(key in data for key in PUBLISHED_MARKERS) and "model" not in data


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def substitute_env(value: Any, where: str = "", environ: typing.Mapping[str, str] | None = None) -> Any:
    """`value` (a mapping, list or string) with environment variables substituted; errors name the key."""
    environ = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: substitute_env(v, join_key(where, k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, f"{where}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(2)
        if name not in environ:
            raise ConfigError(f"{where}: environment variable ${name} is not set")
        return environ[name]

    return _VARIABLE.sub(replace, value)


_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _key_path(key: str) -> list[str | int]:
    """`data.train[0].max_samples` -> ["data", "train", 0, "max_samples"]."""
    steps: list[str | int] = []
    for part in key.split("."):
        match = _KEY_PART.match(part)
        if match is None:
            raise ConfigError(f"--set {key}: {part!r} is not a key (write keys as a.b[0].c)")
        steps.append(match.group(1))
        steps += [int(i) for i in re.findall(r"\d+", match.group(2))]
    return steps


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=value` or `--set data.train[0].max_samples=8` (value parsed as YAML) to the raw
    config mapping. A missing section is created; a list item must already exist."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    set_value(data, key.strip(), _yaml_load(raw), f"--set {key.strip()}")


def set_value(data: dict[str, Any], key: str, value: Any, origin: str | None = None) -> None:
    """Set the dotted `key` (`a.b[0].c`) of the raw config mapping to `value`; `origin` names where the
    assignment came from in errors (`--set KEY`, `--epochs`)."""
    origin = origin or key
    steps = _key_path(key)
    node: Any = data
    where = ""
    for step, following in itertools.pairwise(steps):
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ConfigError(f"{origin}: {where} is not a list")
            if not 0 <= step < len(node):
                raise ConfigError(f"{origin}: {where} has {len(node)} item(s), no [{step}]")
            where = f"{where}[{step}]"
            node = node[step]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {where or 'the config'} is not a section")
        where = join_key(where, step)
        if node.get(step) is None:
            if isinstance(following, int):
                raise ConfigError(f"{origin}: {where} is not a list in the config")
            node[step] = {}
        node = node[step]
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or not 0 <= last < len(node):
            raise ConfigError(f"{origin}: {where} has no item [{last}]")
    elif not isinstance(node, dict):
        raise ConfigError(f"{origin}: {where} is not a section")
    node[last] = value


def read_config_mapping(path: str | os.PathLike | None, overrides: list[str] | None = None,
                        values: list[tuple[str, Any, str]] | None = None,
                        environ: typing.Mapping[str, str] | None = None) -> dict[str, Any]:
    """The raw mapping of a YAML config (`{}` without a file), command-line `values` (key, value, the flag that
    gave it) and then `--set` overrides applied, environment variables substituted: what every command's typed
    schema is built from."""
    return substitute_env(_unsubstituted_mapping(path, overrides, values), environ=environ)


def _unsubstituted_mapping(path: str | os.PathLike | None, overrides: list[str] | None,
                           values: list[tuple[str, Any, str]] | None) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            with path.open() as handle:
                data = _yaml_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML (quote values that start with $ or {{ inside {{...}}): "
                              f"{error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for key, value, origin in values or []:
        set_value(data, key, value, origin)
    for assignment in overrides or []:
        set_override(data, assignment)
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None,
                environ: typing.Mapping[str, str] | None = None) -> RunConfig:
    """The run config of a `train` YAML file, parsed and checked."""
    path = Path(path)
    data = _unsubstituted_mapping(path, overrides, None)
    if is_published_config(data):  # before substitution: its variables are set where the converted config runs
        raise ConfigError(f"a config of the published MultiMeditron toolkit (base_llm, modalities, ...); convert "
                          f"it first: multimeditron convert config {path} --out converted.yaml")
    data = substitute_env(data, environ=environ)
    # A relative DeepSpeed path is relative to the YAML file, so cookbook configs work from any directory.
    if isinstance(data.get("deepspeed"), str) and not os.path.isabs(data["deepspeed"]):
        data["deepspeed"] = str((path.parent / data["deepspeed"]).resolve())
    return parse_config(data)


def parse_config(data: dict[str, Any]) -> RunConfig:
    """The run config of a raw mapping, parsed and checked."""
    config = parse_section(RunConfig, data, "")
    check_config(config)
    return config
