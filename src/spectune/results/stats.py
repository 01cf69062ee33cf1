"""Statistics of runs and studies: intervals, paired differences, correlations, effects, Pareto
fronts.

Pure numpy (and scipy's ranking); no torch. Every random draw is seeded and every result says
how it was computed, so a report can state its uncertainty:

- :func:`bootstrap_mean`: percentile bootstrap interval of a mean over held-out questions.
- :func:`bootstrap_runs`: the same over seeds: resample the runs (seeds), then the questions
  within each resampled run (a two-level bootstrap; one run falls back to the questions).
- :func:`paired_difference`: paired bootstrap of the difference of two methods judged on the
  same questions (resampled within each seed's question set); ``resolved`` when the interval
  excludes 0, otherwise "within noise".
- :func:`spearman`: rank correlation with a bootstrap interval over runs; fewer than
  ``min_n`` runs, or a constant column, is *undetermined* (``rho is None`` and a reason),
  never a number.
- :func:`variance_explained`: eta-squared of each parameter (one-way grouping): the share of
  a metric's variance that the parameter's levels explain, ranked.
- :func:`pareto_front`: the runs no other run beats on both accuracy gain (higher is better)
  and forgetting (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from spectune.errors import SpectuneError

#: default number of bootstrap resamples
N_BOOT = 2000


@dataclass
class Interval:
    """An estimate with a two-sided interval.

    Attributes:
        estimate: the statistic on the data (a mean, a difference...).
        low / high: the interval's ends (percentile bootstrap).
        level: coverage the interval aims at (0.95).
        n: observations behind it (questions, or questions x runs).
        runs: runs (seeds) behind it.
        how: how it was computed ("bootstrap over 64 questions"...).
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n: int = 0
    runs: int = 1
    how: str = ""

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "half_width": self.half_width}

    def text(self, scale: float = 1.0, digits: int = 1) -> str:
        """``"12.5 [8.0, 17.2]"`` (values times ``scale``, e.g. 100 for points)."""
        f = f"{{:.{digits}f}}"
        return (
            f"{f.format(self.estimate * scale)} "
            f"[{f.format(self.low * scale)}, {f.format(self.high * scale)}]"
        )


def _as_array(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty: an interval needs at least one value")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-question 0/1 scores).

    Args:
        values: one number per observation, shape (n,).
        level: the interval's coverage.
        n_boot: resamples.
        seed: seed of the resampling.

    Returns:
        The :class:`Interval` of the mean.
    """
    _check_level(level)
    a = _as_array(values, "values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))  # (n_boot, n)
    low, high = _percentiles(a[idx].mean(axis=1), level)
    return Interval(
        float(a.mean()), low, high, level, int(a.size), 1, f"bootstrap over {a.size} questions"
    )


def _resample_groups(
    groups: list[np.ndarray], rng: np.random.Generator, n_boot: int, resample_groups: bool
) -> np.ndarray:
    """Means of ``n_boot`` two-level resamples (groups, then members); shape (n_boot,)."""
    k = len(groups)
    out = np.empty(n_boot)
    # per group: n_boot resampled means of its members, shape (k, n_boot)
    member_means = np.stack(
        [g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(axis=1) for g in groups]
    )
    if not resample_groups or k == 1:
        return member_means.mean(axis=0)
    pick = rng.integers(0, k, size=(n_boot, k))  # (n_boot, k) groups drawn
    out = member_means[pick, np.arange(n_boot)[:, None]].mean(axis=1)
    return out


def bootstrap_runs(
    per_run: Sequence[Sequence[float] | np.ndarray],
    *,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Interval:
    """Interval of a mean over runs (seeds): resample runs, then questions within each run.

    The estimate is the mean of the runs' means (each seed weighs the same). With one run
    this is :func:`bootstrap_mean` over its questions.

    Args:
        per_run: for each run (seed), its per-question values.
        level / n_boot / seed: as for :func:`bootstrap_mean`.
    """
    _check_level(level)
    groups = [_as_array(g, f"run {i}") for i, g in enumerate(per_run)]
    if not groups:
        raise ValueError("per_run is empty: an interval needs at least one run")
    if len(groups) == 1:
        return bootstrap_mean(groups[0], level=level, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed)
    low, high = _percentiles(_resample_groups(groups, rng, n_boot, True), level)
    n = sum(g.size for g in groups)
    return Interval(
        float(np.mean([g.mean() for g in groups])),
        low,
        high,
        level,
        n,
        len(groups),
        f"bootstrap over {len(groups)} seeds and their questions",
    )


@dataclass
class Difference:
    """A paired difference between two methods (``a - b``) on the same questions.

    Attributes:
        a / b: the methods' names.
        interval: the difference's :class:`Interval`.
        resolved: the interval excludes 0 (the data separate the two).
    """

    a: str
    b: str
    interval: Interval

    @property
    def resolved(self) -> bool:
        return not self.interval.contains(0.0)

    @property
    def verdict(self) -> str:
        if not self.resolved:
            return "within noise"
        return f"{self.a} higher" if self.interval.estimate > 0 else f"{self.b} higher"

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            **self.interval.to_dict(),
            "resolved": self.resolved,
            "verdict": self.verdict,
        }


def paired_difference(
    a: Sequence[float] | Sequence[Sequence[float]],
    b: Sequence[float] | Sequence[Sequence[float]],
    *,
    names: tuple[str, str] = ("a", "b"),
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Difference:
    """Paired bootstrap interval of ``mean(a) - mean(b)`` on the same questions.

    Args:
        a / b: per-question values of the two methods, either one list (one seed) or one list
            per seed (the seeds in the same order in both; each seed's questions the same for
            both methods). Questions are resampled together for both methods, within each
            seed; seeds are resampled when there are several.
        names: the two methods' names.
        level / n_boot / seed: as for :func:`bootstrap_mean`.

    Raises:
        ValueError: the two sides do not hold the same number of questions per seed.
    """
    _check_level(level)

    def groups(x: Any) -> list[np.ndarray]:
        if len(x) and np.ndim(x[0]) > 0:
            return [_as_array(g, "values") for g in x]
        return [_as_array(x, "values")]

    ga, gb = groups(a), groups(b)
    if len(ga) != len(gb) or any(x.size != y.size for x, y in zip(ga, gb, strict=True)):
        raise ValueError(
            f"paired_difference: {names[0]} and {names[1]} must be judged on the same questions "
            f"(got {[g.size for g in ga]} and {[g.size for g in gb]} per seed)"
        )
    diffs = [x - y for x, y in zip(ga, gb, strict=True)]
    rng = np.random.default_rng(seed)
    low, high = _percentiles(_resample_groups(diffs, rng, n_boot, len(diffs) > 1), level)
    est = float(np.mean([d.mean() for d in diffs]))
    n = sum(d.size for d in diffs)
    how = (
        f"paired bootstrap over {n} questions"
        if len(diffs) == 1
        else f"paired bootstrap over {len(diffs)} seeds and {n} questions"
    )
    return Difference(names[0], names[1], Interval(est, low, high, level, n, len(diffs), how))


@dataclass
class Correlation:
    """A Spearman correlation with its interval, or why it is undetermined.

    Attributes:
        x / y: the two columns' names.
        n: runs with both values.
        rho: the rank correlation, None when undetermined.
        low / high: bootstrap interval over runs (None when undetermined or degenerate).
        reason: why ``rho`` is None (too few runs, a constant column).
    """

    x: str
    y: str
    n: int
    rho: float | None = None
    low: float | None = None
    high: float | None = None
    level: float = 0.95
    reason: str | None = None

    @property
    def determined(self) -> bool:
        return self.rho is not None

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (a sign the data can state)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def text(self) -> str:
        if self.rho is None:
            return f"undetermined ({self.reason})"
        ci = "" if self.low is None else f" [{self.low:+.2f}, {self.high:+.2f}]"
        return f"{self.rho:+.2f}{ci} (n={self.n})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resolved": self.resolved}


def _spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    # lazy: scipy.stats takes ~0.7 s to import, and every reader of metrics.json imports
    # this module (for the intervals); only a study's correlations need the ranks
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman(
    x: Sequence[float | None],
    y: Sequence[float | None],
    *,
    names: tuple[str, str] = ("x", "y"),
    min_n: int = 5,
    min_distinct: int = 3,
    unit: str = "run",
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Correlation:
    """Spearman's rho of ``x`` and ``y`` (pairs with a missing value dropped) and a bootstrap
    interval over the pairs (runs, or layers: ``unit`` names them in the reasons).

    Returns:
        A :class:`Correlation`; with fewer than ``min_n`` complete pairs, a constant column, or
        a column with fewer than ``min_distinct`` distinct values (two values make the rank
        correlation a difference between two groups, not a trend), ``rho`` is None and
        ``reason`` says why.
    """
    _check_level(level)
    pairs = [
        (float(a), float(b))
        for a, b in zip(x, y, strict=True)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    n = len(pairs)
    if n < min_n:
        return Correlation(
            names[0],
            names[1],
            n,
            level=level,
            reason=f"{n} {unit}(s) with both values; a correlation needs at least {min_n}",
        )
    xa, ya = (np.array(v) for v in zip(*pairs, strict=True))
    for name, col in zip(names, (xa, ya), strict=True):
        if np.ptp(col) == 0:
            return Correlation(
                names[0], names[1], n, level=level, reason=f"{name} is the same in every {unit}"
            )
        distinct = len(np.unique(col))
        if distinct < min_distinct:
            return Correlation(
                names[0],
                names[1],
                n,
                level=level,
                reason=f"{name} takes only {distinct} distinct values over the "
                f"{n} {unit}s: a difference between groups, not a "
                "trend",
            )
    rho = _spearman_rho(xa, ya)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        r = _spearman_rho(xa[idx], ya[idx])
        if math.isfinite(r):
            boots.append(r)
    low = high = None
    if len(boots) >= n_boot // 2:
        low, high = _percentiles(np.array(boots), level)
    return Correlation(names[0], names[1], n, rho, low, high, level)


@dataclass
class Effect:
    """How much of a metric's variance one parameter explains (eta-squared).

    Attributes:
        parameter / metric: the names.
        eta_squared: between-level sum of squares / total sum of squares, in [0, 1]; None
            when undetermined.
        levels: distinct values of the parameter among the runs.
        n: runs with a value of the metric.
        reason: why ``eta_squared`` is None (one level, no variance...).
    """

    parameter: str
    metric: str
    eta_squared: float | None
    levels: int
    n: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, dict)) else value


def variance_explained(
    rows: Sequence[Mapping[str, Any]], parameters: Sequence[str], metric: str
) -> list[Effect]:
    """Rank ``parameters`` by the share of ``metric``'s variance their levels explain.

    Eta-squared of a one-way grouping per parameter: ``SS_between / SS_total`` over the runs
    with a value of ``metric``. In a full grid (every combination, balanced) this is each
    parameter's main-effect share of the variance; the shares of all parameters and their
    interactions then add up to 1.

    Args:
        rows: one mapping per run (results.csv rows).
        parameters: the columns to rank (e.g. ``["r", "lora_alpha", "learning_rate"]``).
        metric: the column explained (e.g. ``"accuracy_gain"``).

    Returns:
        One :class:`Effect` per parameter, largest share first; undetermined ones last.
    """
    data = [
        r
        for r in rows
        if isinstance(r.get(metric), (int, float)) and math.isfinite(float(r[metric]))
    ]
    y = np.array([float(r[metric]) for r in data])
    effects = []
    for p in parameters:
        levels: dict[Any, list[float]] = {}
        for r, v in zip(data, y, strict=True):
            levels.setdefault(_key(r.get(p)), []).append(float(v))
        n_levels = len(levels)
        if len(data) < 2:
            effects.append(
                Effect(p, metric, None, n_levels, len(data), f"{len(data)} run(s) with {metric}")
            )
            continue
        if n_levels < 2:
            effects.append(
                Effect(p, metric, None, n_levels, len(data), f"{p} has one value in these runs")
            )
            continue
        total = float(((y - y.mean()) ** 2).sum())
        if total == 0:
            effects.append(
                Effect(p, metric, None, n_levels, len(data), f"{metric} is the same in every run")
            )
            continue
        between = sum(len(v) * (np.mean(v) - y.mean()) ** 2 for v in levels.values())
        effects.append(Effect(p, metric, float(between / total), n_levels, len(data)))
    return sorted(effects, key=lambda e: (e.eta_squared is None, -(e.eta_squared or 0.0)))


def pareto_set(points: Sequence[Sequence[float] | None], directions: Sequence[str]) -> list[bool]:
    """Which points are Pareto-optimal under ``directions`` (one per objective, "maximize" or
    "minimize").

    A point is optimal when no other point is at least as good in every objective and better
    in one. Equal points do not dominate each other (both are optimal). A point that is None
    or has a missing or non-finite value is not optimal.

    Returns:
        One flag per point, in order.

    Raises:
        SpectuneError: a direction that is not "maximize"/"minimize", or a point with another
            number of values than there are directions.
    """
    sign = []
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise SpectuneError(f"pareto_set: direction {d!r} is not 'maximize' or 'minimize'")
        sign.append(1.0 if d == "maximize" else -1.0)
    pts: list[tuple[float, ...] | None] = []
    for p in points:
        if p is None:
            pts.append(None)
            continue
        if len(p) != len(sign):
            raise SpectuneError(
                f"pareto_set: a point has {len(p)} values for {len(sign)} objectives"
            )
        ok = all(v is not None and math.isfinite(v) for v in p)
        pts.append(tuple(s * float(v) for s, v in zip(sign, p, strict=True)) if ok else None)
    out = []
    for i, p in enumerate(pts):
        if p is None:
            out.append(False)
            continue
        dominated = any(
            q is not None and j != i and all(a >= b for a, b in zip(q, p, strict=True)) and q != p
            for j, q in enumerate(pts)
        )
        out.append(not dominated)
    return out


def pareto_front(gain: Sequence[float | None], forgetting: Sequence[float | None]) -> list[bool]:
    """Which points are on the Pareto front of (higher gain, lower forgetting).

    A point is on the front when no other point has a gain at least as high and forgetting at
    least as low, and is better in one of them. Points with a missing value are not on it.

    Returns:
        One flag per point, in order.
    """
    return pareto_set(
        [(g, f) for g, f in zip(gain, forgetting, strict=True)], ("maximize", "minimize")
    )


__all__ = [
    "N_BOOT",
    "Correlation",
    "Difference",
    "Effect",
    "Interval",
    "bootstrap_mean",
    "bootstrap_runs",
    "paired_difference",
    "pareto_front",
    "pareto_set",
    "spearman",
    "variance_explained",
]
