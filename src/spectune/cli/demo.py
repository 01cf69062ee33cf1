"""``spectune demo``: the main job on the embedded default model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "run the main job on the embedded SmolLM2-135M-Instruct and write a results folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/demo", help="results folder (default: %(default)s)")
    parser.add_argument("--precision", choices=["float64", "float32"], default="float64")


def run(args: argparse.Namespace) -> int:
    from spectune.cli.analyze import show_summary, write_results
    from spectune.models import default_model_dir
    from spectune.spectral import analyze, summarize

    start = time.perf_counter()
    folder = default_model_dir()
    print(f"embedded model: SmolLM2-135M-Instruct ({folder})")
    details = analyze(folder, precision=args.precision, mp_fit=True)
    summary = summarize(details)
    show_summary(details, summary, "SmolLM2-135M-Instruct")
    out = Path(args.out)
    written = write_results(details, summary, out, plots=True, source=folder)
    print(f"wrote {len(written)} files to {out} in {time.perf_counter() - start:.0f} s")
    return 0
