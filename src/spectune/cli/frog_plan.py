"""``spectune frog-plan``: the old name of ``spectune methods frog --model M``, kept for one
release (FROG's per-matrix budget table and layer-importance charts, the same files and
output); a successful run ends with a one-line note on stderr naming the new verb."""

from __future__ import annotations

import argparse
import sys

HELP = "old name of 'spectune methods frog --model M': FROG's per-matrix plan on a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        help="'default' (embedded SmolLM2-135M-Instruct), a local HF folder, a .gguf file or a "
        "hub id (org/name)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.01,
        help="G, fraction of the target weights that train, in (0, 1] (default: %(default)s)",
    )
    parser.add_argument(
        "--global",
        dest="global_selection",
        action="store_true",
        help="select the top weights over all matrices together (paper section 10) instead "
        "of per matrix",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="folder for the table and charts (new, "
        "empty, or an earlier frog-plan --out, whose files are replaced)",
    )
    parser.add_argument(
        "--target-modules",
        default="all-linear",
        help="'all-linear' (default), comma-separated module names/suffixes, or a regex "
        "prefixed with 're:'",
    )
    parser.add_argument("--exclude-modules", default=None, help="comma-separated names/suffixes")
    parser.add_argument("--svd", choices=("exact", "randomized"), default="exact")
    parser.add_argument("--svd-rank", type=int, default=None, help="rank of the (randomized) SVD")
    parser.add_argument(
        "--importance",
        choices=("frobenius", "alpha"),
        default="frobenius",
        help="matrix importance; 'alpha' is experimental (uses the spectral engine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _targets(text: str) -> str | list[str]:
    if text.startswith("re:"):
        return text[3:]
    if text == "all-linear":
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    from spectune.cli.methods import show_plan

    data = {
        "target_modules": _targets(args.target_modules),
        "exclude_modules": _targets(args.exclude_modules) if args.exclude_modules else None,
        "seed": args.seed,
        "frog": {
            "budget": args.budget,
            "selection": "global" if args.global_selection else "per_matrix",
            "svd": args.svd,
            "svd_rank": args.svd_rank,
            "importance": args.importance,
        },
    }
    code = show_plan("frog", args.model, data, out=args.out, progress=not args.no_progress)
    # after the run, so that an error stays the one line on stderr it always was
    print(
        "spectune frog-plan is now spectune methods frog --model MODEL --out DIR "
        "[frog.KEY=VALUE ...]",
        file=sys.stderr,
    )
    return code
