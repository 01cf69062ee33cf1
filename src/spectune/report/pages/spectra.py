"""The page of a spectra folder: what ``spectune watch --out`` or ``spectune compare --out``
wrote (``details.csv`` and/or ``compare.csv``, with their summaries, ``flow.csv`` and figures):
the analysis's summary and extremes, the figures, then the watch sections
(:mod:`spectune.report.pages.watch`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spectune.errors import SpectuneError
from spectune.report.pages.blocks import (
    _count,
    _dict,
    _fixed,
    _Html,
    _join,
    _page,
    _plots,
    _Reader,
    _section,
    _table,
    _tag,
    _write_report,
)
from spectune.report.pages.watch import (
    WATCH_FIGURES,
    _count_rows,
    _extremes,
    _labels,
    _watch_sections,
)

#: files of which one makes a folder a spectra folder (``spectune watch`` / ``compare --out``)
SPECTRA_FILES = ("details.csv", "compare.csv")


def _analysis_summary(s: dict[str, Any], rows: list[dict[str, str]]) -> _Html:
    """The means of an analysis (summary.json) and its lowest / highest alphas."""
    parts: list[str] = []
    if s:
        table = [
            ["matrices analyzed", f"{_count(s.get('n_analyzed'))} of {_count(s.get('n_layers'))}"],
            ["mean alpha", _fixed(s.get("alpha"), 3)],
            ["mean alpha_weighted", _fixed(s.get("alpha_weighted"), 3)],
            ["mean log_norm", _fixed(s.get("log_norm"), 3)],
            ["mean log_spectral_norm", _fixed(s.get("log_spectral_norm"), 3)],
            ["mean stable_rank", _fixed(s.get("stable_rank"), 3)],
            ["matrices with alpha > 6", _count(s.get("n_overparameterized"))],
        ]
        table += _count_rows(s)
        parts.append(_table(["spectra (means over fitted matrices)", "value"], table, numeric=(1,)))
        parts.append(
            _tag(
                "p",
                "Alpha is the power-law exponent of the tail of each matrix's "
                "eigenvalue spectrum (WeightWatcher's definitions); 2 to 6 is the usual "
                "range of well-trained layers.",
                "muted",
            )
        )
    if rows:
        parts.append(_extremes(rows, where="details.csv"))
    return _join(parts)


def render_spectra(folder: str | os.PathLike[str]) -> str:
    """The HTML page of a spectra folder: what ``spectune watch --out`` or
    ``spectune compare --out`` wrote.

    Args:
        folder: a folder holding ``details.csv`` (an analysis: with ``summary.json``,
            ``flow.csv`` and figures when written) and/or ``compare.csv`` (a comparison of two
            models: with ``compare.json``, ``flow.csv`` and figures).

    Returns:
        The page: the summary and lowest / highest alphas, the figures, then the watch
        sections (fits, overparameterized layers, intruder dimensions, scale collapse,
        correlation flow), each when its data is there.

    Raises:
        SpectuneError: ``folder`` has neither details.csv nor compare.csv.
    """
    root = Path(folder)
    if not any((root / f).is_file() for f in SPECTRA_FILES):
        where = (
            "no such folder" if not root.is_dir() else "neither details.csv nor compare.csv in it"
        )
        raise SpectuneError(
            f"cannot render {root}: {where}; `spectune watch --out` or "
            "`spectune compare --out` writes one"
        )
    reader = _Reader(root)
    summary = _dict(reader.json(root / "summary.json"))
    info = _dict(reader.json(root / "compare.json"))
    parsed = reader.csv(root / "details.csv") if (root / "details.csv").is_file() else None
    rows = parsed[1] if parsed else []
    if info:
        a, b = _labels(info)
        title, sub = (
            f"spectune compare: {b} against {a}",
            f"{_count(info.get('n_matched'))} matrices matched",
        )
    else:
        source = summary.get("source") or root.name
        title, sub = f"spectune watch: {source}", f"{_count(summary.get('n_layers'))} matrices"
    body = [
        _tag("h1", title),
        _tag("p", sub, "sub"),
        _section("Summary", _analysis_summary(summary, rows)),
        _section("Plots", _plots(reader, root, exclude=WATCH_FIGURES)),
        *_watch_sections(reader, root, ("a", "b")),
    ]
    return _page(title, "\n".join(body), reader.problems)


def write_spectra_report(folder: str | os.PathLike[str]) -> Path:
    """Render :func:`render_spectra` into ``folder/report.html`` (atomically).

    Raises:
        SpectuneError: ``folder`` has neither details.csv nor compare.csv, or its report.html
            is not a page spectune wrote (:func:`check_report_path`); nothing is written.
    """
    return _write_report(folder, render_spectra)


__all__ = ["SPECTRA_FILES", "render_spectra", "write_spectra_report"]
