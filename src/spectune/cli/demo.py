"""``spectune demo``: the main job on the embedded default model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = (
    "the main job: LoRA, DoRA, QLoRA and FROG at matched budgets on the embedded "
    "SmolLM2-135M-Instruct, judged and compared in one report"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="results/demo", help="results folder (default: %(default)s)"
    )
    parser.add_argument(
        "--methods",
        default="lora,dora,qlora,frog",
        help="comma-separated methods to compare (default: %(default)s; add full for the "
        "full fine-tuning reference)",
    )
    parser.add_argument(
        "--config",
        help="base run config for every method (default: the built-in demo settings, the "
        "same as configs/demo.yaml)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="changes to the demo config for every run, e.g. train.max_steps=60",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a demo in the folder")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from spectune.cli._common import show_comparison
    from spectune.studies.demo import demo
    from spectune.tuning.config import read_config_data
    from spectune.tuning.methods import get_method

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    for m in methods:
        get_method(m)  # an unknown name lists the registered methods
    start = time.perf_counter()
    out = Path(args.out)
    base = read_config_data(args.config) if args.config else None
    outcomes = demo(out, methods=methods, overrides=args.overrides, base=base,
                overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress)  # fmt: skip
    show_comparison(outcomes)
    print(f"demo finished in {time.perf_counter() - start:.0f} s; open {out / 'report.html'}")
    return 1 if any(o.error is not None for o in outcomes) else 0
