"""Sweeps: many runs from one base config, compared in one folder.

``spectune sweep CONFIG --grid r=8,16,32 lora_alpha=16,64,256 lora_dropout=0,0.1
method=lora,dora`` runs every combination (the "LoRA parameters on Llama-2" study in one
command). Settings a method does not use are dropped before runs are compared, so a grid
that crosses ``method=lora,frog`` with ``r=8,16`` trains FROG once, not twice.

Comparison folder (the demo, studies and searches write the same layout, through the runner
they share, :mod:`spectune.studies.runner`)::

    runs/<name>/      one run folder per setting (spectune.tuning.recipe)
    results.csv       one row per run (RunMetrics.row() + the grid's keys + status)
    results.md        the same as a markdown table
    comparison.json   kind, title, grid, base config, timings, skipped duplicates
    plots/            loss curves, accuracy, forgetting, train time, latency, trade-off
    report.html       one self-contained page

An interrupted sweep continues with ``resume=True``: finished runs are kept as they are, the
interrupted one resumes from its last checkpoint, the rest run; a changed grid or base config
is refused, naming the fields. A run that fails (whatever it raises) is recorded as
``failed: <reason>`` and the sweep goes on; the sweep's own ``run.json`` is never left
"running" (an interruption marks it failed). Each run folder stays locked from its run's start
until the sweep ends.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from spectune._io import _json_safe
from spectune.errors import SpectuneError
from spectune.report.pages.comparison import write_comparison_report
from spectune.results.runfolder import HeldFolders, RunFolder
from spectune.studies.backends import Backend, Executor, Job, JobResult, make_executor
from spectune.studies.runner import RunOutcome, finish, opened_folder, outcomes_of, write_comparison
from spectune.tuning import recipe
from spectune.tuning.config import (
    TuneConfig,
    apply_overrides,
    changed_fields,
    parse_value,
    read_config_data,
)

#: short forms of common keys in run names
_SHORT = {"r": "r", "lora_alpha": "a", "lora_dropout": "d", "lora.r": "r", "lora.lora_alpha": "a",
          "lora.lora_dropout": "d", "frog.budget": "G", "shira.r": "r"}  # fmt: skip


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["r=8,16", "method=lora,dora"]`` -> ``{"r": [8, 16], "method": ["lora", "dora"]}``.

    Values are split on commas outside brackets and parsed as YAML (``8`` -> 8,
    ``[q_proj,v_proj]`` -> a list).

    Raises:
        SpectuneError: an item without ``=``, an empty value list, a key given twice.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise SpectuneError(f"--grid item {item!r} is not key=v1,v2,... (e.g. r=8,16,32)")
        if key in grid:
            raise SpectuneError(f"--grid gives {key!r} twice; list all its values in one item")
        parts, depth, cur = [], 0, ""
        for ch in values:
            depth += ch in "[{"
            depth -= ch in "]}"
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        if any(not p.strip() for p in parts):
            raise SpectuneError(f"--grid item {item!r} has an empty value")
        grid[key] = [parse_value(p.strip()) for p in parts]
    return grid


def run_name(setting: dict[str, Any]) -> str:
    """A folder name for a grid setting: ``method=dora, r=16`` -> ``dora_r16``."""
    parts = []
    for key, value in setting.items():
        if isinstance(value, list):
            text = "+".join(map(str, value))
        else:
            text = json.dumps(value) if isinstance(value, dict) else str(value)
        if key == "method":
            parts.append(text)
        elif key in _SHORT:
            parts.append(f"{_SHORT[key]}{text}")
        else:
            parts.append(f"{key.split('.')[-1]}={text}")
    name = "_".join(parts) or "run"
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", name).strip("-")[:120] or "run"


def expand_grid(
    base: dict[str, Any], grid: dict[str, list[Any]], *, source: str = "config"
) -> tuple[list[tuple[str, TuneConfig, dict[str, Any]]], list[dict[str, Any]]]:
    """Every combination of ``grid`` applied to the raw config ``base``, validated.

    Returns:
        ``(runs, skipped)``: runs as ``(name, config, setting)`` in grid order, and the
        settings left out because they train exactly what an earlier one trains (the
        method does not use the varied key), each with ``same_as``.

    Raises:
        SpectuneError: an invalid combination (the message names the setting).
    """
    keys = list(grid)
    runs: list[tuple[str, TuneConfig, dict[str, Any]]] = []
    skipped: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        setting = dict(zip(keys, values, strict=True))
        items = [f"{k}={json.dumps(v)}" for k, v in setting.items()]
        try:
            config = TuneConfig.from_dict(
                apply_overrides(base, items), source=source, foreign_sections="drop"
            )
        except SpectuneError as exc:
            raise SpectuneError(f"grid setting {setting}: {exc}") from None
        key = json.dumps(config.relevant(), sort_keys=True, default=str)
        name = run_name(setting)
        if key in seen:
            skipped.append({"setting": setting, "same_as": seen[key]})
            continue
        if any(n == name for n, _, _ in runs):
            raise SpectuneError(f"two grid settings get the run name {name!r}; rename a value")
        seen[key] = name
        runs.append((name, config, setting))
    return runs, skipped


def run_comparison(
    runs: list[tuple[str, TuneConfig, dict[str, Any]]],
    out: str | Path,
    *,
    kind: str,
    title: str,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    prelude: Any = None,
    backend: str | Backend = "local",
    address: str | None = None,
) -> list[RunOutcome]:
    """Run ``runs`` one after another into ``out/runs/<name>`` and compare them.

    Args:
        runs: ``(name, config, setting)`` triples (see :func:`expand_grid`).
        out: the comparison folder.
        kind: ``"sweep"`` or ``"demo"`` (recorded; a resume must match it).
        title: heading of the report.
        meta: extra fields for ``comparison.json``.
        overwrite / resume: as for :func:`spectune.tuning.recipe.tune`, for the whole folder.
        progress: progress output.
        prelude: called with the opened :class:`RunFolder` before the first run (skipped on
            resume when the prelude's work is done), e.g. to write the base model's spectra.
        backend / address: ``"local"``, ``"ray"`` (the runs as Ray Tune trials) or a
            :class:`~spectune.studies.backends.Backend` (cluster, resources per trial), and
            the Ray cluster (:func:`spectune.studies.backends.make_executor`).

    Returns:
        One :class:`RunOutcome` per run, in order.
    """
    out = Path(out)
    backend = Backend.of(backend, address)
    held = HeldFolders()  # each run folder's lock, from its run's start to the sweep's end
    local = backend.name == "local"
    # Ray is reached (or refused) before the folder is touched; locally a failed run is always
    # named, through Ray with the progress output
    execute = make_executor(
        backend, None, recipe.tune, progress, held, failures=True if local else None
    )
    settings = _settings(meta)

    def before(folder: RunFolder) -> None:
        if resume:
            _check_same_settings(folder, out, kind, settings)
        if not folder.complete:
            folder.update(settings=settings)

    with opened_folder(
        out, kind, overwrite=overwrite, resume=resume, held=held, before=before
    ) as folder:
        return _run_all(
            runs,
            out,
            folder,
            execute,
            kind=kind,
            title=title,
            meta=meta,
            resume=resume,
            prelude=prelude,
            local=local,
        )


def _settings(meta: dict[str, Any] | None) -> dict[str, Any]:
    """What a resume must find unchanged: the grid, the base config, the methods (as JSON)."""
    keep = {k: v for k, v in (meta or {}).items() if k in ("grid", "base_config", "methods")}
    return json.loads(json.dumps(_json_safe(keep), default=str))  # as the marker stores it


def _check_same_settings(folder: RunFolder, out: Path, kind: str, settings: dict[str, Any]) -> None:
    """Refuse a resume whose grid or base config differs from the one the folder started with
    (recorded in its marker; comparison.json for a folder from before that)."""
    old = folder.state.get("settings")
    if not isinstance(old, dict):
        try:
            data = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        old = _settings(data if isinstance(data, dict) else {})
        if not old:
            return
    diff = changed_fields(old, settings)
    if diff:
        shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
        raise SpectuneError(
            f"--resume: this {kind} differs from the one {out} started with (in: {shown}); "
            "resume with the same --grid and config, or start over with --overwrite"
        )


def _run_all(
    runs: list[tuple[str, TuneConfig, dict[str, Any]]],
    out: Path,
    folder: RunFolder,
    execute: Executor,
    *,
    kind: str,
    title: str,
    meta: dict[str, Any] | None,
    resume: bool,
    prelude: Any,
    local: bool,
) -> list[RunOutcome]:
    """The runs in the opened, locked folder; locally, the comparison is written after each
    run that finishes."""
    folder.own("runs", "results.csv", "results.md", "comparison.json", "plots", "report.html")
    start = time.perf_counter()
    if prelude is not None and not folder.state.get("prelude_done"):
        prelude(folder)
        folder.update(prelude_done=True)
    # a Ray trial's folder does not depend on its working directory
    runs_dir = out / "runs" if local else out.absolute() / "runs"
    jobs = [Job(n, c.method, c.to_dict(), runs_dir / n, resume) for n, c, _ in runs]
    settings = [setting for _, _, setting in runs]
    head = {"kind": kind, "title": title, **(meta or {})}
    finished: list[tuple[Job, dict[str, Any], JobResult]] = []

    def after(job: Job, result: JobResult) -> None:
        finished.append((job, settings[len(finished)], result))
        if result[0] is not None:  # the comparison so far
            write_comparison(
                out, *outcomes_of(*zip(*finished, strict=True)), {**head, "total_seconds": None}
            )

    outcomes, logs = outcomes_of(jobs, settings, execute(jobs, None, after))
    total = time.perf_counter() - start
    write_comparison(out, outcomes, logs, {**head, "total_seconds": total})
    write_comparison_report(out)
    failed = [o.name for o in outcomes if o.error is not None]
    folder.update(total_seconds=total, failed_runs=failed)
    finish(folder, failed, len(outcomes))
    return outcomes


def sweep(
    config_path: str | Path | None,
    grid_items: list[str],
    *,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    backend: str | Backend = "local",
    address: str | None = None,
) -> list[RunOutcome]:
    """Run every combination of ``grid_items`` over the config at ``config_path``.

    Args:
        config_path: the base YAML config (None: defaults).
        grid_items: ``key=v1,v2`` items.
        overrides: ``key=value`` items applied to the base config first.
        out: the comparison folder (default: the base config's output_dir).
        overwrite / resume: see :func:`run_comparison`.
        progress: progress output.
        backend / address: see :func:`run_comparison`.

    Returns:
        One :class:`RunOutcome` per run (``.row()`` is its line of ``results.csv``).
    """
    base = read_config_data(config_path) if config_path is not None else {}
    base = apply_overrides(base, list(overrides or []))
    source = str(config_path or "config")
    base_config = TuneConfig.from_dict(base, source=source, foreign_sections="drop")
    grid = parse_grid(grid_items)
    if not grid:
        raise SpectuneError("sweep needs --grid key=v1,v2 ... (e.g. r=8,16,32)")
    runs, skipped = expand_grid(base, grid, source=source)
    out = Path(out if out is not None else base_config.output_dir)
    for key in grid:
        if key == "output_dir":
            raise SpectuneError("--grid cannot vary output_dir; each run gets runs/<name>")
    meta = {
        "grid": grid,
        "base_config": base_config.to_dict(),
        "runs": [n for n, _, _ in runs],
        "skipped_duplicates": skipped,
    }
    if progress and skipped:
        for s in skipped:
            print(f"skipping {s['setting']}: trains the same as {s['same_as']}", file=sys.stderr)
    return run_comparison(
        runs,
        out,
        kind="sweep",
        title=f"Sweep over {', '.join(grid)}",
        meta=meta,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
        backend=backend,
        address=address,
    )


__all__ = ["expand_grid", "parse_grid", "run_comparison", "run_name", "sweep"]
