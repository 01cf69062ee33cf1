"""``spectune describe``: the matrices analyze would look at, shapes only (reads no data)."""

from __future__ import annotations

import argparse

HELP = "list the matrices (or LoRA pairs) of any weights with their shapes, reading no tensor data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="model folder, weights file, PEFT adapter, or 'default'")
    parser.add_argument("--peft", action="store_true", help="list LoRA pairs")
    parser.add_argument("--layers", help="regex: only rows whose longname matches")
    parser.add_argument("--csv", help="also write the table to this CSV file")


def run(args: argparse.Namespace) -> int:
    from spectune._io import check_writable_file
    from spectune.cli._common import print_table
    from spectune.cli.analyze import resolve_source
    from spectune.errors import SpectuneError
    from spectune.spectral import describe

    csv = check_writable_file(args.csv, "--csv") if args.csv else None
    desc = describe(resolve_source(args.source), peft=args.peft, layers=args.layers)
    if args.layers is not None and desc.empty:
        raise SpectuneError(
            f"--layers '{args.layers}' selects no matrix; run without --layers to list them all"
        )
    cols = [c for c in ["layer_id", "longname", "layer_type", "N", "M", "Q", "rf", "num_evals",
                        "lora_rank", "scaling"] if c in desc.columns]  # fmt: skip
    print_table(desc.to_dict(orient="records"), f"{args.source}: {len(desc)} matrices", cols)
    if csv is not None:
        from spectune._io import atomic_path

        with atomic_path(csv) as tmp:
            desc.to_csv(tmp, index=False)
    return 0
