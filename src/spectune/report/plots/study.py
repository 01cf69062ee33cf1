"""Figures of many runs: a comparison folder's (sweep, demo, study, search), a study's own
and a search's.

Functions that take rows of ``results.csv``, a study's summaries and learning-rate searches,
or points read by the study, and return matplotlib Figures (name -> Figure). Nothing here
reads or writes files: :func:`spectune.report.files.save_figures` puts them on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from spectune.report.plots import runs as T

#: the metric bars of a comparison: (results.csv column, axis label, file name)
COMPARISON_BARS = (
    ("accuracy_after", "held-out accuracy after training", "accuracy.png"),
    ("perplexity_change", "perplexity change on general text (forgetting)", "forgetting.png"),
    ("train_loss", "final training loss", "train_loss.png"),
    ("train_seconds", "train wall time (s)", "train_time.png"),
    ("ms_per_token", "inference latency (ms per generated token)", "latency.png"),
)


def comparison_figures(
    rows: Sequence[Mapping[str, Any]], logs: Mapping[str, Sequence[Mapping[str, float]]]
) -> dict[str, Figure]:
    """The comparison's figures: the loss curves of every run with a log, and, when a run
    finished, the metric bars (:data:`COMPARISON_BARS`) and the trade-off."""
    done = [r for r in rows if r.get("status") == "complete"]
    figures = {"loss_curves.png": T.loss_curve(logs, title="Training loss per run")}
    if done:
        for col, label, fname in COMPARISON_BARS:
            figures[fname] = T.metric_bars(done, col, label=label)
        figures["tradeoff.png"] = T.tradeoff(done)
    return figures


def learning_vs_forgetting(summaries: Sequence[Mapping[str, Any]]) -> Figure | None:
    """Accuracy gain against forgetting of each candidate with its 95% intervals, the Pareto
    front in red; None when no candidate has both."""
    pts = [s for s in summaries if s["accuracy_gain"] and s["forgetting"]]
    if not pts:
        return None
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for s in pts:
        g, f = s["accuracy_gain"], s["forgetting"]
        x, y = 100 * f["estimate"], 100 * g["estimate"]
        ax.errorbar(
            x,
            y,
            xerr=[[x - 100 * f["low"]], [100 * f["high"] - x]],
            yerr=[[y - 100 * g["low"]], [100 * g["high"] - y]],
            fmt="o",
            capsize=3,
            color="C3" if s["pareto"] else "C0",
        )
        ax.annotate(s["name"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = sorted(
        (100 * s["forgetting"]["estimate"], 100 * s["accuracy_gain"]["estimate"])
        for s in pts
        if s["pareto"]
    )
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "--", color="C3", label="Pareto front")
        ax.legend()
    ax.set_xlabel("perplexity increase on general text (%, forgetting)")
    ax.set_ylabel("held-out accuracy gain (points)")
    ax.set_title("Learning vs forgetting (95% intervals; red: Pareto front)")
    return fig


def learning_rate_curves(searches: Sequence[Any]) -> Figure | None:
    """Validation accuracy against the learning rate of every search that tried several
    rates (:class:`~spectune.studies.study.LRSearch`); None when none did."""
    multi = [s for s in searches if len(s.rates) > 1]
    if not multi:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for s in multi:
        xs = [r for r, v in zip(s.rates, s.scores, strict=True) if v is not None]
        ys = [100 * v[0] for v in s.scores if v is not None]
        name = getattr(s, "name", s.method)  # the variant's
        ax.plot(xs, ys, "o-", label=f"{name} (chosen {s.chosen:g})" if s.chosen else name)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Learning-rate search (validation split)")
    ax.legend(fontsize=8)
    return fig


def _variant(row: Mapping[str, Any]) -> str:
    """A run's variant (its method's name in studies and sweeps without variants)."""
    return row.get("variant") or row["method"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def parameter_curves(done: Sequence[Mapping[str, Any]], parameter: str) -> Figure:
    """Accuracy gain, forgetting and train time against one varied parameter, a line per
    variant (means over the finished runs ``done``)."""
    values = sorted({r.get(parameter) for r in done if r.get(parameter) is not None}, key=str)
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, 3)
    panels = (
        ("accuracy_gain", "accuracy gain"),
        ("forgetting", "perplexity increase"),
        ("train_seconds", "train s"),
    )
    for ax, (col, label) in zip(axes, panels, strict=True):
        for method in sorted({_variant(r) for r in done}):
            ys = []
            for v in values:
                vals = [
                    float(r[col])
                    for r in done
                    if r.get(parameter) == v and _variant(r) == method and r.get(col) is not None
                ]
                ys.append(_mean(vals))
            ax.plot([str(v) for v in values], ys, "o-", label=method)
        ax.set_xlabel(parameter)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def alpha_vs_outcomes(done: Sequence[Mapping[str, Any]], outcomes: Sequence[str]) -> Figure | None:
    """Each outcome against the adapter's mean alpha, a colour per variant; None below two
    runs with an adapter alpha."""
    if sum(r.get("adapter_alpha") is not None for r in done) < 2:
        return None
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    for ax, y in zip(axes, outcomes, strict=True):
        for method in sorted({_variant(r) for r in done}):
            pts = [
                (r["adapter_alpha"], r[y])
                for r in done
                if _variant(r) == method
                and r.get("adapter_alpha") is not None
                and r.get(y) is not None
            ]
            if pts:
                ax.scatter(*zip(*pts, strict=True), label=method, s=16)
        ax.set_xlabel("adapter alpha (mean)")
        ax.set_ylabel(y)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def study_figures(
    summaries: Sequence[Mapping[str, Any]],
    searches: Sequence[Any],
    rows: Sequence[Mapping[str, Any]],
    varied: Sequence[str],
    outcomes: Sequence[str],
) -> tuple[dict[str, Figure], list[str]]:
    """The study's figures (name -> Figure) and messages about curves skipped.

    Args:
        summaries: the candidates' summaries (``study.json``'s).
        searches: the learning-rate searches.
        rows: results.csv rows of every run.
        varied: the grid's parameters with several values (a curve each).
        outcomes: the two outcome columns plotted against the adapter's alpha.
    """
    figs: dict[str, Figure] = {}
    skipped: list[str] = []
    fig = learning_vs_forgetting(summaries)
    if fig is not None:
        figs["pareto.png"] = fig
    fig = learning_rate_curves(searches)
    if fig is not None:
        figs["lr_search.png"] = fig
    else:
        skipped.append("learning-rate curves skipped: every lr_grid has one value")
    done = [r for r in rows if r.get("status") == "complete"]
    for p in varied:
        figs[f"param_{p.replace('.', '_')}.png"] = parameter_curves(done, p)
    if not varied:
        skipped.append(
            "metric-vs-parameter curves skipped: the study grid gives every parameter one value"
        )
    fig = alpha_vs_outcomes(done, outcomes)
    if fig is not None:
        figs["alpha_vs_outcomes.png"] = fig
    return figs, skipped


def search_figures(
    complete: Sequence[Any], names: Sequence[str], directions: Sequence[str]
) -> dict[str, Figure]:
    """A search's figure: ``pareto.png``, the first two objectives of its complete trials
    (:class:`~spectune.studies.search.TrialRecord`), the Pareto set marked; none with one
    objective or no complete trial."""
    if len(names) < 2 or not complete:
        return {}
    fig = T.objective_scatter(
        [r.values[:2] for r in complete],
        [r.run for r in complete],
        [r.pareto for r in complete],
        names[:2],
        directions[:2],
    )
    return {"pareto.png": fig}


def layer_alpha_figure(
    points: Mapping[str, Sequence[tuple[float, float]]], runs: Mapping[str, str]
) -> Figure | None:
    """Base layer alpha against the update's alpha, layer by layer (the blog's scatter).

    Args:
        points: method -> (base alpha, update alpha) of each layer of its first finished run.
        runs: method -> the name of that run (in the legend).

    Returns:
        The figure; None without points.
    """
    if not points:
        return None
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for m, p in points.items():
        ax.scatter(*zip(*p, strict=True), s=8, alpha=0.6, label=f"{m} ({runs[m]})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(2, color="grey", lw=0.8, ls="--")
    ax.axvline(6, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("base layer alpha")
    ax.set_ylabel("alpha of the update (adapter)")
    ax.set_title("Does base alpha predict adapter alpha? (one point per layer)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = [
    "COMPARISON_BARS",
    "alpha_vs_outcomes",
    "comparison_figures",
    "layer_alpha_figure",
    "learning_rate_curves",
    "learning_vs_forgetting",
    "parameter_curves",
    "search_figures",
    "study_figures",
]
