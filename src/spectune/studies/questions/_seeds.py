"""What the update-rank and peers questions share: a study's finished runs by variant, and
an interval over a handful of seeds.

With two or three seeds a percentile bootstrap of their mean collapses to the range of the
values (too narrow); :func:`seed_interval` is Student's t instead, optionally on the logs (a
ratio: its geometric mean and interval).
"""

from __future__ import annotations

import math
from typing import Any

from spectune.results.stats import Interval

#: coverage of the intervals over seeds
LEVEL = 0.95


def seed_interval(values: list[float], *, log: bool = False) -> Interval | None:
    """Mean of per-seed values with a Student-t interval (``log``: geometric mean and the
    interval of the logs, for ratios); one value gives a point (``how`` says so); None
    without values.

    Raises:
        ValueError: ``log`` with a value that is not > 0.
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    if log:
        if min(vals) <= 0:
            raise ValueError(f"a log interval needs values > 0, got {min(vals)!r}")
        vals = [math.log(v) for v in vals]
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        low = high = mean
        how = "one seed (no interval)"
    else:
        from scipy.stats import t

        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        half = float(t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
        how = f"Student t over {n} seeds" + (" (on the logs)" if log else "")
    if log:
        mean, low, high = math.exp(mean), math.exp(low), math.exp(high)
    return Interval(mean, low, high, LEVEL, n, n, how)


def complete_runs(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Variant name -> its finished runs' rows (``status`` complete), in the rows' order;
    a row without ``variant`` counts under its ``candidate`` (or ``method``)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "complete":
            name = r.get("variant") or r.get("candidate") or r["method"]
            out.setdefault(name, []).append(r)
    return out


def number(value: Any) -> float | None:
    """A finite float from a row's cell (CSV text or a number), else None."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt_interval(ci: Interval | None, scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    """``"12.5 [8.0, 17.2]"`` with a unit; ``"-"`` for None."""
    if ci is None:
        return "-"
    return ci.text(scale, digits) + unit


__all__ = ["LEVEL", "complete_runs", "fmt_interval", "number", "seed_interval"]
