"""`multimeditron train --config FILE [--set key=value ...] [--seed N] [--trust-remote-code] [--dry-run]`."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="the run's YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set training_args.learning_rate=1e-5 or "
                             "--set data.train[0].max_samples=8 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and print the plan, then stop")
    # The published toolkit's flags: the same as --set seed=N / --set model.trust_remote_code=true.
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (overrides the config's `seed`)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the LLM run its own modeling code (model.trust_remote_code)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """A ConfigError/DataError raised here reaches the dispatcher, which prints `error: ...` and exits 2."""
    from multimeditron.config import ConfigError, load_config
    from multimeditron.training.preflight import check_run

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.trust_remote_code:
        overrides.append("model.trust_remote_code=true")
    try:
        config = load_config(args.config, overrides)
        # The dry run leaves missing paths (an earlier stage's output, data on another machine) to plan lines.
        check_run(config, paths=not args.dry_run)
    except ConfigError as error:
        raise ConfigError(f"{args.config}: {error}") from error
    if args.dry_run:
        from multimeditron.training.plan import format_plan

        try:
            print(format_plan(config))
        except ConfigError as error:
            raise ConfigError(f"{args.config}: {error}") from error
        except (ValueError, KeyError) as error:  # the architecture itself (MultiMeditronConfig, expert registry)
            raise ConfigError(f"{args.config}: model: {str(error).strip(chr(34) + chr(39))}") from error
        return 0
    from multimeditron.cli import configure_logging
    from multimeditron.training.run import run_training

    configure_logging()
    result = run_training(config)
    print(f"final model: {result.final_dir}")
    return 0

