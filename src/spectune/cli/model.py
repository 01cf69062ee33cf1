"""``spectune model [MODEL]``: prepare a model and print its folder: the embedded default
(dequantized once), a ``.gguf`` file (dequantized once into the cache), a hub id (its snapshot,
fetched through the Hugging Face cache) or a local folder (checked)."""

from __future__ import annotations

import argparse

HELP = (
    "prepare a model and print its folder: the embedded SmolLM2-135M-Instruct (default), a "
    ".gguf file (dequantized once) or a hub id org/name (fetched through the HF cache)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default="default",
        help="'default' (embedded, the default), a model folder, a .gguf file or a hub id "
        "org/name[@revision]",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild the cached folder of 'default' or a .gguf file even if it is valid",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spectune.errors import SpectuneError
    from spectune.models.loading import default_model_dir, gguf_model_dir, resolve_model_dir
    from spectune.models.sources import is_gguf_file

    if args.model == "default":
        print(default_model_dir(rebuild=args.rebuild))
        return 0
    gguf = Path(args.model).expanduser()
    if args.rebuild and not is_gguf_file(gguf):
        raise SpectuneError(
            f"--rebuild: {args.model} is not 'default' or a .gguf file; only those are built "
            "into the spectune cache"
        )
    if args.rebuild:  # (a corrupt file or an unknown architecture is refused before building)
        print(gguf_model_dir(gguf, rebuild=True))
        return 0
    print(resolve_model_dir(args.model))
    return 0
