"""``spectune compare A B``: two models layer by layer (scale collapse, correlation flow)."""

from __future__ import annotations

import argparse

HELP = "compare two models layer by layer: norm changes (scale collapse) and alpha along depth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="the reference model (teacher, base): folder, file or 'default'")
    parser.add_argument("b", help="the other model (student, tuned)")
    parser.add_argument("--layers", help="regex: only rows whose longname matches")
    parser.add_argument("--out", help="results folder for compare.csv, compare.json and plots")
    parser.add_argument("--plots", action="store_true", help="also write PNG figures to --out")
    parser.add_argument("--z", type=float, default=3.5,
                        help="robust standard deviations below the typical norm change that "
                        "flag a collapsed layer (default 3.5)")  # fmt: skip
    parser.add_argument("--min-drop", type=float, default=0.1,
                        help="smallest flagged drop in log10 units (default 0.1)")  # fmt: skip
    parser.add_argument("--precision", choices=["float64", "float32"], default="float64")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spectune._io import atomic_path, check_writable_dir, write_json, write_text
    from spectune.cli._common import print_table
    from spectune.cli.analyze import resolve_source
    from spectune.spectral import analyze
    from spectune.spectral.compare import compare, compare_summary, correlation_flow, flow_change

    out = check_writable_dir(args.out, "--out") if args.out else None
    a, b = resolve_source(args.a), resolve_source(args.b)
    kw = dict(layers=args.layers, precision=args.precision, progress=not args.no_progress)
    ta, tb = analyze(a, **kw), analyze(b, **kw)
    table = compare(ta, tb, z=args.z, min_drop=args.min_drop)
    summary = compare_summary(table)
    flow_a, flow_b = correlation_flow(ta), correlation_flow(tb)
    summary["flow_breaks_a"] = flow_a.loc[flow_a["breaks_flow"], "longname"].tolist()
    summary["flow_breaks_b"] = flow_b.loc[flow_b["breaks_flow"], "longname"].tolist()
    change = flow_change(flow_a, flow_b)
    summary["flow_bent"] = change.loc[change["bent"], "longname"].tolist()
    matched = table[table["match"] == "matched"]
    shown = matched.sort_values("d_log_spectral_norm").head(10)
    print_table(shown.to_dict(orient="records"), "largest norm drops (b - a, log10 units)",
                ["longname", "d_log_spectral_norm", "d_log_norm", "d_alpha", "collapsed"])  # fmt: skip
    print(f"matched {summary['n_matched']} layers; collapsed: {summary['n_collapsed']}"
          + (f" ({', '.join(summary['collapsed_layers'][:10])})" if summary["n_collapsed"] else ""))  # fmt: skip
    if summary["flow_bent"]:
        print("alpha flow bent in b (breaks b's trend, not a's): "
              + ", ".join(summary["flow_bent"][:10]))  # fmt: skip
    if summary["mismatched"]:
        print(f"not compared ({len(summary['mismatched'])}): "
              + "; ".join(summary["mismatched"][:10]))  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "compare.csv", table.to_csv(index=False))
        write_json(out / "compare.json", summary)
        written = 2
        if args.plots:
            from spectune.report.plots import correlation_flow_plot, scale_collapse

            figures = {
                "scale_collapse.png": scale_collapse(table),
                "correlation_flow.png": correlation_flow_plot(
                    flow_a, flow_b, labels=(Path(str(args.a)).name, Path(str(args.b)).name)
                ),
            }
            for name, fig in figures.items():
                with atomic_path(out / name) as tmp:
                    fig.savefig(tmp, format="png", dpi=110)
                written += 1
        print(f"wrote {written} files to {args.out}")
    elif args.plots:
        print("--plots needs --out DIR; no figures written")
    return 0
