"""``spectune demo``: the main job on the embedded default model."""

from __future__ import annotations

import argparse

HELP = "run the main job on the embedded SmolLM2-135M-Instruct and write a results folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/demo", help="results folder (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("the demo arrives with the spectral engine")
