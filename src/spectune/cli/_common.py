"""Helpers shared by CLI commands (stdlib only at import time)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from spectune.report.files import save_figure  # noqa: F401 - re-exported for callers


def print_table(
    rows: list[dict[str, Any]], title: str, columns: list[str], *, first_width: int = 24
) -> None:
    """A rich table on stdout (plain text when stdout is not a terminal, up to 160 wide)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        if col == columns[0]:
            table.add_column(col, justify="left", overflow="fold", min_width=first_width)
        else:
            table.add_column(col, justify="right")
    for row in rows:
        cells = [_fmt(row.get(c)) for c in columns]
        cells[0] = cells[0].removeprefix("model.").removeprefix("base_model.model.")
        table.add_row(*cells)
    width = Console().width if sys.stdout.isatty() else 160
    Console(file=sys.stdout, width=max(100, width)).print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3f}" if abs(v) < 1e5 else f"{v:.3e}"
    return "" if v is None else str(v)


def split_config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """argparse puts a first ``key=value`` into ``config`` when no config file is given."""
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        return None, [config, *overrides]
    return config, overrides


def _fmt_num(value: Any, spec: str) -> str:
    return "-" if value is None or value == "" else format(float(value), spec)


def accuracy_text(learning: Any) -> str:
    """``"0.0% -> 40.6% [28.1, 53.1]"``: held-out accuracy before and after, with the after
    accuracy's 95% bootstrap interval over the questions when the run recorded it."""
    text = (
        f"{_fmt_num(learning.accuracy_before, '.1%')} -> {_fmt_num(learning.accuracy_after, '.1%')}"
    )
    ci = learning.accuracy_after_interval
    if ci is not None:
        text += f" [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"
    return text


def seeds_line(outcomes: list[Any]) -> str | None:
    """What the table's intervals are: over questions, one seed per run (None without
    intervals)."""
    done = [o.metrics for o in outcomes if o.metrics is not None]
    with_ci = [m for m in done if m.learning.accuracy_after_interval is not None]
    if not with_ci:
        return None
    seeds = sorted({m.run.seed for m in done})
    n = sorted({m.learning.accuracy_after_interval.n for m in with_ci})
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    return (
        f"One seed per run ({which}): [low, high] is the after-accuracy's 95% bootstrap "
        f"interval over the {' / '.join(map(str, n))} held-out questions, not over seeds "
        "(spectune study repeats seeds)."
    )


def show_comparison(outcomes: list[Any]) -> None:
    """The runs' headline numbers (``RunOutcome`` objects, typed metrics) as a terminal
    table, and a line saying what its intervals are; results.csv holds every column."""
    view = []
    for o in outcomes:
        m = o.metrics
        if m is None:
            view.append({"run": o.name, "method": o.method, "status": o.status})
            continue
        learn, forget, cost = m.learning, m.forgetting, m.cost
        spectra = m.spectra
        view.append(
            {
                "run": o.name,
                "method": m.run.method,
                "trainable": _fmt_num(cost.trainable_percent, ".2f") + "%",
                "accuracy": accuracy_text(learn),
                "perplexity": f"{_fmt_num(forget.perplexity_before, '.2f')} -> "
                f"{_fmt_num(forget.perplexity_after, '.2f')}",
                "train s": _fmt_num(cost.train_seconds, ".0f"),
                "ms/token": _fmt_num(cost.ms_per_token, ".0f"),
                "alpha (base)": f"{_fmt_num(spectra and spectra.alpha, '.2f')} "
                f"({_fmt_num(spectra and spectra.base_alpha, '.2f')})",
                "status": "ok",
            }
        )
    columns = [
        "run",
        "method",
        "trainable",
        "accuracy",
        "perplexity",
        "train s",
        "ms/token",
        "alpha (base)",
        "status",
    ]
    print_table(
        view,
        "learning (held-out accuracy) vs forgetting (perplexity on general text)",
        columns,
        first_width=8,
    )
    line = seeds_line(outcomes)
    if line:
        print(line)


def add_comparison_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--out / --overwrite / --resume / the backend options / --no-progress of a command
    that runs many runs into one folder (``what``: "sweep", "study", "search")."""
    parser.add_argument("--out", help=f"{what} folder (default: the config's output_dir)")
    parser.add_argument("--overwrite", action="store_true", help=f"replace a {what} in the folder")
    parser.add_argument(
        "--resume", action="store_true", help=f"continue an interrupted {what} (finished runs kept)"
    )
    ray = parser.add_argument_group("where the runs go")
    ray.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: one run after another here (default); ray: the runs as Ray Tune trials, "
        "several at once (pip install 'spectune[ray]')",
    )
    ray.add_argument(
        "--address",
        help="the Ray cluster: 'auto' (the one started with `ray start` on this machine), "
        "host:port or ray://host:10001; default: a local instance that spectune starts",
    )
    ray.add_argument(
        "--cpus", type=int, help="CPUs of the local Ray instance (default: all of this machine's)"
    )
    ray.add_argument(
        "--cpus-per-trial", type=float, metavar="N", help="CPUs each Ray trial asks for (default 1)"
    )
    ray.add_argument(
        "--gpus-per-trial",
        type=float,
        metavar="N",
        help="GPUs each Ray trial asks for, fractions allowed (default 0)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")


def backend_from_args(args: argparse.Namespace) -> Any:
    """The checked :class:`~spectune.studies.backends.Backend` of the options (an option
    that only goes with ``--backend ray`` is refused with the local backend)."""
    from spectune.studies.backends import Backend

    return Backend(
        args.backend, args.address, args.cpus, args.cpus_per_trial, args.gpus_per_trial
    ).check()
