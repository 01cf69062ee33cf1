"""``lr-ratio``: LoRA's best learning rate at each rank over full fine-tuning's.

Published ("LoRA Without Regret", Thinking Machines 2025; summarised in TRL's docs): LoRA's
optimal learning rate is about 10x full fine-tuning's, nearly independent of the rank when the
update is scaled by alpha / r with a fixed alpha.

How we measure it. The best rate of a variant at one search seed is the vertex of the parabola
in log(lr) through the lowest validation-loss point of its search and that point's two
neighbours (an exact fit of three points; the grid need not be evenly spaced). A lowest point
at the grid's edge leaves the rate undetermined (the curve may still fall beyond it): the
answer says which way to extend ``study.lr_grid``. The ratio LoRA / full is taken per search
seed (both searched on the same validation split and seed), then summarised over the seeds:
the geometric mean with Student's t interval on the log ratio (none with 1 seed) (:func:`~spectune.studies.questions.measures.seed_interval`).

Verdicts. "About 10x" agrees when the ratio's interval lies inside [3x, 30x], a factor of
sqrt(10) ~ 3.2 either side of 10 rounded to the usual half-decade grid step (1e-3, 3e-3, 1e-2):
one grid step is the finest difference a 3-rate search can claim to see, so a ratio within one
step of 10x is "about 10x" and one beyond it is not. It differs when the interval lies wholly
outside that band, and is undetermined otherwise (or with one seed). "Nearly independent of
rank" is the spread max / min of the LoRA variants' best rates (per seed, over ranks): it
agrees when the spread's interval lies inside [1, 3] (within one grid step) and differs when
it lies wholly above 3; Student's t on the logs can reach below 1, which no max / min is, so
the interval is clipped at 1 (it covers the true spread whenever the unclipped one does).

The criterion must be ``loss``: the vertex is read from the validation loss, a smooth function
of the rate, while validation accuracy on a few dozen examples moves in steps of 1/n and ties,
so an accuracy criterion would let the real runs use a rate other than the one the answer
reports.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from spectune.errors import SpectuneError
from spectune.studies.questions import (
    Answer,
    Evidence,
    Finding,
    Question,
    StudyPlan,
    register_question,
)
from spectune.studies.questions.measures import (
    band_verdict,
    check_no_grid,
    method_kind,
    ratio_text,
    seed_interval,
)
from spectune.tuning.methods import get_method

SOURCE = "LoRA Without Regret (Thinking Machines, 2025)"
#: "about 10x": the ratio's interval must lie inside this band (one half-decade grid step)
RATIO_BAND = (3.0, 30.0)
#: "nearly independent of rank": the spread max/min of the best rates across ranks
SPREAD_BAND = (1.0, 3.0)
#: rates a curve needs
MIN_RATES = 3


def best_rate(rates: list[float], losses: list[float | None]) -> tuple[float | None, str]:
    """The best rate of one search curve: the vertex in log(lr) of the parabola through the
    lowest-loss point and its two neighbours.

    Args:
        rates: the learning rates tried (any order).
        losses: the validation loss at each (None or non-finite: that run failed).

    Returns:
        ``(rate, "")``, or ``(None, why)`` when the curve cannot place it: fewer than 3 rates
        finished, or the lowest loss lies at the smallest or the largest rate (``why`` names
        it and which way to extend the grid).
    """
    pts = sorted(
        (float(r), float(v))
        for r, v in zip(rates, losses, strict=True)
        if v is not None and math.isfinite(float(v))
    )
    if len(pts) < MIN_RATES:
        return None, f"only {len(pts)} rate(s) finished; a vertex needs {MIN_RATES}"
    x = np.log([r for r, _ in pts])
    y = np.array([v for _, v in pts])
    i = int(np.argmin(y))
    if i in (0, len(pts) - 1):
        step = pts[1][0] / pts[0][0] if i == 0 else pts[-1][0] / pts[-2][0]
        edge, extend = ("smallest", pts[0][0] / step) if i == 0 else ("largest", pts[-1][0] * step)
        return None, f"lowest loss at the grid's {edge} rate {pts[i][0]:.3g}: add {extend:.3g}"
    a, b, _c = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    vertex = x[i] if a <= 0 else float(np.clip(-b / (2 * a), x[i - 1], x[i + 1]))
    return float(math.exp(vertex)), ""


def curves_by_seed(search: dict[str, Any]) -> dict[int, tuple[list[float], list[float | None]]]:
    """Search seed -> (rates, validation losses) of a variant's search, at the chosen values
    of any other searched setting (``Evidence.searches`` format)."""
    points = search.get("points") or []
    chosen = search.get("chosen") or (points[0] if points else {})
    others = {k: v for k, v in chosen.items() if k != "learning_rate"}
    keep = [
        i
        for i, p in enumerate(points)
        if {k: v for k, v in p.items() if k != "learning_rate"} == others
    ]
    out = {}
    for seed, curve in (search.get("curves") or {}).items():
        rates = [float(points[i]["learning_rate"]) for i in keep]
        losses = [None if curve[i] is None else curve[i][1] for i in keep]
        out[int(seed)] = (rates, losses)
    return out


def _lora_rank(plan: StudyPlan, variant: str) -> int:
    return int(plan.configs[variant].section("lora").r)


class LrRatio(Question):
    """LoRA's best learning rate at each rank over full fine-tuning's (module docstring)."""

    title = "LoRA's best learning rate over full fine-tuning's, per rank"
    source = SOURCE

    def check(self, plan: StudyPlan) -> None:
        check_no_grid(plan, "lr-ratio")
        kinds = {v.name: method_kind(v.method) for v in plan.variants}
        if "lora" not in kinds.values() or "full" not in kinds.values():
            have = ", ".join(f"{v.name} ({v.method})" for v in plan.variants)
            raise SpectuneError(
                "question lr-ratio needs at least one LoRA-family variant (a method that reads "
                f"the lora section, e.g. lora) and a full fine-tuning variant (e.g. method: full); "
                f"study.variants has {have}"
            )
        for name, kind in kinds.items():
            rates = plan.lr_grid.get(name, [])
            if kind is not None and len(rates) < MIN_RATES:
                shown = ", ".join(f"{r:g}" for r in rates) or "none"
                raise SpectuneError(
                    f"study.lr_grid.{name} has {len(rates)} rate(s) ({shown}): a ratio of best "
                    f"rates needs a curve; give lr-ratio at least {MIN_RATES} rates per variant "
                    "(e.g. 1.0e-3, 3.0e-3, 1.0e-2)"
                )
        if plan.criterion != "loss":
            raise SpectuneError(
                f"study.lr_search.criterion is {plan.criterion!r}: lr-ratio reads the best rate "
                "from the validation loss (accuracy on a few dozen examples moves in steps and "
                "ties, so its best rate is ill-defined); set study.lr_search.criterion: loss"
            )

    def answer(self, evidence: Evidence) -> Answer:
        plan = evidence.plan
        kinds = {v.name: method_kind(v.method) for v in plan.variants}
        best: dict[str, dict[int, float | None]] = {}
        table, notes = [], []
        for v in plan.variants:
            if kinds[v.name] is None:
                continue
            best[v.name] = {}
            search = evidence.searches.get(v.name) or {}
            if not search.get("curves"):
                notes.append(f"{v.name}: no search curve (the search did not run or every "
                             "run failed)")  # fmt: skip
            for seed, (rates, losses) in sorted(curves_by_seed(search).items()):
                rate, why = best_rate(rates, losses)
                best[v.name][seed] = rate
                if why:
                    notes.append(f"{v.name}, search seed {seed}: undetermined: {why} to "
                                 f"study.lr_grid.{v.name}")  # fmt: skip
                table.append({
                    "variant": v.name,
                    "method": v.method,
                    "r": _lora_rank(plan, v.name) if kinds[v.name] == "lora" else None,
                    "search seed": seed,
                    "best rate": rate,
                    "lowest-loss rate": _lowest(rates, losses),
                    "chosen rate": (search.get("chosen") or {}).get("learning_rate"),
                })  # fmt: skip
        full = [n for n, k in kinds.items() if k == "full"][0]
        loras = [n for n, k in kinds.items() if k == "lora"]
        findings = [self._ratio(plan, n, best[n], best[full], full) for n in loras]
        findings.append(self._spread(plan, {n: best[n] for n in loras}))
        notes += _scaling_notes(plan, loras)
        return Answer("lr-ratio", self.title, findings, table, notes)

    def _ratio(
        self,
        plan: StudyPlan,
        name: str,
        lora: dict[int, float | None],
        full: dict[int, float | None],
        full_name: str,
    ) -> Finding:
        r = _lora_rank(plan, name)
        seeds = [s for s in sorted(lora) if lora[s] and full.get(s)]
        ratios = [lora[s] / full[s] for s in seeds]  # type: ignore[operator]
        ci = seed_interval(ratios, log=True) if ratios else None
        why = (
            f"best rate per search seed = vertex in log(lr) of the validation-loss parabola "
            f"(search seeds {plan.lr_seeds}); ratio {name} / {full_name} paired by search seed on "
            f"{len(seeds)} of {len(lora)} seed(s); 'about 10x' taken as inside "
            f"[{RATIO_BAND[0]:g}x, {RATIO_BAND[1]:g}x] (one half-decade grid step around 10x)"
        )
        return Finding(
            f"LoRA r={r} ({name}) best rate / full fine-tuning's",
            "about 10x",
            SOURCE,
            ratio_text(ci) if ci else "undetermined (no seed with both best rates: see notes)",
            band_verdict(ci, *RATIO_BAND),
            why,
            {
                "rank": r,
                "seeds": seeds,
                "ratios": ratios,
                "interval": None if ci is None else ci.to_dict(),
            },
        )

    def _spread(self, plan: StudyPlan, best: dict[str, dict[int, float | None]]) -> Finding:
        ranks = {n: _lora_rank(plan, n) for n in best}
        claim = "max / min of LoRA's best rates across ranks"
        if len(set(ranks.values())) < 2:
            return Finding(claim, "nearly independent of rank", SOURCE,
                           "undetermined: one rank only", "undetermined",
                           "give study.variants LoRA at two ranks or more (e.g. lora.r 1, 8, 64)",
                           {"ranks": ranks})  # fmt: skip
        seeds = sorted(set.intersection(*(set(b) for b in best.values())))
        seeds = [s for s in seeds if all(b[s] for b in best.values())]
        spreads = [
            max(b[s] for b in best.values()) / min(b[s] for b in best.values())  # type: ignore[type-var,operator]
            for s in seeds
        ]
        ci = seed_interval(spreads, log=True) if spreads else None
        if ci is not None and ci.low < 1:  # a max / min is at least 1: so is its mean
            ci = dataclasses.replace(ci, low=1.0, how=f"{ci.how}, clipped at 1 (a max / min)")
        return Finding(
            claim,
            "nearly independent of rank (1/r scaling, fixed alpha)",
            SOURCE,
            ratio_text(ci)
            if ci
            else "undetermined (no seed with every rank's best rate: see notes)",
            band_verdict(ci, *SPREAD_BAND),
            f"ranks {sorted(set(ranks.values()))}; spread per search seed over the seeds where "
            f"every rank's best rate is determined ({len(seeds)}); 'nearly independent' taken "
            f"as inside [{SPREAD_BAND[0]:g}x, {SPREAD_BAND[1]:g}x] (within one grid step)",
            {
                "ranks": ranks,
                "seeds": seeds,
                "spreads": spreads,
                "interval": None if ci is None else ci.to_dict(),
            },  # fmt: skip
        )


def _lowest(rates: list[float], losses: list[float | None]) -> float | None:
    ok = [(v, r) for r, v in zip(rates, losses, strict=True) if v is not None and math.isfinite(v)]
    return min(ok)[1] if ok else None


def _scaling_notes(plan: StudyPlan, loras: list[str]) -> list[str]:
    """Where the LoRA variants leave the published setting (1/r scaling, one alpha)."""
    notes = []
    alphas = {n: plan.configs[n].section("lora").lora_alpha for n in loras}
    if len(set(alphas.values())) > 1:
        notes.append(f"the published finding fixes lora_alpha across ranks; here {alphas}")
    rs = [n for n in loras if getattr(get_method(plan.configs[n].method), "rslora", False)]
    if rs:
        notes.append(f"{', '.join(rs)} scale by alpha / sqrt(r), not the published alpha / r")
    return notes


register_question("lr-ratio", LrRatio())

__all__ = ["LrRatio", "best_rate", "curves_by_seed"]
