"""`multimeditron train --config FILE [--set key=value ...] [--dry-run]`."""
from __future__ import annotations

import argparse
import sys

HELP = "train a model from a YAML config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the run's YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set training_args.learning_rate=1e-5 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and print the plan, then stop")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from multimeditron.config import ConfigError, load_config

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error in {args.config}: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        from multimeditron.training.plan import format_plan

        try:
            print(format_plan(config))
        except (ValueError, KeyError) as error:
            print(f"error in {args.config}: {error}", file=sys.stderr)
            return 2
        return 0
    from multimeditron.data import DataError
    from multimeditron.training.run import run_training

    try:
        result = run_training(config)
    except (ConfigError, DataError) as error:
        print(f"error in {args.config}: {error}", file=sys.stderr)
        return 2
    print(f"final model: {result.final_dir}")
    return 0
