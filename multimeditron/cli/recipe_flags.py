"""Command-line flags as shorthands of config keys, for every command with a typed recipe (`finetune`, `adapt`,
`segment`, `probe`): `--config FILE`, `--set KEY=VALUE` and `--dry-run`, plus one flag per common key.

One rule keeps flags and schema from drifting: a flag names its key, and its default, choices and type are read
from the schema (a flag never carries a default of its own; `--help` shows the schema's)."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SWITCH = object()  # `type` of a flag that takes no value


@dataclass(frozen=True)
class Shorthand:
    flag: str  # "--epochs"
    key: str  # "training_args.num_train_epochs"
    help: str = ""
    type: Any = None  # a converter for the text; None: from the schema's type; SWITCH: no value
    value: Any = True  # what a SWITCH sets
    append: bool = False  # repeatable; the values form the list at `key`
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def comma_ints(text: str) -> list[int]:
    return [int(part) for part in comma_list(text)]


def schema_entry(schema: type, key: str) -> tuple[Any, Any]:
    """(type hint, default) of a dotted key of a recipe dataclass; `training_args.X` reads the recipe's
    TrainingArguments defaults (`...` when X is left to HF's own default). A nested section's defaults are read from
    the section the recipe builds by default (a recipe may give its `schedule` other defaults than the class)."""
    hint: Any = schema
    default: Any = dataclasses.MISSING
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part == "training_args" and i == len(parts) - 2:
            defaults = getattr(schema, "engine_training_defaults", lambda: {})()
            return Any, defaults.get(parts[-1], ...)
        f = {f.name: f for f in dataclasses.fields(hint)}[part]
        parent = default
        hint = typing.get_type_hints(hint)[part]
        if dataclasses.is_dataclass(parent) and not isinstance(parent, type):
            default = getattr(parent, part)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if i < len(parts) - 1:
            hint = next(a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a))
    return hint, default


def _choices(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    options = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    for option in options:
        if typing.get_origin(option) is Literal:
            return typing.get_args(option)
    return None


def _converter(hint: Any) -> Callable[[str], Any]:
    if typing.get_origin(hint) is Literal:
        return str
    options = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    for simple in (bool, int, float):
        if simple in options and str not in options:
            return (lambda text: text.lower() in ("1", "true", "yes", "on")) if simple is bool else simple
    return str


def _shown(default: Any) -> str:
    if default is ... or default is dataclasses.MISSING:
        return ""
    if dataclasses.is_dataclass(default):
        return ""
    if isinstance(default, list):
        return f" (default: {','.join(map(str, default)) or 'none'})"
    return f" (default: {default})" if default is not None else " (default: none)"


def add_recipe_arguments(parser: argparse.ArgumentParser, schema: type, shorthands: Sequence[Shorthand],
                         groups: dict[str, str] | None = None, several_configs: bool = False) -> None:
    """`--config`, `--set`, `--dry-run`, then each shorthand with the schema's default, choices and type in its
    help; no flag has an argparse default, so only the flags a user typed override the config. `several_configs`:
    `--config` repeatable (a list in `args.config`, None when absent), for commands that run several recipes."""
    if several_configs:
        parser.add_argument("-c", "--config", action="append", default=None, metavar="FILE",
                            help="a YAML recipe; repeat to run several in turn, each to its own output_dir (all "
                                 "checked first); the flags below and --set override the keys of each")
    else:
        parser.add_argument("-c", "--config", default=None, metavar="FILE",
                            help="a YAML recipe; the flags below and --set override its keys")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any key, e.g. --set training_args.num_train_epochs=5 (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the recipe, print the plan (data, expert, parameters, batch, outputs), stop")
    parser.add_argument("--overwrite", action="store_true",
                        help="an --out holding an earlier run: remove that run's files first (default: refuse to "
                             "mix two runs in one folder)")
    sections: dict[str, argparse._ArgumentGroup] = {}
    for item in shorthands:
        section = item.key.split(".")[0]
        title = (groups or {}).get(section, section)
        group = sections.setdefault(title, parser.add_argument_group(title))
        hint, default = schema_entry(schema, item.key)
        text = f"{item.help} [{item.key}]" if item.help else f"[{item.key}]"
        kwargs: dict[str, Any] = {"dest": item.dest, "default": argparse.SUPPRESS}
        if item.type is SWITCH:
            group.add_argument(item.flag, action="store_const", const=item.value, help=text + _shown(default),
                               **kwargs)
            continue
        choices = _choices(hint)
        converter = item.type or _converter(hint)
        group.add_argument(item.flag, type=converter, choices=choices if item.type is None else None,
                           action="append" if item.append else "store", metavar=item.metavar,
                           help=text + _shown(default), **kwargs)


def recipe_values(args: argparse.Namespace, shorthands: Sequence[Shorthand]) -> list[tuple[str, Any, str]]:
    """(key, value, flag) for every flag the user typed."""
    return [(item.key, getattr(args, item.dest), item.flag) for item in shorthands if hasattr(args, item.dest)]


def key_hint(message: str, shorthands: Sequence[Shorthand]) -> str:
    """An error about a key, with the flag that sets it: `probe.protocols[0] (--protocol): ...`."""
    for item in sorted(shorthands, key=lambda s: -len(s.key)):
        for suffix in (":", "["):
            if message.startswith(item.key + suffix):
                head, _, rest = message.partition(":")
                return f"{head} ({item.flag}):{rest}"
    return message


def training_shorthands() -> list[Shorthand]:
    """The flags of `training_args` that every trained expert command takes (the rest through --set)."""
    return [
        Shorthand("--out", "training_args.output_dir", "run folder: checkpoints, results and what the run trains "
                  "(a fresh folder, or --overwrite / --resume)", type=str, metavar="DIR"),
        Shorthand("--epochs", "training_args.num_train_epochs", "training epochs (fractions allowed)", type=float),
        Shorthand("--batch-size", "training_args.per_device_train_batch_size", "per process", type=int),
        Shorthand("--lr", "training_args.learning_rate", "peak learning rate, after warm-up", type=float),
        Shorthand("--weight-decay", "training_args.weight_decay", "AdamW weight decay (not on biases and norms)",
                  type=float),
        Shorthand("--grad-clip", "training_args.max_grad_norm", "clip the gradient norm (0: off)", type=float),
        Shorthand("--seed", "training_args.seed", "seeds the head or decoder, the data order, augmentation, a carved "
                  "val split and any random-weight expert", type=int),
        Shorthand("--workers", "training_args.dataloader_num_workers", "image-decoding worker processes", type=int),
        Shorthand("--device", "training_args.use_cpu", "cpu, or cuda (the default when there is a GPU)",
                  type=lambda text: text.strip().lower() == "cpu", metavar="DEVICE"),
        Shorthand("--bf16", "training_args.bf16", "bf16 mixed precision (default: on a GPU that has it)",
                  type=SWITCH, value=True),
        Shorthand("--no-bf16", "training_args.bf16", "full fp32", type=SWITCH, value=False),
        Shorthand("--resume", "training_args.resume_from_checkpoint", "continue a stopped run from OUT's last "
                  "checkpoint-* (with the recipe and data it started with; default: off)", type=SWITCH, value=True),
        threads_shorthand(),
    ]


THREADS_HELP = ("CPU threads of torch and of the BLAS/OpenMP pools (none: each library's default, one per core; on "
                "cores shared with other jobs, fewer threads avoid spin-wait stalls)")


def threads_shorthand(key: str = "threads") -> Shorthand:
    """`--threads`, the same flag on every expert command that computes."""
    return Shorthand("--threads", key, THREADS_HELP, type=int, metavar="N")


def bad_image_shorthand() -> Shorthand:
    """`--skip-bad-images`: the data sections' one policy for unreadable files (`data.bad_images`)."""
    return Shorthand("--skip-bad-images", "data.on_bad_image", "leave out files that cannot be read as images (listed "
                     "in the results) instead of stopping", type=SWITCH, value="skip")


def overlap_shorthand() -> Shorthand:
    return Shorthand("--allow-overlap", "data.allow_overlap", "accept a patient or study with images in two splits",
                     type=SWITCH)


def schedule_shorthands() -> list[Shorthand]:
    return [Shorthand("--warmup-epochs", "schedule.warmup_epochs", "linear warm-up, then cosine"),
            Shorthand("--min-lr", "schedule.min_lr", "where the cosine ends")]


SPEC_HELP = ("a registry id with an optional checkpoint: ID[:CHECKPOINT] (everything after the first colon), "
             "timm:NAME[:CHECKPOINT], a saved MultiMeditron model folder DIR or DIR#i (its i-th expert), an "
             "adapted-expert folder written by finetune/adapt (runs/adapt/final), or a YAML mapping "
             "'{id: ..., checkpoint: ..., image_size: ..., normalization: ..., options: {...}}'")


def expert_shorthands() -> list[Shorthand]:
    return [Shorthand("--expert", "expert.spec", SPEC_HELP, type=str, metavar="SPEC"),
            Shorthand("--tiny", "expert.tiny", "the expert's tiny architecture (smoke runs)", type=SWITCH)]


def load_command_recipe(schema: type, args: argparse.Namespace, shorthands: Sequence[Shorthand],
                        expert_required: bool = True) -> Any:
    """The command's recipe from `--config`, its flags and `--set`, validated before anything heavy; errors name
    the key (and the flag that sets it) and the config file."""
    from multimeditron.adaptation.recipes import load_recipe
    from multimeditron.config import ConfigError, parse_section, read_config_mapping

    try:
        if hasattr(schema, "training_arguments"):  # trained on the engine: training_args checked too
            recipe = load_recipe(schema, args.config, recipe_values(args, shorthands), args.overrides)
        else:
            recipe = parse_section(schema, read_config_mapping(args.config, args.overrides,
                                                               recipe_values(args, shorthands)))
    except ConfigError as error:
        message = key_hint(str(error), shorthands)
        raise ConfigError(f"{args.config}: {message}" if args.config else message) from None
    if expert_required and getattr(getattr(recipe, "expert", None), "spec", "") is None:
        raise ConfigError(key_hint("expert.spec: required to train (a SPEC)", shorthands))
    return recipe
