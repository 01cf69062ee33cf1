"""``spectune describe``: the matrices watch would look at, shapes only (reads no data)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "list the matrices (or LoRA pairs) of any weights with their shapes, reading no tensor data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="model folder, weights file, PEFT adapter, or 'default'")
    parser.add_argument("--peft", action="store_true", help="list LoRA pairs")
    parser.add_argument("--layers", help="regex: only rows whose longname matches")
    parser.add_argument(
        "--csv", help="also write the table to this CSV file (new, or one describe wrote)"
    )


#: how the table describe writes begins: an existing --csv is replaced only when it is one
HEADER = "layer_id,name,longname,"


def _check_ours(csv: Path) -> None:
    """Refuse an existing ``--csv`` that is not a table describe wrote, or a link."""
    from spectune.errors import SpectuneError

    if csv.is_symlink():
        raise SpectuneError(
            f"--csv {csv} is a symbolic link; spectune never writes through a "
            "link: pick another --csv"
        )
    if not csv.exists():
        return
    try:
        with csv.open("rb") as fh:
            head = fh.read(len(HEADER)).decode("utf-8", errors="replace")
    except OSError as exc:
        raise SpectuneError(
            f"--csv {csv} cannot be read ({exc.strerror}); pick another --csv"
        ) from None
    if head != HEADER:
        raise SpectuneError(
            f"--csv {csv} exists and is not a table spectune describe wrote; "
            "spectune never replaces a file it did not write: pick another "
            "--csv or move it"
        )


def run(args: argparse.Namespace) -> int:
    from spectune._io import check_writable_file
    from spectune.cli._common import print_table
    from spectune.cli.watch import resolve_source
    from spectune.errors import SpectuneError
    from spectune.watch import describe

    csv = check_writable_file(args.csv, "--csv") if args.csv else None
    if csv is not None:
        _check_ours(csv)
    desc = describe(resolve_source(args.source), peft=args.peft, layers=args.layers)
    if args.layers is not None and desc.empty:
        raise SpectuneError(
            f"--layers '{args.layers}' selects no matrix; run without --layers to list them all"
        )
    cols = [
        c
        for c in [
            "layer_id",
            "longname",
            "layer_type",
            "N",
            "M",
            "Q",
            "rf",
            "num_evals",
            "lora_rank",
            "scaling",
        ]
        if c in desc.columns
    ]
    print_table(desc.to_dict(orient="records"), f"{args.source}: {len(desc)} matrices", cols)
    if csv is not None:
        from spectune._io import atomic_path

        with atomic_path(csv) as tmp:
            desc.to_csv(tmp, index=False)
    return 0
