"""``update-rank``: how many directions does each method's update use (Biderman et al. 2024,
"LoRA Learns Less and Forgets Less")?

Published: the rank that holds 90% of the energy of full fine-tuning's update Delta W (the sum
of its squared singular values) is 10-100x a typical LoRA rank, and LoRA and full fine-tuning
lie on one learning-forgetting curve.

What is measured, per finished run and matrix type (q_proj ... down_proj, from the layer
names): ``rank90``, read per layer from the run's ``spectra/details.csv``. The run computed it
(:func:`spectune.watch.metrics.rank_at_energy`) from the exact eigenvalues of Delta W^T
Delta W: W - W_base for full fine-tuning (and any method analyzed as a delta), s B A for the
LoRA family (its low-rank route; DoRA's magnitudes are left out). Nothing is recomputed
here. Each type's rank90 is the mean over its layers, also as a fraction of the matrix's full
rank min(in, out) (``M`` of the row).

- **rank90 against LoRA's r**: full fine-tuning's rank90 (all typed layers of a run) over the
  reference LoRA variant's ``lora.r``; agrees when its interval over seeds lies inside the
  band [10, 100], differs when it lies outside it, undetermined when it straddles an edge or
  when 10 r exceeds every matrix's full rank (the band cannot be reached at this size).
- **full's rank90 over LoRA's, per type**: paired by seed, the geometric mean of the ratios
  with a Student-t interval on their logs; agrees when every type's interval is above 1.
- **one curve**: full fine-tuning's variants (one per learning rate) are the curve: their mean
  (forgetting, accuracy gain) points, sorted by forgetting and joined by straight lines. A
  LoRA-family variant whose mean forgetting falls inside that range gets a residual: its mean
  gain minus the curve's gain at its forgetting, with a percentile bootstrap interval
  (runs resampled within every variant, the curve rebuilt each time). Off the curve
  (differs) when the interval excludes 0; on it (agrees) when the interval lies within
  +-:data:`CURVE_MARGIN`; otherwise undetermined. Not extrapolated beyond full's range, and
  the base model (0, 0) is not a node: the curve between it and full's gentlest run is
  unknown. With one full rate there is no curve: undetermined, said so.

The findings compare the first full variant and the first LoRA-family variant of the config
(the variant with a ``lora:`` section); the table holds every variant.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
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
    complete_runs,
    fmt_interval,
    method_kind,
    number,
    seed_interval,
)

#: the matrix types, in the table's order (other names follow, sorted)
MATRIX_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: the published band of full fine-tuning's rank90 over a typical LoRA rank
BAND = (10.0, 100.0)
#: a LoRA variant lies on full's curve when its residual's interval is within +- this gain
CURVE_MARGIN = 0.05
SOURCE = "Biderman et al. 2024, LoRA Learns Less and Forgets Less"
N_BOOT = 2000


def lora_rank(config: Any) -> int | None:
    """``lora.r`` of a variant's resolved config, or None when its method reads no ``lora:``
    section (not of the LoRA family)."""
    section = (getattr(config, "sections", None) or {}).get("lora")
    return None if section is None else int(section.r)


def matrix_type(longname: str) -> str:
    """The matrix type of a spectra row: the module's last name part (``model.layers.3.mlp.
    down_proj.lora_BA`` -> ``down_proj``)."""
    parts = [p for p in longname.split(".") if p and not p.startswith("lora_") and p != "weight"]
    return parts[-1] if parts else longname


def layer_ranks(run_dir: Path) -> dict[str, list[tuple[float, int]]]:
    """Matrix type -> (rank90, full rank min(in, out)) of each layer of a run, from its
    ``spectra/details.csv`` (embeddings, the output head and rows without a rank90 left out);
    empty without the file."""
    path = run_dir / "spectra" / "details.csv"
    if not path.is_file():
        return {}
    out: dict[str, list[tuple[float, int]]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            r90, m = number(row.get("rank90")), number(row.get("M"))
            if r90 is None or m is None or row.get("layer_type") == "embedding":
                continue
            kind = matrix_type(row.get("longname") or row.get("name") or "")
            if kind == "lm_head":
                continue
            out.setdefault(kind, []).append((r90, int(m)))
    return out


def _types(found: set[str]) -> list[str]:
    return [t for t in MATRIX_TYPES if t in found] + sorted(found - set(MATRIX_TYPES))


class UpdateRank(Question):
    """The update-rank question (module docstring)."""

    title = "Rank of the update: full fine-tuning against LoRA (rank holding 90% of Delta W)"
    source = SOURCE

    def check(self, plan: StudyPlan) -> None:
        fulls = [v.name for v in plan.variants if method_kind(v.method) == "full"]
        loras = [v.name for v in plan.variants if lora_rank(plan.configs.get(v.name)) is not None]
        have = ", ".join(f"{v.name} ({v.method})" for v in plan.variants)
        if not fulls or not loras:
            raise SpectuneError(
                "update-rank compares full fine-tuning's update with a LoRA-family one: "
                "study.variants needs a variant with method full and one of the LoRA family "
                f"(lora, rslora, dora, pissa...), got {have}"
            )
        off = [n for n in fulls + loras if not plan.configs[n].eval.spectra]
        if off:
            raise SpectuneError(
                f"update-rank reads each run's rank90 from spectra/details.csv, but eval.spectra "
                f"is off for {', '.join(off)}; set eval.spectra: true"
            )

    def answer(self, evidence: Evidence) -> Answer:
        plan, runs = evidence.plan, complete_runs(evidence.rows)
        per_run = _per_run(evidence.folder, runs)
        all_fulls = [v.name for v in plan.variants if method_kind(v.method) == "full"]
        all_loras = [v.name for v in plan.variants if lora_rank(plan.configs.get(v.name))]
        fulls = [n for n in all_fulls if per_run.get(n)]
        loras = [n for n in all_loras if per_run.get(n)]
        notes = [
            f"{n}: no finished run has rank90 per layer in spectra/details.csv; left out"
            for n in (v.name for v in plan.variants)
            if runs.get(n) and not per_run.get(n)
        ]
        found = {t for rs in per_run.values() for ranks in rs.values() for t in ranks}
        types = _types(found)
        ref_full = fulls[0] if fulls else None
        ref_lora = loras[0] if loras else None
        r = lora_rank(plan.configs.get(ref_lora)) if ref_lora else None
        table = _table(plan, per_run, types, ref_lora)
        findings = [
            _band_finding(per_run, ref_full, ref_lora, r),
            _type_finding(per_run, types, ref_full, ref_lora),
            _curve_finding(runs, all_fulls, all_loras),
        ]
        return Answer("update-rank", self.title, findings, table, notes)


def _per_run(
    folder: Path, runs: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[int, dict[str, list[tuple[float, int]]]]]:
    """Variant -> seed -> matrix type -> its layers' (rank90, full rank), finished runs with
    ranks only."""
    out: dict[str, dict[int, dict[str, list[tuple[float, int]]]]] = {}
    for variant, rows in runs.items():
        for row in rows:
            ranks = layer_ranks(folder / "runs" / row["name"])
            if ranks:
                out.setdefault(variant, {})[int(row.get("seed") or 0)] = ranks
    return out


def _type_means(ranks: dict[str, list[tuple[float, int]]], kind: str | None) -> float | None:
    """Mean rank90 over a run's layers of one type (None: over every typed layer)."""
    vals = [r for t, layers in ranks.items() if kind in (None, t) for r, _m in layers]
    return float(np.mean(vals)) if vals else None


def _paired_ratios(
    per_run: dict[str, dict[int, dict[str, list[tuple[float, int]]]]],
    full: str,
    lora: str,
    kind: str | None,
) -> list[float]:
    """Per seed both ran: full's mean rank90 over LoRA's (of one type, or all)."""
    out = []
    for seed in sorted(set(per_run[full]) & set(per_run[lora])):
        a, b = _type_means(per_run[full][seed], kind), _type_means(per_run[lora][seed], kind)
        if a is not None and b:
            out.append(a / b)
    return out


def _table(plan: StudyPlan, per_run: dict, types: list[str], ref_lora: str | None) -> list[dict]:
    """One row per variant and matrix type."""
    rows = []
    for v in plan.variants:
        seeds = per_run.get(v.name)
        if not seeds:
            continue
        for kind in types:
            vals = {s: _type_means(seeds[s], kind) for s in sorted(seeds)}
            vals = {s: x for s, x in vals.items() if x is not None}
            if not vals:
                continue
            full_rank = max(m for s in seeds for _r, m in seeds[s].get(kind, []))
            ci = seed_interval(list(vals.values()))
            top = min(full_rank, lora_rank(plan.configs.get(v.name)) or full_rank)
            ci.low, ci.high = max(ci.low, 0.0), min(ci.high, top)  # a rank's own bounds
            ratio = None
            if ref_lora and v.name != ref_lora:
                ratios = _paired_ratios(per_run, v.name, ref_lora, kind)
                ratio = seed_interval(ratios, log=True) if ratios else None
            rows.append(
                {
                    "variant": v.name,
                    "method": v.method,
                    "lora_r": lora_rank(plan.configs.get(v.name)),
                    "type": kind,
                    "layers": len(next(iter(seeds.values())).get(kind, [])),
                    "full_rank": full_rank,
                    "rank90": fmt_interval(ci),
                    "rank90_mean": ci.estimate,
                    "fraction": ci.estimate / full_rank,
                    "per_run": " / ".join(f"s{s}: {x:.1f}" for s, x in vals.items()),
                    "over_lora": fmt_interval(ratio, unit="x"),
                }
            )
    return rows


def _unanswered(
    claim: str,
    published: str,
    why: str = "needs a finished full run and a finished LoRA-family run with spectra",
) -> Finding:
    """The finding when the runs cannot answer ``claim`` (``why``)."""
    return Finding(claim, published, SOURCE, "-", "undetermined", why)


def _band_finding(per_run: dict, full: str | None, lora: str | None, r: int | None) -> Finding:
    """Full fine-tuning's rank90 (all typed layers) over the reference LoRA's r."""
    claim = "full fine-tuning's rank90 / LoRA's r"
    published = f"{BAND[0]:g}-{BAND[1]:g}x"
    if full is None or lora is None or not r:
        return _unanswered(claim, published)
    means = [_type_means(ranks, None) for ranks in per_run[full].values()]
    ci = seed_interval([m / r for m in means if m is not None])
    max_rank = max(m for ranks in per_run[full].values() for ls in ranks.values() for _, m in ls)
    ours = f"{fmt_interval(ci, unit='x')} ({full} over {lora}'s r={r}; {ci.how})"
    reach = max_rank / r
    if reach < BAND[0]:
        verdict = "undetermined"
        why = (
            f"at r={r} the band starts at rank {BAND[0] * r:g}, above every matrix's full "
            f"rank here (at most {max_rank}): the ratio cannot exceed {reach:.1f}x"
        )
    elif ci.runs < 2:
        verdict, why = "undetermined", "one seed: no interval over seeds"
    else:
        verdict = band_verdict(ci, *BAND)
        why = (
            f"band [{BAND[0]:g}, {BAND[1]:g}]x; the ratio can reach at most {reach:.0f}x "
            f"(full rank {max_rank} / r); mean rank90 of Delta W = W - W_base over every "
            "q/k/v/o/gate/up/down layer"
        )
    why += "; the paper fine-tuned Llama-2-7B on billions of tokens, a study runs a few dozen steps"
    return Finding(
        claim,
        published,
        SOURCE,
        ours,
        verdict,
        why,
        {"ratio": ci.to_dict(), "r": r, "max_full_rank": max_rank},
    )


def _type_finding(per_run: dict, types: list[str], full: str | None, lora: str | None) -> Finding:
    """Full's rank90 over LoRA's in every matrix type."""
    claim = "full's rank90 above LoRA's in every matrix type"
    published = "full fine-tuning's far above LoRA's"
    if full is None or lora is None:
        return _unanswered(claim, published)
    cis = {}
    for kind in types:
        ratios = _paired_ratios(per_run, full, lora, kind)
        if ratios:
            cis[kind] = seed_interval(ratios, log=True)
    if not cis:
        return _unanswered(
            claim, published, f"{full} and {lora} share no seed with ranks of one matrix type"
        )
    ours = "; ".join(f"{k} {fmt_interval(c, unit='x')}" for k, c in cis.items())
    n = min(c.runs for c in cis.values())
    if n < 2:
        verdict = "undetermined"
    elif all(c.low > 1 for c in cis.values()):
        verdict = "agrees"
    elif any(c.high < 1 for c in cis.values()):
        verdict = "differs"
    else:
        verdict = "undetermined"
    why = (
        f"{full} over {lora}, paired by seed ({n} seed(s)); geometric mean with a Student-t "
        "interval on the logs; LoRA's rank90 is at most its r by construction"
    )
    return Finding(
        claim, published, SOURCE, ours, verdict, why, {k: c.to_dict() for k, c in cis.items()}
    )


def _points(rows: list[dict[str, Any]]) -> np.ndarray:
    """(forgetting, gain) of the runs that have both; shape (n, 2)."""
    pts = [(number(r.get("forgetting")), number(r.get("accuracy_gain"))) for r in rows]
    return np.array([p for p in pts if None not in p], dtype=float).reshape(-1, 2)


def _residual(curve: list[np.ndarray], pts: np.ndarray) -> float | None:
    """Mean gain of ``pts`` minus the curve (nodes: each full variant's mean point) at their
    mean forgetting; None outside the curve's range."""
    nodes = np.array(sorted(tuple(c.mean(axis=0)) for c in curve))
    f, g = pts.mean(axis=0)
    if not nodes[0, 0] <= f <= nodes[-1, 0]:
        return None
    return float(g - np.interp(f, nodes[:, 0], nodes[:, 1]))


def _bootstrap_residual(curve: list[np.ndarray], pts: np.ndarray, seed: int = 0) -> list[float]:
    """Residuals of runs resampled within every variant (None outside the range dropped)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(N_BOOT):
        c = [x[rng.integers(0, len(x), len(x))] for x in curve]
        res = _residual(c, pts[rng.integers(0, len(pts), len(pts))])
        if res is not None:
            out.append(res)
    return out


def _curve_finding(runs: dict[str, list[dict]], fulls: list[str], loras: list[str]) -> Finding:
    """Do the LoRA-family variants lie on full fine-tuning's learning-forgetting curve?"""
    claim = "LoRA on full fine-tuning's learning-forgetting curve"
    published = "one curve for both"
    everything = {v: _points(rs).tolist() for v, rs in runs.items()}
    curve = [p for p in (_points(runs.get(v, [])) for v in fulls) if len(p)]
    figures: dict[str, Any] = {"points": everything, "margin": CURVE_MARGIN}
    nodes = sorted({round(float(c[:, 0].mean()), 12) for c in curve})
    if len(nodes) < 2:
        return Finding(
            claim,
            published,
            SOURCE,
            "-",
            "undetermined",
            f"full fine-tuning ran at {len(nodes)} distinct forgetting level(s) (one "
            "variant per rate): no curve to compare with; give study.variants full "
            "variants at two rates or more",
            figures,
        )
    parts, verdicts = [], []
    for lora in loras:
        pts = _points(runs.get(lora, []))
        if not len(pts):
            continue
        res = _residual(curve, pts)
        if res is None:
            parts.append(
                f"{lora}: forgetting {pts[:, 0].mean():+.3f} outside full's range "
                f"[{nodes[0]:+.3f}, {nodes[-1]:+.3f}] (not extrapolated)"
            )
            verdicts.append("undetermined")
            continue
        boot = _bootstrap_residual(curve, pts)
        low, high = np.percentile(boot, [2.5, 97.5]) if boot else (math.nan, math.nan)
        figures[lora] = {"residual": res, "low": float(low), "high": float(high)}
        parts.append(
            f"{lora}: {100 * res:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] points from the curve"
        )
        if low > 0 or high < 0:
            verdicts.append("differs")
        elif -CURVE_MARGIN <= low and high <= CURVE_MARGIN:
            verdicts.append("agrees")
        else:
            verdicts.append("undetermined")
    if not verdicts:
        return Finding(
            claim,
            published,
            SOURCE,
            "-",
            "undetermined",
            "no finished LoRA-family run with accuracy gain and forgetting",
            figures,
        )
    verdict = (
        "differs"
        if "differs" in verdicts
        else "agrees"
        if set(verdicts) == {"agrees"}
        else "undetermined"
    )
    why = (
        f"full's curve: {len(curve)} variant(s) at forgetting {', '.join(f'{n:+.3f}' for n in nodes)} "
        "(perplexity ratio - 1), joined by straight lines; residual = LoRA's mean gain minus "
        "the curve's at LoRA's mean forgetting, 95% bootstrap over runs; on the curve when "
        f"within +-{100 * CURVE_MARGIN:g} points, off it when the interval excludes 0"
    )
    return Finding(claim, published, SOURCE, "; ".join(parts), verdict, why, figures)


register_question("update-rank", UpdateRank())
