"""What a study's runs say together: per-candidate summaries with intervals, paired
differences, the Pareto front, the effect of each varied parameter, correlations of the
spectral columns with the outcomes, per-layer alpha correlations, the advice, and the notes
that say it in words (:func:`summarize_study`).

The study's statistics are :mod:`spectune.results.stats`'s; the advice is
:mod:`spectune.studies.advice`'s. This module reads the run folders (``predictions.jsonl``,
``spectra/details.csv``) and returns data: the figures are :mod:`spectune.report.plots.study`'s
and the study (:mod:`spectune.studies.study`) writes the files.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spectune.results.stats import (
    Correlation,
    bootstrap_runs,
    pareto_front,
    spearman,
    variance_explained,
)
from spectune.studies.advice import Advice, Candidate, advise, paired_gain, read_predictions
from spectune.studies.runner import RunOutcome

#: spectral columns correlated with the outcomes (results.csv names)
SPECTRAL_COLUMNS = ("adapter_alpha", "base_alpha", "frac_alpha_below_2", "rank90",
                    "stable_rank", "log_norm", "num_intruders")  # fmt: skip
#: outcomes the spectral columns are correlated with
OUTCOMES = ("accuracy_gain", "forgetting")
#: metrics of the hyperparameter ranking (the LoRA parameter study's five measures)
EFFECT_METRICS = ("train_loss", "accuracy_after", "forgetting", "train_seconds", "ms_per_token")


@dataclass
class MethodSummary:
    """One method (at one grid point) over its seeds."""

    name: str
    method: str
    learning_rate: float | None
    runs: int
    failed: int
    accuracy_gain: dict[str, Any] | None
    accuracy_after: dict[str, Any] | None
    forgetting: dict[str, Any] | None
    train_seconds: float | None
    ms_per_token: float | None
    peak_rss_gib: float | None
    trainable: int | None
    pareto: bool = False
    #: the candidate's variant (several variants can share a method)
    variant: str | None = None


def _fitted_rows(run_dir: Path) -> list[tuple[float, dict[str, str]]]:
    """(alpha, row) of every layer of a run's ``spectra/details.csv`` whose fit succeeded with a
    finite alpha; empty without spectra."""
    path = run_dir / "spectra" / "details.csv"
    if not path.is_file():
        return []
    fitted = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("status", "success") != "success":
                continue
            try:
                a = float(row.get("alpha", "nan"))
            except ValueError:
                continue
            if math.isfinite(a):
                fitted.append((a, row))
    return fitted


def _frac_below_2(run_dir: Path) -> float | None:
    alphas = [a for a, _row in _fitted_rows(run_dir)]
    return sum(a < 2 for a in alphas) / len(alphas) if alphas else None


def _layer_alphas(run_dir: Path) -> list[tuple[float, float]]:
    """(base alpha, update alpha) of every layer of a run's spectra whose two fits succeeded."""
    pairs = []
    for a, row in _fitted_rows(run_dir):
        if row.get("base_status") != "success":
            continue
        try:
            b = float(row.get("base_alpha", "nan"))
        except ValueError:
            continue
        if math.isfinite(b):
            pairs.append((b, a))
    return pairs


def layer_alpha_correlation(run_dir: Path) -> Correlation | None:
    """Does the base layer's alpha predict the alpha of what training changed in that layer
    (the WeightWatcher PEFT blog's question)? Spearman over the run's layers, with a
    bootstrap interval over layers; None when the run has no spectra with the base's."""
    pairs = _layer_alphas(run_dir)
    if not pairs:
        return None
    base, tuned = zip(*pairs, strict=True)
    return spearman(base, tuned, names=("base_alpha", "adapter_alpha"), unit="layer")


def study_row(outcome: RunOutcome, run_dir: Path) -> dict[str, Any]:
    """A run's row of results.csv with the study's columns (gain, forgetting, spectra)."""
    row = {**outcome.row(), "name": outcome.name}  # the folder's name under runs/
    m = outcome.metrics
    if m is not None:
        s = m.spectra
        row.update(
            {
                "accuracy_gain": m.learning.accuracy_gain,
                "forgetting": None
                if m.forgetting.perplexity_ratio is None
                else m.forgetting.perplexity_ratio - 1,
                "frac_alpha_below_2": _frac_below_2(run_dir),
                "rank90": None if s is None else s.rank90,
                "stable_rank": None if s is None else s.stable_rank,
                "log_norm": None if s is None else s.log_norm,
            }
        )
    return row


def layer_alpha_points(
    folder: Path, rows: list[dict[str, Any]]
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, str]]:
    """``(variant -> (base alpha, update alpha) of each layer, variant -> run)`` of the first
    finished run of each variant (the method's name in studies before variants) that has
    spectra with the base's (for
    :func:`spectune.report.plots.study.layer_alpha_figure`)."""
    firsts: dict[str, str] = {}
    for r in rows:
        if r.get("status") == "complete":
            firsts.setdefault(r.get("variant") or r["method"], r["name"])
    points = {m: _layer_alphas(folder / "runs" / n) for m, n in firsts.items()}
    return {m: p for m, p in points.items() if p}, firsts


def _mean(rows: list[dict[str, Any]], col: str) -> float | None:
    v = [float(r[col]) for r in rows if r.get(col) is not None]
    return float(np.mean(v)) if v else None


def _accuracy_after(folder: Path, ok: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The accuracy after tuning over the finished runs ``ok`` and their questions
    (bootstrap), from ``predictions.jsonl``; None without predictions."""
    afters = []
    for r in ok:
        path = folder / "runs" / r["name"] / "predictions.jsonl"
        if path.is_file():
            afters.append(
                [
                    float(bool(json.loads(x).get("correct_after")))
                    for x in path.read_text().splitlines()
                    if x.strip()
                ]
            )
    return bootstrap_runs(afters).to_dict() if afters else None


def _candidate(
    folder: Path, cname: str, names: list[str], by_name: dict[str, dict[str, Any]]
) -> tuple[Candidate, MethodSummary]:
    """One candidate (its runs over the seeds) and its summary."""
    ok = [by_name[n] for n in names if by_name[n].get("status") == "complete"]
    scores = {}
    for r in ok:
        p = read_predictions(folder / "runs" / r["name"])
        if p is not None:
            scores[int(r["seed"])] = p
    method = by_name[names[0]]["method"]
    rss, trainable = _mean(ok, "peak_rss_mib"), _mean(ok, "trainable")
    cand = Candidate(
        cname,
        method,
        scores,
        [float(r["forgetting"]) for r in ok if r.get("forgetting") is not None],
        _mean(ok, "train_seconds"),
        _mean(ok, "ms_per_token"),
        None if rss is None else rss / 1024,
        None if trainable is None else int(trainable),
    )
    gain, fgt = cand.gain(), cand.forgetting_interval()
    summary = MethodSummary(
        cname,
        method,
        by_name[names[0]].get("learning_rate"),
        len(ok),
        len(names) - len(ok),
        None if gain is None else gain.to_dict(),
        _accuracy_after(folder, ok) if scores else None,
        None if fgt is None else fgt.to_dict(),
        cand.train_seconds,
        cand.ms_per_token,
        cand.peak_rss_gib,
        cand.trainable,
        variant=by_name[names[0]].get("variant") or method,
    )
    return cand, summary


def _layer_correlations(
    folder: Path, by_name: dict[str, dict[str, Any]], groups: dict[str, list[str]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per finished run, the Spearman correlation of its layers' base alpha with the update's
    alpha, and a note per candidate."""
    layer_corrs, layer_notes = [], []
    for cname, names in groups.items():
        per_seed = []
        for n in names:
            r = by_name[n]
            if r.get("status") != "complete":
                continue
            c = layer_alpha_correlation(folder / "runs" / n)
            if c is not None:
                layer_corrs.append(
                    c.to_dict()
                    | {
                        "candidate": cname,
                        "method": r["method"],
                        "variant": r.get("variant") or r["method"],
                        "run": n,
                        "seed": r.get("seed"),
                        "text": c.text(),
                    }
                )
                per_seed.append(c)
        if per_seed:
            rhos = [c.rho for c in per_seed if c.rho is not None]
            mean = (
                f"mean {sum(rhos) / len(rhos):+.2f} over {len(rhos)} runs; "
                if len(rhos) > 1
                else ""
            )
            layer_notes.append(
                f"{cname}: base layer alpha vs the update's alpha over its {per_seed[0].n} "
                f"layers (Spearman, per run): {mean}" + "; ".join(c.text() for c in per_seed)
            )
    return layer_corrs, layer_notes


def _interval_text(ci: dict[str, Any] | None, unit: str) -> str:
    if ci is None:
        return "-"
    return f"{100 * ci['estimate']:+.1f}{unit} [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}]"


def _notes(
    summaries: list[MethodSummary],
    diffs: list[dict[str, Any]],
    effects: dict[str, list[dict[str, Any]]],
    corrs: list[dict[str, Any]],
    layer_notes: list[str],
    advice: Advice | None,
) -> list[str]:
    """The study's findings in words, one note each."""
    notes = []
    for s in summaries:
        gtxt = _interval_text(s.accuracy_gain, " points")
        ftxt = _interval_text(s.forgetting, "%")
        lr = "-" if s.learning_rate is None else f"{float(s.learning_rate):.3g}"
        front = ", Pareto front" if s.pareto else ""
        notes.append(
            f"{s.name} (lr {lr}, {s.runs} seed(s){front}): "
            f"accuracy gain {gtxt}; perplexity change {ftxt}"
        )
    for d in diffs:
        notes.append(f"{d['a']} - {d['b']}: {_interval_text(d, ' points')}: {d['verdict']}")
    for metric, es in effects.items():
        top = [e for e in es if e["eta_squared"] is not None]
        if top:
            notes.append(
                f"{metric}: "
                + ", ".join(f"{e['parameter']} eta^2={e['eta_squared']:.2f}" for e in top)
            )
    measured = [c for c in corrs if c["n"] > 0]
    for c in measured:
        notes.append(f"Spearman {c['x']} vs {c['y']}: {c['text']}")
    if corrs and len(measured) < len(corrs):
        absent = sorted({c["x"] for c in corrs if c["n"] == 0}, key=SPECTRAL_COLUMNS.index)
        notes.append(
            f"Spearman of {', '.join(absent)} against the outcomes: not measured (no finished "
            "run has these columns; eval.spectra / eval.intruders turn them on)"
        )
    notes += layer_notes
    if advice is not None:
        notes.append(advice.text().replace("\n\n", "\n"))
    return notes


def summarize_study(
    folder: Path, rows: list[dict[str, Any]], groups: dict[str, list[str]], varied: list[str]
) -> tuple[list, list, dict, list, Any, list[str], list]:
    """Summaries, paired differences, effects, correlations, advice, notes and per-layer
    correlations (base alpha against the update's alpha, one per run) of a study.

    Args:
        folder: the study folder (``runs/<name>/predictions.jsonl`` are read).
        rows: results.csv rows (:func:`study_row`) of every run.
        groups: candidate name -> its runs' names.
        varied: the parameters that take several values (for the ranking).
    """
    by_name = {r["name"]: r for r in rows}
    done = [r for r in rows if r.get("status") == "complete"]
    candidates, summaries = [], []
    for cname, names in groups.items():
        cand, summary = _candidate(folder, cname, names, by_name)
        if cand.scores:
            candidates.append(cand)
        summaries.append(summary)
    front = pareto_front(
        [None if s.accuracy_gain is None else s.accuracy_gain["estimate"] for s in summaries],
        [None if s.forgetting is None else s.forgetting["estimate"] for s in summaries],
    )
    for s, f in zip(summaries, front, strict=True):
        s.pareto = f
    diffs = []
    for a, b in itertools.combinations(candidates, 2):
        d = paired_gain(a, b)
        if d is not None:
            diffs.append(d.to_dict())
    effects = (
        {
            m: [e.to_dict() for e in variance_explained(done, varied, m)]
            for m in (*EFFECT_METRICS, "accuracy_gain")
        }
        if varied
        else {}
    )
    corrs = []
    for x in SPECTRAL_COLUMNS:
        for y in OUTCOMES:
            c = spearman([r.get(x) for r in done], [r.get(y) for r in done], names=(x, y))
            corrs.append(c.to_dict() | {"text": c.text()})
    layer_corrs, layer_notes = _layer_correlations(folder, by_name, groups)
    advice = advise(candidates) if candidates else None
    notes = _notes(summaries, diffs, effects, corrs, layer_notes, advice)
    return (
        [asdict(s) for s in summaries],
        diffs,
        effects,
        corrs,
        None if advice is None else advice.to_dict(),
        notes,
        layer_corrs,
    )


__all__ = [
    "EFFECT_METRICS",
    "OUTCOMES",
    "SPECTRAL_COLUMNS",
    "MethodSummary",
    "layer_alpha_correlation",
    "layer_alpha_points",
    "study_row",
    "summarize_study",
]
