"""The page of a comparison folder: a sweep, a study, a search or the demo.

A comparison folder holds ``results.csv`` (required; one row per run, the columns of
:meth:`spectune.results.metrics.RunMetrics.row`, perhaps a ``status`` column),
``comparison.json`` (kind, title, grid, base_config, total_seconds, notes; a search's
objectives and Pareto set; a study's answer to its question, shown first as "Findings"), ``plots/*.png``, ``base_spectra/`` (the demo: the base model's
spectra folder) and ``runs/<name>/``, each a run folder shown as a collapsible section.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spectune.errors import SpectuneError
from spectune.report.pages.blocks import (
    DASH,
    _count,
    _dict,
    _esc,
    _fixed,
    _general,
    _Html,
    _join,
    _metrics,
    _num,
    _page,
    _pct,
    _plots,
    _Reader,
    _required,
    _seconds,
    _section,
    _share,
    _table,
    _tag,
    _write_report,
)
from spectune.report.pages.run import (
    RUN_FILE,
    RUN_PLOTS,
    _judging,
    _key_numbers,
    _lede,
    _names,
    _notes,
)
from spectune.report.pages.watch import WATCH_FIGURES, _watch_runs, _watch_sections
from spectune.results.metrics import RunMetrics

COMPARISON_FILE = "results.csv"

#: results.csv columns: (header, formatter); other columns are shown as they are
_COLUMNS: dict[str, tuple[str, Any]] = {
    "name": ("run", str),
    "method": ("method", _general),
    "status": ("status", lambda v: v or DASH),
    "r": ("r", _general),
    "lora_alpha": ("lora alpha", _general),
    "lora_dropout": ("lora dropout", _general),
    "frog_budget": ("frog budget", _general),
    "trainable": ("trainable params", _count),
    "trainable_percent": ("trainable %", _share),
    "train_loss": ("train loss", lambda v: _fixed(v, 3)),
    "accuracy_before": ("accuracy before", _pct),
    "accuracy_after": ("accuracy after", _pct),
    "accuracy_after_low": ("accuracy after, 95% low", _pct),
    "accuracy_after_high": ("accuracy after, 95% high", _pct),
    "validation_loss": ("validation loss", lambda v: _fixed(v, 3)),
    "heldout_loss_after": ("held-out loss after", lambda v: _fixed(v, 3)),
    "perplexity_before": ("perplexity before", lambda v: _fixed(v, 2)),
    "perplexity_after": ("perplexity after", lambda v: _fixed(v, 2)),
    "perplexity_change": ("perplexity change", lambda v: _fixed(v, 2, sign=True)),
    "train_seconds": ("train time (s)", lambda v: _fixed(v, 1)),
    "tokens_per_second": ("tokens/s", lambda v: _fixed(v, 1)),
    "peak_rss_mib": ("peak RSS (MiB)", lambda v: _fixed(v, 1)),
    "adapter_mib": ("adapter (MiB)", lambda v: _fixed(v, 2)),
    "ms_per_token": ("ms/token", lambda v: _fixed(v, 2)),
    "adapter_alpha": ("adapter alpha", lambda v: _fixed(v, 3)),
    "base_alpha": ("base alpha", lambda v: _fixed(v, 3)),
}


def _failed(row: dict[str, str]) -> bool:
    return str(row.get("status") or "").strip().lower().startswith("failed")


def _best(rows: list[dict[str, str]], column: str, pick: Any) -> set[int]:
    """Indices of the rows holding the best value of ``column`` (ties all count)."""
    values = {i: _num(r.get(column)) for i, r in enumerate(rows) if not _failed(r)}
    values = {i: v for i, v in values.items() if v is not None}
    if not values:
        return set()
    best = pick(values.values())
    return {i for i, v in values.items() if v == best}


def _results_table(fields: list[str], rows: list[dict[str, str]], anchors: dict[str, str]) -> _Html:
    """Every run of results.csv; columns no run has a value in are left out (and named)."""
    order = [c for c in _COLUMNS if c in fields]  # name, method, status first
    columns = order + [c for c in fields if c not in order]
    empty = [c for c in columns if c != "name" and all(r.get(c) in ("", None) for r in rows)]
    columns = [c for c in columns if c not in empty]
    headers = [_COLUMNS.get(c, (c.replace("_", " "), None))[0] for c in columns]
    best = {
        "accuracy_after": _best(rows, "accuracy_after", max),
        "perplexity_change": _best(rows, "perplexity_change", min),
    }
    table, cell_classes = [], {}
    numeric = [
        i
        for i, c in enumerate(columns)
        if c not in ("name", "method", "status") and any(_num(r.get(c)) is not None for r in rows)
    ]
    for r, row in enumerate(rows):
        cells = []
        for c, col in enumerate(columns):
            value = row.get(col)
            value = None if value in ("", None) else value
            fmt = _COLUMNS.get(col, (None, _general))[1]
            text = fmt(value) if value is not None else DASH
            if col == "name" and value is not None and value in anchors:
                text = _Html(f'<a href="#{anchors[value]}">{_esc(value)}</a>')
            if r in best.get(col, ()):
                cell_classes[(r, c)] = "best"
                text = _Html(f'<span title="best">{_esc(text)}</span>')
            cells.append(text)
        table.append(cells)
    row_classes = ["failed" if _failed(r) else "" for r in rows]
    legend = (
        "Green: the highest accuracy after tuning and the smallest perplexity change on "
        "general text (the least forgetting). Accuracy is held-out exact match; failed "
        "runs are greyed out."
    )
    if empty:
        legend += f" Columns without a value in any run are left out: {', '.join(empty)}."
    return _join(
        [
            _table(
                headers,
                table,
                numeric=numeric,
                row_classes=row_classes,
                cell_classes=cell_classes,
                cls="results",
            ),
            _tag("p", legend, "muted"),
        ]
    )


def _comparison_head(info: dict[str, Any], folder: Path, n_runs: int) -> tuple[str, _Html]:
    kind = str(info.get("kind") or "comparison")
    title = str(info.get("title") or f"spectune {kind}: {folder.name}")
    sub = [f"{kind} of {n_runs} run{'s' if n_runs != 1 else ''}"]
    if _num(info.get("total_seconds")) is not None:
        sub.append(f"total time {_seconds(info['total_seconds'])}")
    parts = [_tag("h1", title), _tag("p", " \u00b7 ".join(sub), "sub")]
    grid = info.get("grid")
    if isinstance(grid, dict) and grid:
        rows = [
            [k, v if isinstance(v, str) else json.dumps(v, default=str)] for k, v in grid.items()
        ]
        label = "search space" if kind == "search" else "grid"
        parts.append(_table([label, "values"], rows))
    elif grid:
        parts.append(_tag("pre", json.dumps(grid, indent=2, default=str)))
    return title, _join(parts)


def _findings(info: dict[str, Any]) -> _Html:
    """A study's answer to its question (``comparison.json``'s ``answer``): the findings
    (claim, published, ours, verdict), the rows behind them and the answer's notes."""
    answer = info.get("answer")
    if not isinstance(answer, dict) or not isinstance(answer.get("findings"), list):
        return _Html("")
    found = [f for f in answer["findings"] if isinstance(f, dict)]
    rows = [
        [f.get("claim"), f"{f.get('published')} ({f.get('source')})", f.get("ours"),
         _Html(f'<strong>{_esc(f.get("verdict"))}</strong>'), f.get("why")]
        for f in found
    ]  # fmt: skip
    parts = [_tag("p", str(answer.get("title") or "")),
             _table(["claim", "published", "ours", "verdict", "how measured"], rows)]  # fmt: skip
    table = [r for r in answer.get("table") or [] if isinstance(r, dict)]
    if table:
        keys = list(table[0])
        parts.append(
            _table(
                keys,
                [[DASH if r.get(k) is None else _general(r.get(k)) for k in keys] for r in table],
            )  # fmt: skip
        )
    parts.append(_notes(answer.get("notes")))
    return _join(parts)


def _pareto(info: dict[str, Any], anchors: dict[str, str]) -> _Html:
    """The Pareto set of a search (``comparison.json``'s ``pareto``: one mapping per run, its
    objectives first) as a table, each run linked to its section."""
    front = info.get("pareto")
    if not isinstance(front, list) or not front or not all(isinstance(p, dict) for p in front):
        return _Html("")
    objectives = [o.get("name") for o in info.get("objectives") or [] if isinstance(o, dict)]
    columns: list[str] = ["run"]
    for p in front:
        columns += [k for k in p if k not in columns and k != "trial"]
    rows = []
    for p in front:
        cells = []
        for c in columns:
            value = p.get(c)
            if c == "run" and str(value) in anchors:
                cells.append(_Html(f'<a href="#{anchors[str(value)]}">{_esc(value)}</a>'))
            else:
                cells.append(DASH if value is None else _general(value))
        rows.append(cells)
    ways = ", ".join(
        f"{o.get('name')} ({o.get('direction')})"
        for o in info.get("objectives") or []
        if isinstance(o, dict)
    )
    legend = (
        f"The runs no other trial beats on every objective ({ways}): no run is at least "
        "as good in all of them and better in one."
    )
    numeric = [i for i, c in enumerate(columns) if c in objectives]
    return _join([_table(columns, rows, numeric=numeric), _tag("p", legend, "muted")])


def _run_section(reader: _Reader, path: Path, anchor: str, row: dict[str, str] | None) -> _Html:
    """A collapsible section of one run of a comparison: key numbers and plots."""
    m: RunMetrics | None = None
    if (path / RUN_FILE).is_file() and reader.inside(path / RUN_FILE):
        try:
            m = _metrics(path)
        except SpectuneError as exc:
            reader.problems.append(str(exc))
    name = path.name
    status = (row or {}).get("status") or ""
    summary = [name]
    if m is not None:
        _, method, _ = _names(m, path)
        j = _judging(m)
        if method:
            summary.append(method)
        if j["acc1"] is not None:
            summary.append(f"accuracy {_pct(j['acc0'])} \u2192 {_pct(j['acc1'])}")
        if j["dppl"] is not None:
            summary.append(f"perplexity change {_fixed(j['dppl'], 2, sign=True)}")
    if status and status != "complete":
        summary.append(status)
    body: list[str] = []
    if m is not None:
        lede = _lede(m)
        body += [_tag("p", lede) if lede else "", _key_numbers(m)]
    else:
        why = f" ({status})" if status else ""
        body.append(
            _tag(
                "p",
                f"No readable {reader.rel(path / RUN_FILE)}{why}: the run did not "
                "finish, so only what it left behind is shown.",
                "muted",
            )
        )
    body.append(_plots(reader, path / "plots", known=RUN_PLOTS))
    if m is not None:
        body.append(_section("Notes", _notes(m.notes), level=4))
    head = _esc(" \u00b7 ".join(summary))
    return _Html(
        f'<details class="run" id="{_esc(anchor)}"><summary>{head}</summary>'
        f"{''.join(body)}</details>"
    )


def _base_spectra(reader: _Reader, folder: Path) -> _Html:
    """The base model's spectral summary and figures (the demo's ``base_spectra/``)."""
    if not folder.is_dir():
        return _Html("")
    summary = _dict(reader.json(folder / "summary.json"))
    line = ""
    if summary:
        line = _tag(
            "p",
            f"{_count(summary.get('n_analyzed'))} of {_count(summary.get('n_layers'))} matrices "
            f"fitted; mean alpha {_fixed(summary.get('alpha'), 2)}, alpha_weighted "
            f"{_fixed(summary.get('alpha_weighted'), 2)}, log_norm "
            f"{_fixed(summary.get('log_norm'), 2)}, stable rank "
            f"{_fixed(summary.get('stable_rank'), 1)} (WeightWatcher definitions; "
            "details.csv holds every matrix).",
        )
    return _join(
        [
            line,
            _plots(reader, folder, exclude=WATCH_FIGURES),
            *_watch_sections(reader, folder, ("a", "b"), level=3),
        ]
    )


def render_comparison(folder: str | os.PathLike[str]) -> str:
    """The HTML page of a comparison folder (a sweep or the demo).

    Args:
        folder: a folder holding ``results.csv`` (required) and optionally
            ``comparison.json``, ``plots/*.png`` and ``runs/<name>/`` run folders.

    Returns:
        The page: title and grid, the results table (the best accuracy after tuning and the
        smallest perplexity change highlighted), a search's Pareto set, every plot, the
        spectral warning signs of each run (from ``runs/<name>/spectra/``), the base model's
        spectra when the folder has ``base_spectra/`` (the demo), then one collapsible section
        per run with its key numbers and plots.

    Raises:
        SpectuneError: ``folder`` has no ``results.csv``.
    """
    folder = _required(folder, COMPARISON_FILE, "a sweep or demo folder holds one")
    reader = _Reader(folder)
    parsed = reader.csv(folder / COMPARISON_FILE)
    fields, rows = parsed if parsed else ([], [])
    info = reader.json(folder / "comparison.json")
    if info is not None and not isinstance(info, dict):
        reader.problems.append("comparison.json: not a JSON object; left out")
    info = info if isinstance(info, dict) else {}

    runs_dir = folder / "runs"
    run_dirs = (
        sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name)
        if runs_dir.is_dir()
        else []
    )
    by_name = {str(r.get("name")): r for r in rows if r.get("name")}
    csv_order = list(by_name)
    run_dirs.sort(
        key=lambda p: (csv_order.index(p.name) if p.name in csv_order else len(csv_order), p.name)
    )
    anchors = {p.name: f"run-{i}" for i, p in enumerate(run_dirs, 1)}

    title, head = _comparison_head(info, folder, len(rows))
    notes = info.get("notes")
    base_config = info.get("base_config")
    body = [
        head,
        _section("Findings", _findings(info)),
        _section(
            "Results",
            _results_table(fields, rows, anchors)
            if rows
            else _tag("p", "results.csv holds no runs."),
        ),
        _section("Pareto set", _pareto(info, anchors)),
        _section("Plots", _plots(reader, folder / "plots")),
        _section("Spectral warning signs per run", _watch_runs(reader, run_dirs, anchors)),
        _section("Base model spectra", _base_spectra(reader, folder / "base_spectra")),
        _section(
            "Runs",
            _join(_run_section(reader, p, anchors[p.name], by_name.get(p.name)) for p in run_dirs),
        ),
        _section("Notes", _notes(notes)),
        _section(
            "Base config",
            _tag("pre", json.dumps(base_config, indent=2, sort_keys=True, default=str))
            if base_config
            else "",
        ),
    ]
    return _page(title, "\n".join(body), reader.problems)


def write_comparison_report(folder: str | os.PathLike[str]) -> Path:
    """Render :func:`render_comparison` into ``folder/report.html`` (atomically).

    Returns:
        The path of the report.

    Raises:
        SpectuneError: ``folder`` has no ``results.csv``, or its report.html is not a page
            spectune wrote (:func:`check_report_path`); nothing is written.
    """
    return _write_report(folder, render_comparison)


__all__ = ["COMPARISON_FILE", "render_comparison", "write_comparison_report"]
