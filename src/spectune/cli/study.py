"""``spectune study``: methods compared at their own learning rates, over seeds, with intervals."""

from __future__ import annotations

import argparse

HELP = "run a study: per-method learning-rate search, seeds, intervals, Pareto front, advice"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="study YAML: a base run config plus a study: block")
    from spectune.cli._common import add_comparison_arguments

    add_comparison_arguments(parser, "study")


def run(args: argparse.Namespace) -> int:
    from spectune.cli._common import backend_from_args
    from spectune.studies.study import study

    backend = backend_from_args(args)

    result = study(args.config, out=args.out, overwrite=args.overwrite, resume=args.resume,
                   progress=not args.no_progress, backend=backend)  # fmt: skip
    for note in result.notes:
        print(f"- {note}")
    for f in (result.answer or {}).get("findings", []):  # the study's question, answered
        print(f"{f['verdict']}: {f['claim']}: ours {f['ours']}; published {f['published']}")
    if args.out:
        print(f"results in {args.out} (study.json, results.csv, report.html)")
    return 1 if result.failed_runs else 0
