"""``spectune judge MODEL [--adapter DIR] --out DIR``: judge what was already trained."""

from __future__ import annotations

import argparse

HELP = (
    "judge a model, a peft adapter or a spectune run on tune's yardsticks (learning, "
    "forgetting, latency, spectra against the base) without training"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="the model, as model: takes it ('default', a model folder...); with --adapter "
        "the adapter's base, else the model judged (a merged model is a model)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config fields as spectune tune takes them: eval.max_new_tokens=32 "
        "data.n_eval=64 eval.spectra=false",
    )
    parser.add_argument(
        "--adapter",
        help="a peft adapter folder (made by peft or another tool) or a spectune run folder; "
        "MODEL is then judged too, as 'before'",
    )
    parser.add_argument("--out", required=True, help="results folder (new or empty)")
    parser.add_argument(
        "--config",
        help="YAML run config whose data: and eval: settings are used (default: a spectune "
        "run's own config, else the defaults)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier judge output in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from spectune._io import check_writable_dir
    from spectune.cli.tune import show_run
    from spectune.studies.judge_existing import judge_model

    check_writable_dir(args.out, "--out")
    result = judge_model(
        args.model,
        out=args.out,
        adapter=args.adapter,
        config=args.config,
        overrides=list(args.overrides),
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    show_run(result.metrics)
    print(f"results in {result.out} (open {result.out / 'report.html'})")
    return 0
