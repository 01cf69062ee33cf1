"""``spectune study``: methods compared at their own learning rates, over seeds, with intervals."""

from __future__ import annotations

import argparse

HELP = "run a study: per-method learning-rate search, seeds, intervals, Pareto front, advice"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="study YAML: a base run config plus a study: block")
    parser.add_argument("--out", help="study folder (default: the config's output_dir)")
    parser.add_argument("--overwrite", action="store_true", help="replace a study in the folder")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted study (finished runs kept)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from spectune.finetune.study import study

    result = study(args.config, out=args.out, overwrite=args.overwrite, resume=args.resume,
                   progress=not args.no_progress)  # fmt: skip
    for note in result.notes:
        print(f"- {note}")
    if args.out:
        print(f"results in {args.out} (study.json, results.csv, report.html)")
    return 1 if result.failed_runs else 0
