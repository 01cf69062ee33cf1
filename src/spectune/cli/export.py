"""``spectune export``: a finished run's merged model as a GGUF file (llama.cpp, Ollama)."""

from __future__ import annotations

import argparse

HELP = "write a finished run's merged model as a GGUF file for llama.cpp and Ollama"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a complete results folder of spectune tune")
    parser.add_argument(
        "--gguf",
        action="store_true",
        required=True,
        help="write GGUF (the one format export writes; merged/ safetensors: tune --merge)",
    )
    parser.add_argument(
        "--type",
        default="f16",
        choices=("f16", "q8_0", "f32"),
        help="tensor type of the matrices: f16 (default), q8_0 (8-bit blocks), f32; norms and "
        "biases stay float32",
    )
    parser.add_argument(
        "--out", default=None, help="the .gguf file to write (default: RUN/model-TYPE.gguf)"
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from spectune.tuning.export import export_gguf

    path = export_gguf(args.run, qtype=args.type, out=args.out, progress=sys.stderr.isatty())
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0
