"""``spectune model``: build (once) and show the embedded default model's folder."""

from __future__ import annotations

import argparse

HELP = "prepare the embedded SmolLM2-135M-Instruct (dequantize the GGUF once) and print its folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rebuild", action="store_true", help="rebuild the cached folder even if it is valid"
    )


def run(args: argparse.Namespace) -> int:
    from spectune.models.loading import default_model_dir

    print(default_model_dir(rebuild=args.rebuild))
    return 0
