"""``spectune report``: (re)render report.html of a results folder."""

from __future__ import annotations

import argparse

HELP = "write report.html for a results folder of tune, judge, sweep, demo, watch or compare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a folder written by spectune tune, judge, sweep or demo, or "
                        "by watch / compare with --out")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spectune.errors import SpectuneError
    from spectune.report.pages.comparison import write_comparison_report
    from spectune.report.pages.run import write_run_report
    from spectune.report.pages.spectra import SPECTRA_FILES, write_spectra_report

    folder = Path(args.folder)
    if not folder.exists():
        raise SpectuneError(
            f"{folder}: no such folder; pass a results folder of tune, sweep or demo"
        )
    if not folder.is_dir():
        raise SpectuneError(f"{folder} is a file; pass a results folder of tune, sweep or demo")
    if (folder / "results.csv").is_file():
        path = write_comparison_report(folder)
    elif (folder / "metrics.json").is_file():
        path = write_run_report(folder)
    elif any((folder / name).is_file() for name in SPECTRA_FILES):
        path = write_spectra_report(folder)
    else:
        raise SpectuneError(
            f"{folder} holds neither metrics.json (a tune run), results.csv (a sweep or the "
            "demo) nor details.csv / compare.csv (watch or compare --out); pass a results folder"
        )
    print(f"wrote {path}")
    return 0
