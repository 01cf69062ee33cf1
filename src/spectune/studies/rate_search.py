"""A variant's learning-rate search: every rate crossed with its searched settings, each point
run once per search seed on the validation split, the best mean picked (:func:`search_points`).

The criterion is ``accuracy`` (the highest mean validation accuracy, ties broken by the lowest
mean validation loss) or ``loss`` (the lowest mean validation loss); further ties go to the
smaller rate, then to the earlier point. A point counts only when its run finished at every
search seed: a rate that diverges at one seed is not averaged away.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from spectune.studies.backends import failure
from spectune.studies.variants import rate_name, short

#: (validation accuracy, validation loss) of a search run
Score = tuple[float, float]


@dataclass
class LRSearch:
    """The learning-rate search of one variant.

    Attributes:
        method: the variant's method.
        rates: the rates tried, ascending.
        scores: per rate, the mean (validation accuracy, validation loss) over the search
            seeds at that rate's best searched setting; None when no point of it finished.
        chosen: the rate picked (None when every run failed).
        errors: point (``<rate>[-<key><value>...][-s<seed>]``) -> why its run failed.
        variant: the variant's name (None in studies before variants: the method's).
        points: the settings tried, in the order run: ``{"learning_rate": r, key: value}``.
        curves: search seed -> per point (validation accuracy, validation loss), None when
            that run failed; empty without a search (one point).
        chosen_point: the point the real runs use (None: every point failed).
        criterion: ``"accuracy"`` (then loss) or ``"loss"``.
        seeds: the search seeds.
    """

    method: str
    rates: list[float]
    scores: list[Score | None]
    chosen: float | None
    errors: dict[str, str] = field(default_factory=dict)
    variant: str | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[int, list[Score | None]] = field(default_factory=dict)
    chosen_point: dict[str, Any] | None = None
    criterion: str = "accuracy"
    seeds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The variant's name (the method's in studies before variants)."""
        return self.variant or self.method

    def to_dict(self) -> dict[str, Any]:
        """As ``study.json`` holds it (the curves keyed by the seed as text, as JSON does)."""
        out = asdict(self)
        out["curves"] = {str(k): [None if s is None else list(s) for s in v]
                         for k, v in self.curves.items()}  # fmt: skip
        out["scores"] = [None if s is None else list(s) for s in self.scores]
        return out

    def evidence(self) -> dict[str, Any]:
        """The search as a question reads it (:attr:`Evidence.searches`)."""
        return {
            "points": [dict(p) for p in self.points],
            "curves": {int(k): list(v) for k, v in self.curves.items()},
            "chosen": None if self.chosen_point is None else dict(self.chosen_point),
            "criterion": self.criterion,
        }

    @property
    def at_edge(self) -> str | None:
        """``"largest"`` / ``"smallest"`` when the chosen rate is the grid's largest or smallest
        of several: the best rate may lie beyond the grid. None otherwise."""
        if self.chosen is None or len(self.rates) < 2:
            return None
        if self.chosen == max(self.rates):
            return "largest"
        return "smallest" if self.chosen == min(self.rates) else None


def search_space(rates: Sequence[float], searched: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every rate (ascending) crossed with the searched settings (in their order)."""
    keys = list(searched)
    return [
        {"learning_rate": float(lr), **dict(zip(keys, combo, strict=True))}
        for lr in sorted(rates)
        for combo in itertools.product(*(searched[k] for k in keys))
    ]


def point_name(point: dict[str, Any], seed: int | None = None) -> str:
    """A point as its search run's folder ends: ``0.001[-init<value>...][-s<seed>]``."""
    extra = "".join(
        f"-{k.split('.')[-1]}{short(v)}" for k, v in point.items() if k != "learning_rate"
    )
    return rate_name(point["learning_rate"]) + extra + ("" if seed is None else f"-s{seed}")


def _rank(score: Score, criterion: str) -> tuple[float, ...]:
    acc, loss = score
    neg_loss = -loss if math.isfinite(loss) else -math.inf
    return (neg_loss,) if criterion == "loss" else (acc, neg_loss)


def search_points(
    variant: str,
    method: str,
    rates: Sequence[float],
    searched: dict[str, list[Any]],
    seeds: Sequence[int],
    run: Callable[[dict[str, Any], int], Score],
    criterion: str = "accuracy",
) -> LRSearch:
    """Run every point at every seed with ``run`` and pick the best mean (module docstring).

    Args:
        variant: the variant's name (recorded).
        method: its method (recorded).
        rates: the learning rates.
        searched: dotted key -> values searched together with the rate.
        seeds: the search seeds.
        run: (point, seed) -> (validation accuracy, validation loss); an exception marks
            that run failed.
        criterion: ``"accuracy"`` or ``"loss"``.
    """
    points = search_space(rates, searched)
    seeds = list(seeds)
    curves: dict[int, list[Score | None]] = {s: [] for s in seeds}
    errors: dict[str, str] = {}
    for point in points:
        for seed in seeds:
            try:
                acc, loss = run(point, seed)
                curves[seed].append((float(acc), float(loss)))
            except Exception as exc:  # noqa: BLE001 - one run's failure is not the search's
                curves[seed].append(None)
                errors[point_name(point, seed if len(seeds) > 1 else None)] = failure(exc)
    means: list[Score | None] = []
    for i in range(len(points)):
        got = [curves[s][i] for s in seeds]
        ok = [g for g in got if g is not None]
        means.append(
            None
            if len(ok) < len(got)
            else (sum(g[0] for g in ok) / len(ok), sum(g[1] for g in ok) / len(ok))
        )
    ranked = [
        (_rank(m, criterion), -p["learning_rate"], -i)
        for i, (p, m) in enumerate(zip(points, means, strict=True))
        if m is not None
    ]
    best = -max(ranked)[2] if ranked else None
    rate_list = sorted({p["learning_rate"] for p in points})
    per_rate: list[Score | None] = []
    for lr in rate_list:
        at = [
            (_rank(m, criterion), -i, m)
            for i, (p, m) in enumerate(zip(points, means, strict=True))
            if m is not None and p["learning_rate"] == lr
        ]
        per_rate.append(max(at)[2] if at else None)
    return LRSearch(
        method,
        rate_list,
        per_rate,
        None if best is None else points[best]["learning_rate"],
        errors,
        variant=variant,
        points=points,
        curves=curves,
        chosen_point=None if best is None else points[best],
        criterion=criterion,
        seeds=seeds,
    )


def search_learning_rate(
    method: str,
    rates: Sequence[float],
    run: Callable[[float], Score],
) -> LRSearch:
    """Try every rate with ``run`` (rate -> (validation accuracy, validation loss); an
    exception marks the rate failed) and pick the highest accuracy, ties broken by the lowest
    loss, then the smaller rate."""
    return search_points(method, method, rates, {}, [0], lambda p, _s: run(p["learning_rate"]))


def fixed_point(variant: str, method: str, point: dict[str, Any]) -> LRSearch:
    """A variant with one point (one rate, one value of each searched key): no search."""
    rate = float(point["learning_rate"])
    return LRSearch(method, [rate], [None], rate, variant=variant, points=[dict(point)],
                    chosen_point=dict(point))  # fmt: skip


__all__ = [
    "LRSearch",
    "fixed_point",
    "point_name",
    "search_learning_rate",
    "search_points",
    "search_space",
]
