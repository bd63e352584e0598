"""`multimeditron convert config PUBLISHED.yaml --out ours.yaml`: a published MultiMeditron config in this toolkit's
schema (the mapping itself is multimeditron.config_migration); the notes on dropped keys are printed and written."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_config_parser(layouts: argparse._SubParsersAction) -> None:
    parser = layouts.add_parser(
        "config", help="a published MultiMeditron YAML (base_llm, modalities, ...) -> this toolkit's YAML",
        description="Maps every key of a published config, keeps $VAR / ${VAR} as written, and refuses what cannot "
                    "be mapped with the key and the reason.")
    parser.add_argument("published", help="the published-schema YAML")
    parser.add_argument("--out", required=True, help="where to write the converted YAML")
    parser.add_argument("--gate", choices=("pretrained", "learned"), default="pretrained",
                        help="pretrained (default): the published frozen classifier gate (gating_path) as the "
                             "`pretrained` router; learned: this toolkit's learned gate instead (another mechanism)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    """Errors are ConfigErrors: the dispatcher prints `error: <key>: <reason>` and exits 2."""
    from multimeditron.config import ConfigError
    from multimeditron.config_migration import convert_published, load_published

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"--out {out} exists (add --overwrite to replace it)")
    try:
        conversion = convert_published(load_published(args.published), gate=args.gate, base_dir=Path.cwd(),
                                       yaml_dir=Path(args.published).parent)
    except ConfigError as error:
        raise ConfigError(f"{args.published}: {error}") from error
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(conversion.to_yaml(args.published))
    for note in conversion.notes:
        print(f"note: {note}")
    for change in conversion.changes:
        print(f"changed: {change}")
    print(f"wrote {out}; check it with: multimeditron train --config {out} --dry-run")
    return 0
