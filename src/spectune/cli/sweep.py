"""``spectune sweep``: every combination of a grid of settings, compared in one folder."""

from __future__ import annotations

import argparse

HELP = "run a grid of settings (r, lora_alpha, lora_dropout, method...) and compare them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="base YAML run config (default: the defaults)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides of the base config"
    )
    parser.add_argument(
        "--grid",
        nargs="+",
        required=True,
        metavar="key=v1,v2",
        help="values to cross, e.g. --grid r=8,16,32 lora_alpha=16,64,256 lora_dropout=0,0.1 "
        "method=lora,dora",
    )
    parser.add_argument("--out", help="comparison folder (default: the config's output_dir)")
    parser.add_argument("--overwrite", action="store_true", help="replace a sweep in the folder")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted sweep (finished runs kept)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spectune.cli.tune import split_config_and_overrides
    from spectune.finetune.sweep import sweep

    config_path, overrides = split_config_and_overrides(args)
    rows = sweep(config_path, args.grid, overrides=overrides, out=args.out,
                 overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress)  # fmt: skip
    show_comparison(rows)
    out = Path(args.out) if args.out else None
    if out is not None:
        print(f"results in {out} (open {out / 'report.html'})")
    return 1 if any(r.get("status") != "complete" for r in rows) else 0


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None or value == "" else format(float(value), spec)


def show_comparison(rows: list[dict]) -> None:
    """The runs' headline numbers as a terminal table (results.csv holds every column)."""
    from spectune.cli._common import print_table

    view = []
    for r in rows:
        if r.get("status") != "complete":
            view.append(
                {"run": r.get("name"), "method": r.get("method"), "status": r.get("status")}
            )
            continue
        acc0, acc1 = _fmt(r.get("accuracy_before"), ".1%"), _fmt(r.get("accuracy_after"), ".1%")
        view.append({
            "run": r.get("name"),
            "method": r.get("method"),
            "trainable": _fmt(r.get("trainable_percent"), ".2f") + "%",
            "accuracy": f"{acc0} -> {acc1}",
            "perplexity": f"{_fmt(r.get('perplexity_before'), '.2f')} -> "
                          f"{_fmt(r.get('perplexity_after'), '.2f')}",
            "train s": _fmt(r.get("train_seconds"), ".0f"),
            "ms/token": _fmt(r.get("ms_per_token"), ".0f"),
            "alpha (base)": f"{_fmt(r.get('adapter_alpha'), '.2f')} "
                            f"({_fmt(r.get('base_alpha'), '.2f')})",
            "status": "ok",
        })  # fmt: skip
    columns = ["run", "method", "trainable", "accuracy", "perplexity", "train s", "ms/token",
               "alpha (base)", "status"]  # fmt: skip
    print_table(view, "learning (held-out accuracy) vs forgetting (perplexity on general text)",
                columns, first_width=8)  # fmt: skip
