"""Tables of runs: the one writer of results.csv, results.md and pareto.csv.

A table is a list of rows (mappings); its columns are every key of the rows in the order
they first appear (after the columns asked to come first), and a row lacking a column gets a
blank cell. Sweeps, studies, searches and the demo all write their tables through here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any


def table_columns(rows: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """``first``, then every other key of ``rows`` in the order they first appear."""
    columns: list[str] = list(first)
    for r in rows:
        columns += [k for k in r if k not in columns]
    return columns


def csv_text(
    rows: Sequence[Mapping[str, Any]], first: Sequence[str] = (), *, json_cells: bool = False
) -> str:
    """``rows`` as CSV text: a column per key (:func:`table_columns`), a blank cell where a row
    lacks it; with ``json_cells``, lists and mappings are written as their JSON text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, table_columns(rows, first), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        if json_cells:
            r = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()}
        writer.writerow(r)
    return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as a markdown table of ``columns`` (``-`` for a missing or NaN cell, floats
    to four significant digits)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


__all__ = ["csv_text", "markdown_table", "table_columns"]
