"""``spectune sweep``: every combination of a grid of settings, compared in one folder."""

from __future__ import annotations

import argparse

HELP = "run a grid of settings (r, lora_alpha, lora_dropout, method...) and compare them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="base YAML run config (default: the defaults)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides of the base config"
    )
    parser.add_argument(
        "--grid",
        nargs="+",
        required=True,
        metavar="key=v1,v2",
        help="values to cross, e.g. --grid r=8,16,32 lora_alpha=16,64,256 lora_dropout=0,0.1 "
        "method=lora,dora",
    )
    from spectune.cli._common import add_comparison_arguments

    add_comparison_arguments(parser, "sweep")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spectune.cli._common import backend_from_args, show_comparison, split_config_and_overrides
    from spectune.studies.sweep import sweep

    backend = backend_from_args(args)
    config_path, overrides = split_config_and_overrides(args)
    outcomes = sweep(config_path, args.grid, overrides=overrides, out=args.out,
                 overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
                 backend=backend)  # fmt: skip
    show_comparison(outcomes)
    out = Path(args.out) if args.out else None
    if out is not None:
        print(f"results in {out} (open {out / 'report.html'})")
    return 1 if any(o.error is not None for o in outcomes) else 0
