"""``spectune compare A B``: two models layer by layer (scale collapse, correlation flow)."""

from __future__ import annotations

import argparse

HELP = "compare two models layer by layer: norm changes (scale collapse) and alpha along depth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="the reference model (teacher, base): folder, file or 'default'")
    parser.add_argument("b", help="the other model (student, tuned)")
    parser.add_argument("--layers", help="regex: only rows whose longname matches")
    parser.add_argument(
        "--out",
        help="results folder for compare.csv, compare.json, flow.csv "
        "and plots (new, empty, or an earlier compare --out, whose files are "
        "replaced)",
    )
    parser.add_argument("--plots", action="store_true", help="also write PNG figures to --out")
    parser.add_argument(
        "--report", action="store_true", help="also write report.html (with the figures) to --out"
    )
    parser.add_argument(
        "--z",
        type=float,
        default=3.5,
        help="robust standard deviations below the typical norm change that "
        "flag a collapsed layer (default 3.5)",
    )
    parser.add_argument(
        "--min-drop",
        type=float,
        default=0.1,
        help="smallest flagged drop in log10 units (default 0.1)",
    )
    parser.add_argument("--precision", choices=["float64", "float32"], default="float64")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from spectune._io import check_writable_dir
    from spectune.cli._common import print_table
    from spectune.cli.watch import resolve_source
    from spectune.errors import SpectuneError
    from spectune.results.runfolder import RunFolder
    from spectune.watch import analyze
    from spectune.watch.compare import compare_models

    if args.report and not args.out:
        raise SpectuneError("--report needs --out DIR (the folder report.html is written to)")
    if not (math.isfinite(args.z) and args.z > 0):
        raise SpectuneError(f"--z must be a finite number > 0, got {args.z}")
    if not (math.isfinite(args.min_drop) and args.min_drop >= 0):
        raise SpectuneError(f"--min-drop must be a finite number >= 0, got {args.min_drop}")
    out = check_writable_dir(args.out, "--out") if args.out else None
    folder = RunFolder(out, "compare") if out is not None else None
    if folder is not None:  # before the work: a folder of the user's is refused
        folder.check(overwrite=True)
    a, b = resolve_source(args.a), resolve_source(args.b)
    kw = dict(layers=args.layers, precision=args.precision, progress=not args.no_progress)
    ta, tb = analyze(a, **kw), analyze(b, **kw)
    labels = (Path(str(args.a)).name, Path(str(args.b)).name)
    if labels[0] == labels[1]:
        labels = (str(args.a), str(args.b))
    comparison = compare_models(ta, tb, z=args.z, min_drop=args.min_drop, labels=labels)
    table, summary = comparison.table, comparison.summary
    matched = table[table["match"] == "matched"]
    shown = matched.sort_values("d_log_spectral_norm").head(10)
    print_table(
        shown.to_dict(orient="records"),
        "largest norm drops (b - a, log10 units)",
        ["longname", "d_log_spectral_norm", "d_log_norm", "d_alpha", "collapsed"],
    )
    print(
        f"matched {summary['n_matched']} layers; collapsed: {summary['n_collapsed']}"
        + (f" ({', '.join(summary['collapsed_layers'][:10])})" if summary["n_collapsed"] else "")
    )
    if summary["flow_bent"]:
        print(
            "alpha flow bent in b (breaks b's trend, not a's): "
            + ", ".join(summary["flow_bent"][:10])
        )
    if summary["mismatched"]:
        print(
            f"not compared ({len(summary['mismatched'])}): " + "; ".join(summary["mismatched"][:10])
        )
    if out is not None and folder is not None:
        from spectune.report.files import write_comparison_results

        with folder.replacing():
            written = write_comparison_results(
                comparison, out, plots=args.plots or args.report, own=folder.own
            )
            if args.report:
                from spectune.report.pages.blocks import REPORT
                from spectune.report.pages.spectra import write_spectra_report

                folder.own(REPORT)
                written.append(write_spectra_report(out))
        print(f"wrote {len(written)} files to {args.out}")
    elif args.plots:
        print("--plots needs --out DIR; no figures written")
    return 0
