"""``spectune search``: a multi-objective Optuna search over run settings; the Pareto set."""

from __future__ import annotations

import argparse

HELP = "search settings with Optuna (NSGA-II) for accuracy gain against forgetting: Pareto set"

#: spectune.studies.search_space.DEFAULT_SPACE (not imported: the help answers without the library)
DEFAULT_SPACE = (
    "r=4,8,16,32,64 lora_alpha=4..256:log lora_dropout=0..0.2 "
    "train.learning_rate=1e-5..1e-2:log method=lora,dora"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="base YAML run config (default: the defaults)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides of the base config"
    )
    parser.add_argument(
        "--space",
        nargs="+",
        metavar="key=spec",
        help="the search space: key=a,b,c (categorical), key=low..high (uniform; integers when "
        "both bounds are), key=low..high:log, key=low..high:step=S; default: " + DEFAULT_SPACE,
    )
    parser.add_argument(
        "--trials",
        type=int,
        help="trials to finish (a resume counts the finished ones, and may raise it); "
        "default with --sampler grid: every combination",
    )
    parser.add_argument(
        "--objectives",
        default="accuracy_gain,forgetting",
        help="comma-separated metrics, name:max or name:min to set the direction (default "
        "accuracy_gain,forgetting: gain maximized, forgetting minimized); also accuracy_after, "
        "train_seconds, ms_per_token, peak_rss_mib, trainable_percent, adapter_mib, train_loss",
    )
    parser.add_argument(
        "--sampler",
        choices=("nsga2", "tpe", "random", "grid"),
        help="Optuna sampler (default: nsga2 with several objectives, tpe with one)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    parser.add_argument(
        "--population",
        type=int,
        help="NSGA-II's generation size (default 50; the first generation is random)",
    )
    from spectune.cli._common import add_comparison_arguments

    add_comparison_arguments(parser, "search")


def run(args: argparse.Namespace) -> int:
    from spectune.cli._common import backend_from_args, print_table, split_config_and_overrides
    from spectune.studies.search import search

    backend = backend_from_args(args)
    config_path, overrides = split_config_and_overrides(args)
    if args.space is None and not args.no_progress:
        import sys

        print(f"[search] no --space: the default {DEFAULT_SPACE}", file=sys.stderr)
    result = search(
        config_path,
        space=args.space,
        objectives=args.objectives,
        trials=args.trials,
        sampler=args.sampler,
        seed=args.seed,
        population=args.population,
        overrides=overrides,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        backend=backend,
    )
    names = [o["name"] for o in result.objectives]
    keys = [p["key"] for p in result.space]
    ways = ", ".join(f"{o['name']} ({o['direction']})" for o in result.objectives)
    print_table(result.pareto, f"Pareto set: {ways}", ["run", *names, *keys], first_width=10)
    for note in result.notes:
        print(f"- {note}")
    if args.out:
        print(f"results in {args.out} (pareto.csv, search.json, results.csv, report.html)")
    return 1 if result.failed_runs else 0
