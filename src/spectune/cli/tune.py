"""``spectune tune``: fine-tune, judge (learning vs forgetting) and watch one run."""

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
    from spectune.tuning.scale import distributed

    if distributed.active():
        return run_launched(args)
    config = load_run_config(args)
    result = tune_with(args, config)
    show_run(result.metrics)
    print(f"results in {result.out} (open {result.out / 'report.html'})")
    return 0


def load_run_config(args: argparse.Namespace) -> object:
    """The run's config from the command line (the folder checked writable first)."""
    from pathlib import Path

    from spectune._io import check_writable_dir
    from spectune.cli._common import split_config_and_overrides
    from spectune.errors import SpectuneError
    from spectune.tuning.config import load_config
    from spectune.tuning.scale import distributed

    config_path, overrides = split_config_and_overrides(args)
    fix = "pass a folder you can write to"
    if distributed.active():
        fix = (
            "pass a folder every process can write to (each writes its part of the "
            "checkpoints; on several machines, a shared file system)"
        )
    if args.out:
        check_writable_dir(args.out, "--out", fix)  # before any work, not after training
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
    if not args.out and distributed.active():
        check_writable_dir(config.output_dir, "output_dir", fix)
    return config


def tune_with(args: argparse.Namespace, config: object) -> object:
    from spectune.tuning.recipe import tune

    return tune(
        config,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        merge=args.merge,
        progress=not args.no_progress,
    )


def run_launched(args: argparse.Namespace) -> int:
    """``spectune tune`` as one of several processes (torchrun / accelerate launch): every
    rank checks the command line, then they agree; an error is printed by every rank, which
    then wait for each other and exit with code 2 (the launcher stops the others when the
    first one exits: by then every rank has said why, and a stopped rank still exits 2)."""
    import os
    import signal
    import sys

    from spectune.errors import SpectuneError
    from spectune.tuning.scale import distributed

    config, error = None, None
    try:
        config = load_run_config(args)
    except SpectuneError as exc:
        error = str(exc)
    except OSError as exc:
        if exc.filename is None:
            raise
        error = f"{exc.filename}: {exc.strerror or exc}"
    failed = False
    with distributed.session(config) as world:
        try:
            distributed.agree(error)
            result = tune_with(args, config)
        except SpectuneError as exc:
            if getattr(args, "debug", False) or os.environ.get("SPECTUNE_DEBUG") == "1":
                raise
            # one write of the whole line: the ranks share the launcher's stderr, and print()
            # writes the text and its newline apart, so two ranks' lines could run together
            sys.stderr.write(f"spectune: error: {exc}\n")
            sys.stderr.flush()
            # the launcher stops the other ranks when the first one exits: this rank's exit
            # code stays that of the error it printed
            signal.signal(signal.SIGTERM, lambda *_: os._exit(2))
            failed = True
    if failed:  # (the interpreter's shutdown would restore the default SIGTERM handler)
        sys.stdout.flush()
        os._exit(2)
    if world.main:
        show_run(result.metrics)
        print(
            f"results in {result.out} (open {result.out / 'report.html'}); trained by "
            f"{world.size} processes"
        )
    return 0


def show_run(metrics: object) -> None:
    """The run's headline numbers (a RunMetrics) as a terminal table."""
    from spectune.cli._common import show_comparison
    from spectune.studies.runner import RunOutcome

    show_comparison([RunOutcome(metrics.run.name, metrics.run.method, {}, metrics=metrics)])
