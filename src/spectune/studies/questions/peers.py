"""``peers``: the strongest methods at one trainable budget, learning against forgetting.

Published: PEFT-Arena (arXiv 2605.28819) finds OFT "typically defining the most favorable
Pareto frontier"; peft's method comparison (MetaMathQA, Llama-3.2-3B) has SHiRA, GraLoRA,
OFT and LoRA on the MLP only among the best accuracy for their forgetting; the LoRA
initialisation papers (PiSSA, LoRA-GA, EVA, CorDA) each report beating the default init.

What is measured: every variant's accuracy gain and forgetting (perplexity ratio - 1 on
general text; ``forgetting_ce`` in the table) with the study's intervals, the Pareto front of
(higher gain, lower forgetting) over the variants' means, and for every pair the paired
differences: accuracy gain on the same questions (bootstrap over seeds and questions), and
forgetting paired by seed (Student t over the seeds' differences: with two or three seeds a
bootstrap interval is the range of the differences, and three of one sign would "resolve" a
quarter of the time by chance). A variant off the front
is **dominated** only when a variant that beats it on both means is also better beyond noise
in one of them (its paired interval excludes 0); otherwise it is "off the front within noise".

Verdicts: OFT agrees with PEFT-Arena when it is on the front, differs when it is dominated,
undetermined when it is off the front within noise (or absent). The peft comparison's
methods present (SHiRA, OFT, GraLoRA, LoRA on the MLP only) agree when all are on the front.
LoRA's init: the search's best non-default init against the default, per search seed on the
search's criterion (validation loss, or accuracy), Student-t over the search seeds.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from spectune.errors import SpectuneError
from spectune.results.stats import Difference, paired_difference, pareto_front
from spectune.studies.questions import (
    Answer,
    Evidence,
    Finding,
    Question,
    StudyPlan,
    register_question,
)
from spectune.studies.questions.measures import (
    complete_runs,
    fmt_interval,
    method_kind,
    number,
    seed_interval,
)

#: the budget-matched variants' trainable counts may differ by at most this fraction
BUDGET_TOLERANCE = 0.10
#: the searched setting that picks LoRA's initialisation, and its default values
INIT_KEY = "lora.init"
DEFAULT_INITS = ("default", True, "true")
#: MLP matrices (a LoRA variant targeting only these is "LoRA on MLP only")
MLP = ("gate_proj", "up_proj", "down_proj")
ARENA = "PEFT-Arena (arXiv 2605.28819)"
PEFT_BENCH = "peft method comparison (MetaMathQA, Llama-3.2-3B)"
INIT_PAPERS = "PiSSA, LoRA-GA, EVA, CorDA papers"


class Peers(Question):
    """The peers question (module docstring)."""

    title = "The strongest peers at one budget: learning against forgetting, the Pareto front"
    source = f"{ARENA}; {PEFT_BENCH}"

    def check(self, plan: StudyPlan) -> None:
        if len(plan.variants) < 3:
            raise SpectuneError(
                "peers compares at least 3 variants (a front needs rivals), got "
                f"{len(plan.variants)} ({', '.join(v.name for v in plan.variants)}); list more "
                "in study.variants"
            )
        if not plan.match_budget:
            raise SpectuneError(
                "peers compares methods at one trainable budget: set study.match_budget: true"
            )
        known = {
            v.name: plan.trainable.get(v.name)
            for v in plan.variants
            if method_kind(v.method) != "full" and plan.trainable.get(v.name)
        }
        worst = _off_budget(known)
        if worst is not None:
            name, off, budget = worst
            raise SpectuneError(
                f"peers needs every budget-matched variant within {BUDGET_TOLERANCE:.0%} of the "
                f"budget ({budget:,.0f} trainable parameters, the variants' median), but {name} "
                f"trains {known[name]:,} ({off:+.0%}); change its overrides (its method's "
                "budget setting) until study.match_budget can match it"
            )

    def answer(self, evidence: Evidence) -> Answer:
        plan, runs = evidence.plan, complete_runs(evidence.rows)
        names = [v.name for v in plan.variants if runs.get(v.name)]
        summary = _summaries(evidence, runs)
        gain = [_est(summary.get(n), "accuracy_gain") for n in names]
        fgt = [_est(summary.get(n), "forgetting") for n in names]
        front = dict(zip(names, pareto_front(gain, fgt), strict=True))
        scores = {n: _scores(evidence.folder, runs[n]) for n in names}
        diffs = _differences(names, runs, scores)
        means = {n: (g, f) for n, g, f in zip(names, gain, fgt, strict=True)}
        status = _status(names, means, front, diffs)
        methods = {v.name: v.method for v in plan.variants}
        table = [
            _row(n, methods[n], runs[n], summary.get(n), evidence.searches.get(n), front, status)
            | {"resolved": _resolved_column(n, names, diffs)}
            for n in names
        ]
        findings = [
            _oft_finding(names, methods, front, status),
            _peft_finding(names, plan, front, status),
            _init_finding(plan, evidence.searches),
        ]
        notes = [  # the two spectral ways of choosing what to train
            f"{a} - {b} (spectral rivals): "
            + (", ".join(f"{w} {t}" for w, t in _resolved_texts(d)) or "within noise in both")
            for (a, b), d in diffs.items()
            if {methods[a], methods[b]} == {"frog", "spectrum"}
        ]
        notes += _budget_notes(table, methods)
        notes += [
            f"{n} left out: no finished run"
            for n in (v.name for v in plan.variants)
            if not runs.get(n)
        ]
        figures = {
            "front": [n for n in names if front[n]],
            "differences": {
                f"{a} - {b}": {k: None if v is None else v.to_dict() for k, v in d.items()}
                for (a, b), d in diffs.items()
            },
        }
        for f in findings[:2]:
            f.figures.update(figures)
        return Answer("peers", self.title, findings, table, notes)


def _off_budget(counts: dict[str, int]) -> tuple[str, float, float] | None:
    """``(variant, its relative distance, budget)`` of the variant furthest from the budget
    when it is further than :data:`BUDGET_TOLERANCE`, else None. The budget is the counts'
    median: the reference's count, which most variants match exactly; DoRA's magnitudes and
    OFT's block sizes leave some a few percent off it, on either side."""
    if len(counts) < 2:
        return None
    budget = float(np.median(list(counts.values())))
    off = {n: c / budget - 1 for n, c in counts.items()}
    worst = max(off, key=lambda n: abs(off[n]))
    return (worst, off[worst], budget) if abs(off[worst]) > BUDGET_TOLERANCE else None


def _budget_notes(table: list[dict[str, Any]], methods: dict[str, str]) -> list[str]:
    """A note when a run's measured trainable count (full fine-tuning excepted) is further
    from the budget than :data:`BUDGET_TOLERANCE` (the plan's counts may have been unknown)."""
    counts = {
        r["variant"]: r["trainable"]
        for r in table
        if method_kind(methods[r["variant"]]) != "full" and r["trainable"]
    }
    worst = _off_budget(counts)
    if worst is None:
        return []
    name, off, budget = worst
    return [
        f"budgets not matched: {name} trained {counts[name]:,} parameters, {off:+.0%} from the "
        f"budget ({budget:,.0f}, the median) beyond {BUDGET_TOLERANCE:.0%}; read the front "
        "with that"
    ]


def _summaries(evidence: Evidence, runs: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Variant -> the study's summary of its candidate (peers has no grid: one each)."""
    by_name = {s["name"]: s for s in evidence.summaries}
    out = {}
    for variant, rows in runs.items():
        cand = rows[0].get("candidate") or variant
        if cand in by_name:
            out[variant] = by_name[cand]
        elif variant in by_name:
            out[variant] = by_name[variant]
    return out


def _est(summary: dict[str, Any] | None, key: str) -> float | None:
    ci = None if summary is None else summary.get(key)
    return None if ci is None else ci["estimate"]


def _scores(folder: Path, rows: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    """Seed -> per-question accuracy gain of that seed's run (``predictions.jsonl``)."""
    from spectune.studies.advice import read_predictions  # lazy: it imports torch

    out = {}
    for r in rows:
        p = read_predictions(folder / "runs" / r["name"])
        if p is not None:
            out[int(r.get("seed") or 0)] = p
    return out


def _per_seed(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    out = {}
    for r in rows:
        x = number(r.get(key))
        if x is not None:
            out[int(r.get("seed") or 0)] = x
    return out


def _differences(
    names: list[str], runs: dict[str, list[dict]], scores: dict[str, dict[int, np.ndarray]]
) -> dict[tuple[str, str], dict[str, Difference | None]]:
    """(a, b) -> paired ``gain`` and ``forgetting`` differences a - b (None: no shared seed
    with the same questions, or fewer than 2 shared seeds for forgetting)."""
    out = {}
    for a, b in itertools.combinations(names, 2):
        sa, sb = scores[a], scores[b]
        seeds = [s for s in sorted(sa) if s in sb and sa[s].shape == sb[s].shape]
        gain = (
            paired_difference([sa[s] for s in seeds], [sb[s] for s in seeds], names=(a, b))
            if seeds
            else None
        )
        fa, fb = _per_seed(runs[a], "forgetting"), _per_seed(runs[b], "forgetting")
        shared = sorted(set(fa) & set(fb))
        fgt = None
        if len(shared) >= 2:  # Student t: a bootstrap of 2-3 values is the range of them
            fgt = Difference(a, b, seed_interval([fa[s] - fb[s] for s in shared]))
        out[(a, b)] = {"gain": gain, "forgetting": fgt}
    return out


def _pair(
    diffs: dict[tuple[str, str], dict[str, Difference | None]], a: str, b: str
) -> tuple[dict[str, Difference | None], int]:
    """The differences of a pair as stored (either order) and the side ``a`` is on."""
    return (diffs[(a, b)], 1) if (a, b) in diffs else (diffs[(b, a)], -1)


def _better(d: dict[str, Difference | None], sign: int) -> bool:
    """Whether the side ``sign`` (+1: a, -1: b) is better beyond noise in gain or forgetting."""
    g, f = d["gain"], d["forgetting"]
    return bool(
        (g is not None and g.resolved and sign * g.interval.estimate > 0)
        or (f is not None and f.resolved and sign * f.interval.estimate < 0)
    )


def _status(
    names: list[str],
    means: dict[str, tuple[float | None, float | None]],
    front: dict[str, bool],
    diffs: dict[tuple[str, str], dict[str, Difference | None]],
) -> dict[str, str]:
    """Variant -> "front", "dominated by X" (resolved) or "off the front within noise"."""
    out = {}
    for b in names:
        if front[b]:
            out[b] = "front"
            continue
        gb, fb = means[b]
        beaters = [
            a
            for a in names
            if a != b
            and None not in (gb, fb, *means[a])
            and means[a][0] >= gb
            and means[a][1] <= fb
            and means[a] != means[b]
        ]
        resolved = [a for a in beaters if _better(*_pair(diffs, a, b))]
        if resolved:
            out[b] = "dominated by " + ", ".join(resolved)
        elif beaters:
            out[b] = "off the front within noise (below " + ", ".join(beaters) + " on means)"
        else:
            out[b] = "no gain or forgetting measured"
    return out


def _resolved_texts(d: dict[str, Difference | None], sign: int = 1) -> list[tuple[str, str]]:
    """(what, "+5.0 [+1.2, +9.1] points") of the resolved differences of a pair, as a - b
    (``sign`` -1: as b - a)."""
    out = []
    for key, what, unit in (
        ("gain", "accuracy gain", " points"),
        ("forgetting", "forgetting", "%"),
    ):
        diff = d[key]
        if diff is not None and diff.resolved:
            ci = diff.interval
            lo, est, hi = sorted((sign * ci.low, sign * ci.estimate, sign * ci.high))
            out.append((what, f"{100 * est:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{unit}"))
    return out


def _resolved_column(
    name: str, names: list[str], diffs: dict[tuple[str, str], dict[str, Difference | None]]
) -> str:
    """The resolved differences of ``name`` against every other variant (``name`` - other)."""
    parts = []
    for other in names:
        if other != name:
            texts = _resolved_texts(*_pair(diffs, name, other))
            if texts:
                parts.append(f"vs {other}: " + ", ".join(f"{w} {t}" for w, t in texts))
    return "; ".join(parts) or "none"


def _row(
    name: str,
    method: str,
    rows: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    search: dict[str, Any] | None,
    front: dict[str, bool],
    status: dict[str, str],
) -> dict[str, Any]:
    """The table's row of one variant."""
    chosen = (search or {}).get("chosen") or {"learning_rate": number(rows[0].get("learning_rate"))}
    trainable = [x for x in (number(r.get("trainable")) for r in rows) if x is not None]
    gain = None if summary is None else summary.get("accuracy_gain")
    fgt = None if summary is None else summary.get("forgetting")
    ce = seed_interval(list(_per_seed(rows, "forgetting_ce").values()))
    return {
        "variant": name,
        "method": method,
        "chosen": ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in chosen.items()
            if v is not None
        ),
        "trainable": int(np.mean(trainable)) if trainable else None,
        "runs": len(rows),
        "accuracy_gain": "-" if gain is None else _ci_text(gain, " points"),
        "forgetting": "-" if fgt is None else _ci_text(fgt, "%"),
        "forgetting_ce": fmt_interval(ce, digits=3),
        "front": "yes" if front[name] else "no",
        "status": status[name],
    }


def _ci_text(ci: dict[str, Any], unit: str) -> str:
    return f"{100 * ci['estimate']:+.1f}{unit} [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}]"


def _front_verdict(on: list[str], status: dict[str, str]) -> str:
    if all(status[n] == "front" for n in on):
        return "agrees"
    if any(status[n].startswith("dominated") for n in on):
        return "differs"
    return "undetermined"


def _oft_finding(
    names: list[str], methods: dict[str, str], front: dict[str, bool], status: dict[str, str]
) -> Finding:
    claim, published = "OFT on the Pareto front", "OFT defines the most favourable front"
    oft = [n for n in names if methods[n] == "oft"]
    if not oft:
        return Finding(
            claim, published, ARENA, "-", "undetermined", "the study has no finished OFT variant"
        )
    ours = "; ".join(f"{n}: {status[n]}" for n in oft)
    on = [n for n in names if front[n]]
    why = (
        f"front over the means: {', '.join(on)}; on the front is what we test (necessary "
        "for 'most favourable', not sufficient: front members trade gain for forgetting)"
    )
    return Finding(claim, published, ARENA, ours, _front_verdict(oft, status), why)


def _mlp_only(plan: StudyPlan, name: str) -> bool:
    config = plan.configs.get(name)
    targets = getattr(config, "target_modules", None)
    if not isinstance(targets, list) or not targets:
        return False
    return "lora" in (getattr(config, "sections", None) or {}) and all(t in MLP for t in targets)


def _peft_finding(
    names: list[str], plan: StudyPlan, front: dict[str, bool], status: dict[str, str]
) -> Finding:
    claim = "SHiRA, GraLoRA, OFT, MLP-only LoRA among the best for their forgetting"
    published = "on the accuracy-forgetting front"
    methods = {v.name: v.method for v in plan.variants}
    picked = [n for n in names if methods[n] in ("shira", "gralora", "oft") or _mlp_only(plan, n)]
    if not picked:
        return Finding(
            claim,
            published,
            PEFT_BENCH,
            "-",
            "undetermined",
            "the study has none of SHiRA, GraLoRA, OFT, MLP-only LoRA",
        )
    ours = "; ".join(f"{n}: {status[n]}" for n in picked)
    why = (
        "on our front = no variant beats it on both means; peft's comparison ran a 3B model "
        "on MetaMathQA, ours a 135M model on a toy task mix for a few dozen steps"
    )
    return Finding(claim, published, PEFT_BENCH, ours, _front_verdict(picked, status), why)


def _is_default(value: Any) -> bool:
    return value in DEFAULT_INITS or value is None


def _init_finding(plan: StudyPlan, searches: dict[str, dict[str, Any]]) -> Finding:
    """Does the searched LoRA init beat the default one on the search's own criterion?"""
    claim, published = "LoRA's best init", "a data- or SVD-driven init beats the default"
    variant = next((v.name for v in plan.variants if INIT_KEY in v.search), None)
    search = searches.get(variant) if variant else None
    if variant is None:
        return Finding(
            claim,
            published,
            INIT_PAPERS,
            "-",
            "undetermined",
            f"no variant searched {INIT_KEY} (give the LoRA variant search: "
            f"{{{INIT_KEY}: [default, pissa, ...]}})",
        )
    if not search or not search.get("points"):
        return Finding(
            claim,
            published,
            INIT_PAPERS,
            "-",
            "undetermined",
            f"{variant} searched {INIT_KEY} but the study recorded no search point",
        )
    chosen = search.get("chosen") or {}
    loss = search.get("criterion", "loss") == "loss"
    best = _best_per_init(search, loss)
    ours = (
        f"{variant} chose {INIT_KEY}={chosen.get(INIT_KEY, 'default')}"
        if chosen
        else f"every search point of {variant} failed"
    )
    defaults = [k for k in best if _is_default(k)]
    others = [k for k in best if not _is_default(k)]
    if not defaults or not others:
        return Finding(
            claim,
            published,
            INIT_PAPERS,
            ours,
            "undetermined",
            "the search needs the default init and another one, each with a finished point",
        )
    top = min(others, key=lambda k: best[k][0]) if loss else max(others, key=lambda k: best[k][0])
    d, o = best[defaults[0]][1], best[top][1]
    seeds = sorted(set(d) & set(o))
    diff = [(d[s] - o[s]) if loss else (o[s] - d[s]) for s in seeds]
    ci = seed_interval(diff)
    what = "validation loss" if loss else "validation accuracy"
    ours += f"; best other ({top}) - default on {what}, better > 0: {fmt_interval(ci, digits=3)}"
    ours += "" if ci is None else f" ({ci.how})"
    verdict = "undetermined"
    if ci is not None and ci.runs >= 2:
        verdict = "agrees" if ci.low > 0 else "differs" if ci.high < 0 else "undetermined"
    why = (
        f"each init at its best searched rate; paired by search seed ({len(seeds)}), "
        f"Student t; the real runs used {chosen.get(INIT_KEY, 'default')} only, so the "
        "held-out questions do not compare inits"
    )
    return Finding(
        claim,
        published,
        INIT_PAPERS,
        ours,
        verdict,
        why,
        {"best": {str(k): v[0] for k, v in best.items()}, "chosen": chosen},
    )


def _best_per_init(search: dict[str, Any], loss: bool) -> dict[Any, tuple[float, dict[int, float]]]:
    """Init -> (mean criterion value, seed -> value) at its best point (over rates)."""
    idx = 1 if loss else 0
    best: dict[Any, tuple[float, dict[int, float]]] = {}
    for i, point in enumerate(search["points"]):
        per_seed = {}
        for seed, curve in (search.get("curves") or {}).items():
            value = curve[i] if i < len(curve) else None
            if value is not None and number(value[idx]) is not None:
                per_seed[int(seed)] = float(value[idx])
        if not per_seed:
            continue
        mean = float(np.mean(list(per_seed.values())))
        init = point.get(INIT_KEY, "default")
        old = best.get(init)
        if old is None or (mean < old[0] if loss else mean > old[0]):
            best[init] = (mean, per_seed)
    return best


register_question("peers", Peers())
