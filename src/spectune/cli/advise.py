"""``spectune advise``: which method to use, from a study, sweep or demo folder and limits."""

from __future__ import annotations

import argparse

HELP = "recommend a method from a study/sweep/demo folder under memory, time, latency limits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a folder written by spectune study, sweep or demo")
    parser.add_argument("--memory-gib", type=float, help="peak training memory limit (GiB)")
    parser.add_argument("--max-train-s", type=float, help="training time limit (seconds)")
    parser.add_argument(
        "--max-ms-per-token", type=float, help="inference latency limit (ms per generated token)"
    )
    parser.add_argument(
        "--max-forgetting",
        type=float,
        help="largest relative perplexity increase on general text (0.05 = 5%%)",
    )
    parser.add_argument(
        "--n-train", type=int, help="training examples you have (little data: fewer parameters)"
    )
    parser.add_argument("--json", action="store_true", help="print the advice as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from spectune.cli._common import print_table
    from spectune.studies.advice import Constraints, advise, load_candidates

    constraints = Constraints(
        memory_gib=args.memory_gib,
        max_train_s=args.max_train_s,
        max_ms_per_token=args.max_ms_per_token,
        max_forgetting=args.max_forgetting,
        n_train=args.n_train,
    )
    advice = advise(load_candidates(args.folder), constraints)
    if args.json:
        print(json.dumps(advice.to_dict(), indent=2, default=float))
        return 0
    rows = []
    for r in advice.table:
        rows.append(
            {
                "candidate": r["name"],
                "runs": r["runs"],
                "gain (pts)": _ci(r["accuracy_gain"], r["gain_low"], r["gain_high"]),
                "ppl increase (%)": _ci(r["forgetting"], r["forgetting_low"], r["forgetting_high"]),
                "train s": r["train_seconds"],
                "ms/token": r["ms_per_token"],
                "peak GiB": r["peak_rss_gib"],
            }
        )
    print_table(rows, "Measured candidates (95% intervals)", list(rows[0]), first_width=12)
    print(advice.text())
    return 0


def _ci(est: float | None, low: float | None, high: float | None) -> str:
    if est is None:
        return "-"
    if low is None or high is None or low == high:
        return f"{100 * est:+.1f}"
    return f"{100 * est:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
