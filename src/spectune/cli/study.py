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
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: one run after another; ray: runs as Ray tasks (pip install 'spectune[ray]')",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to use ('auto', 'ray://host:10001'); default: a local instance of 2 CPUs",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from spectune.errors import SpectuneError
    from spectune.finetune.study import study

    if args.address and args.backend != "ray":
        raise SpectuneError("--address is for --backend ray")

    result = study(args.config, out=args.out, overwrite=args.overwrite, resume=args.resume,
                   progress=not args.no_progress, backend=args.backend, address=args.address)  # fmt: skip
    for note in result.notes:
        print(f"- {note}")
    if args.out:
        print(f"results in {args.out} (study.json, results.csv, report.html)")
    return 1 if result.failed_runs else 0
