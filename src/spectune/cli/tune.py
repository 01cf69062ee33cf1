"""``spectune tune``: fine-tune, judge (learning vs forgetting) and analyze one run."""

from __future__ import annotations

import argparse

HELP = "fine-tune with a registered method (spectune methods), judge it, write a results folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        help="YAML run config (see configs/); without it the defaults (LoRA on the embedded "
        "model and the bundled task set), or with --resume the config saved in --out",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config fields, dotted for sections: r=16 train.learning_rate=1e-4 "
        "frog.budget=0.02 target_modules=[q_proj,v_proj]",
    )
    parser.add_argument("--out", help="results folder (default: the config's output_dir)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a run already in the folder"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its checkpoint"
    )
    parser.add_argument(
        "--merge", action="store_true", help="also write merged/: the tuned model, adapter merged"
    )
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep checkpoints/ after the run is complete (train.keep_checkpoints; removed "
        "otherwise, once the adapter is written)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spectune._io import check_writable_dir
    from spectune.cli._common import split_config_and_overrides
    from spectune.errors import SpectuneError
    from spectune.finetune.config import load_config
    from spectune.finetune.recipe import tune

    config_path, overrides = split_config_and_overrides(args)
    if args.out:
        check_writable_dir(args.out, "--out")  # before any work, not after training
    if args.keep_checkpoints:
        overrides.append("train.keep_checkpoints=true")
    saved = False
    if (
        config_path is None
        and args.resume
        and args.out
        and (Path(args.out) / "config.yaml").is_file()
    ):
        config_path, saved = str(Path(args.out) / "config.yaml"), True
    elif config_path is None and args.resume:
        where = args.out or "the default output folder"
        raise SpectuneError(
            f"--resume: {where} holds no run to resume (no config.yaml); give --out the folder "
            "of an interrupted run, or start a run with a config file"
        )
    # a config saved by an older version holds every section: keep the run's own
    config = load_config(config_path, overrides, foreign_sections="drop" if saved else "error")
    result = tune(config, out=args.out, overwrite=args.overwrite, resume=args.resume,
                  merge=args.merge, progress=not args.no_progress)  # fmt: skip
    show_run(result.metrics)
    print(f"results in {result.out} (open {result.out / 'report.html'})")
    return 0


def show_run(metrics: object) -> None:
    """The run's headline numbers (a RunMetrics) as a terminal table."""
    from spectune.cli._common import show_comparison
    from spectune.finetune.sweep import RunOutcome

    show_comparison([RunOutcome(metrics.run.name, metrics.run.method, {}, metrics=metrics)])
