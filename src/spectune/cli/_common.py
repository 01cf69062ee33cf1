"""Helpers shared by CLI commands (stdlib only at import time)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib Figure as PNG atomically."""
    from spectune._io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


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
