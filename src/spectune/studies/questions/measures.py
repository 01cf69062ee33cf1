"""What the preset questions measure from a finished study, shared by them.

- :func:`seed_interval`: a mean over seeds with Student's t interval (none with 1 seed);
  ``log=True`` for ratios (the geometric mean, the interval of the mean log, exponentiated).
- :func:`complete_runs`, :func:`number`, :func:`fmt_interval`: a study's finished runs by
  variant, a number from a results cell, an interval as text.
- :func:`band_verdict` / :func:`side_verdict`: a verdict from an interval against a published
  band or side; one seed is always ``undetermined``.
- :func:`variant_runs`, :func:`paired_accuracy`, :func:`loss_ratio`: the finished runs of a
  variant by seed, and the two paired comparisons the questions make (accuracy gain a - b on
  the same questions; held-out loss a / b per seed).
- :func:`method_kind`: ``"lora"`` (the LoRA family: the methods that read the ``lora``
  section), ``"full"`` or None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from spectune.errors import SpectuneError
from spectune.results.stats import Interval
from spectune.studies.advice import Candidate, paired_gain, read_predictions
from spectune.studies.questions import Evidence, StudyPlan
from spectune.tuning.methods import get_method

#: how :func:`seed_interval` says it has no interval
ONE_SEED = "one seed (no interval)"


def seed_interval(
    values: Sequence[float | None], *, log: bool = False, level: float = 0.95
) -> Interval | None:
    """Mean of ``values`` (one per seed) with Student's t interval.

    With two or three seeds a percentile bootstrap of the mean, or the range of the values,
    is far narrower than a 95% interval; t is honest and wide (with 2 seeds its half-width is
    12.7 standard errors). One value gives a point (``how`` is :data:`ONE_SEED`).

    Args:
        values: one value per seed (None and non-finite ones are left out).
        log: average the logs and exponentiate (a geometric mean, for ratios).
        level: the interval's coverage.

    Returns:
        The :class:`~spectune.results.stats.Interval`; None without a value.

    Raises:
        ValueError: a value <= 0 with ``log``.
    """
    x = np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))])
    if x.size == 0:
        return None
    if log:
        if np.any(x <= 0):
            raise ValueError(f"seed_interval(log=True) needs positive values, got {list(x)}")
        x = np.log(x)
    back = np.exp if log else (lambda v: v)
    mean = float(x.mean())
    if x.size == 1:
        low = high = mean
        how = ONE_SEED
    else:
        from scipy.stats import t  # lazy: scipy is slow to import

        half = float(t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
        low, high = mean - half, mean + half
        how = f"Student t over {x.size} seeds" + (" (on the logs)" if log else "")
    return Interval(float(back(mean)), float(back(low)), float(back(high)), level,
                    int(x.size), int(x.size), how)  # fmt: skip


def learning_columns(evidence: Evidence, name: str) -> dict[str, str]:
    """A variant's accuracy gain (its summary's interval, in points) and held-out loss after
    training (Student's t over its seeds), as the questions' tables show them."""
    summary = summary_of(evidence, name) or {}
    loss = list(per_seed(evidence, name, "heldout_loss_after").values())
    ci = seed_interval(loss) if loss else None
    return {
        "accuracy gain (points)": points(summary.get("accuracy_gain")),
        "held-out loss": "-"
        if ci is None
        else f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}] ({ci.how})",
    }


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


def has_interval(ci: Interval | None) -> bool:
    """Whether ``ci`` is an interval (not None, not one seed's value)."""
    return ci is not None and ci.how != ONE_SEED


def band_verdict(ci: Interval | None, low: float, high: float) -> str:
    """``agrees`` when ``ci`` lies inside [low, high], ``differs`` when it lies wholly outside,
    else (or with one seed, or no interval) ``undetermined``."""
    if not has_interval(ci):
        return "undetermined"
    if low <= ci.low and ci.high <= high:
        return "agrees"
    if ci.high < low or ci.low > high:
        return "differs"
    return "undetermined"


def side_verdict(ci: Interval | None, threshold: float, published: str) -> str:
    """The published claim is "above ``threshold``" (``published="above"``) or "below" it:
    ``agrees`` when ``ci`` lies wholly on that side, ``differs`` when wholly on the other,
    else ``undetermined``."""
    if not has_interval(ci):
        return "undetermined"
    above, below = ci.low > threshold, ci.high < threshold
    if not (above or below):
        return "undetermined"
    return "agrees" if above == (published == "above") else "differs"


def method_kind(method: str) -> str | None:
    """``"lora"`` for the LoRA family (it reads the ``lora`` section), ``"full"`` for full
    fine-tuning (a method that trains every parameter), None for any other method."""
    if get_method(method).trains_everything:
        return "full"
    return "lora" if "lora" in (get_method(method).sections or {}) else None


def check_no_grid(plan: StudyPlan, question: str) -> None:
    """Refuse ``study.grid``: these questions compare one candidate per variant."""
    varied = [k for k, values in plan.grid.items() if len(values) > 1]
    if varied:
        keys = ", ".join(varied)
        raise SpectuneError(
            f"study.grid ({keys}) makes several candidates per variant, but question "
            f"{question!r} compares variants one to one; move each setting into study.variants"
        )


def variant_runs(evidence: Evidence, variant: str) -> dict[int, dict[str, Any]]:
    """The finished real runs of ``variant`` (``Evidence.rows`` with status complete), by seed."""
    return {
        int(r["seed"]): r
        for r in evidence.rows
        if r.get("variant") == variant and r.get("status") == "complete"
    }


def per_seed(evidence: Evidence, variant: str, column: str) -> dict[int, float]:
    """``column`` of each finished run of ``variant`` that measured it, by seed."""
    out = {}
    for seed, row in variant_runs(evidence, variant).items():
        v = row.get(column)
        if v is not None and v != "" and math.isfinite(float(v)):
            out[seed] = float(v)
    return out


def summary_of(evidence: Evidence, variant: str) -> dict[str, Any] | None:
    """The study's summary of ``variant``'s candidate (``Evidence.summaries``), or None."""
    names = {r.get("candidate") for r in evidence.rows if r.get("variant") == variant}
    names.add(variant)
    return next((s for s in evidence.summaries if s.get("name") in names), None)


def question_scores(evidence: Evidence, variant: str) -> dict[int, np.ndarray]:
    """Per seed, the per-question accuracy gain of ``variant``'s finished runs
    (``predictions.jsonl``; runs without it left out)."""
    out = {}
    for seed, row in variant_runs(evidence, variant).items():
        p = read_predictions(evidence.folder / "runs" / str(row["name"]))
        if p is not None:
            out[seed] = p
    return out


def paired_accuracy(evidence: Evidence, a: str, b: str) -> Interval | None:
    """Accuracy gain of ``a`` minus ``b``: a paired bootstrap over the same held-out questions
    (and seeds) from the runs' ``predictions.jsonl``; without predictions, the per-seed
    differences of ``accuracy_gain`` (:func:`seed_interval`); None when they share no seed."""
    sa, sb = question_scores(evidence, a), question_scores(evidence, b)
    diff = paired_gain(Candidate(a, a, sa), Candidate(b, b, sb)) if sa and sb else None
    if diff is not None:
        return diff.interval
    ga, gb = per_seed(evidence, a, "accuracy_gain"), per_seed(evidence, b, "accuracy_gain")
    common = sorted(set(ga) & set(gb))
    return seed_interval([ga[s] - gb[s] for s in common]) if common else None


def loss_ratio(evidence: Evidence, a: str, b: str) -> Interval | None:
    """Held-out loss of ``a`` over ``b``'s, paired by seed (geometric mean and interval over
    the seeds both finished); None when they share no seed."""
    la, lb = (
        per_seed(evidence, a, "heldout_loss_after"),
        per_seed(evidence, b, "heldout_loss_after"),
    )
    common = [s for s in sorted(set(la) & set(lb)) if la[s] > 0 and lb[s] > 0]
    return seed_interval([la[s] / lb[s] for s in common], log=True) if common else None


def points(ci: Interval | dict[str, Any] | None, *, signed: bool = True) -> str:
    """An accuracy interval (fractions) in points: ``+5.2 [+1.0, +9.4]``; ``-`` for None."""
    if ci is None:
        return "-"
    d = ci if isinstance(ci, dict) else ci.to_dict()
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(100 * d['estimate'])} [{f.format(100 * d['low'])}, " + (
        f"{f.format(100 * d['high'])}]"
    )


def ratio_text(ci: Interval | None, unit: str = "x") -> str:
    """A ratio interval: ``1.08x [1.01x, 1.16x] (t-interval over 3 seeds)``."""
    if ci is None:
        return "-"
    if not has_interval(ci):
        return f"{ci.estimate:.3g}{unit} ({ci.how})"
    return f"{ci.estimate:.3g}{unit} [{ci.low:.3g}{unit}, {ci.high:.3g}{unit}] ({ci.how})"


__all__ = [
    "ONE_SEED",
    "band_verdict",
    "learning_columns",
    "complete_runs",
    "fmt_interval",
    "number",
    "check_no_grid",
    "has_interval",
    "loss_ratio",
    "method_kind",
    "paired_accuracy",
    "per_seed",
    "points",
    "question_scores",
    "ratio_text",
    "seed_interval",
    "side_verdict",
    "summary_of",
    "variant_runs",
]
