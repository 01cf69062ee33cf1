"""``spectune tune``: fine-tune, judge (learning vs forgetting) and analyze one run."""

from __future__ import annotations

import argparse

HELP = "fine-tune with lora/rslora/dora/qlora/qdora/frog/full, judge it, write a results folder"


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
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def split_config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """argparse puts a first ``key=value`` into ``config`` when no config file is given."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        return None, [config, *overrides]
    return config, overrides


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spectune.finetune.config import load_config
    from spectune.finetune.recipe import tune

    config_path, overrides = split_config_and_overrides(args)
    if (
        config_path is None
        and args.resume
        and args.out
        and (Path(args.out) / "config.yaml").is_file()
    ):
        config_path = str(Path(args.out) / "config.yaml")
    config = load_config(config_path, overrides)
    result = tune(config, out=args.out, overwrite=args.overwrite, resume=args.resume,
                  merge=args.merge, progress=not args.no_progress)  # fmt: skip
    show_run(result.metrics)
    print(f"results in {result.out} (open {result.out / 'report.html'})")
    return 0


def show_run(metrics: dict) -> None:
    """The run's headline numbers as a terminal table."""
    from spectune.cli.sweep import show_comparison
    from spectune.finetune.recipe import flat_metrics

    show_comparison([{**flat_metrics(metrics), "status": "complete"}])
