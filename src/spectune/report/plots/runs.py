"""Figures of fine-tuning runs, one or many: functions that take results and return
matplotlib Figures (training and validation curves, spectra during training, learning against
forgetting, a sweep's bars and trade-off, a search's objectives).

``runs`` are :class:`~spectune.results.metrics.RunMetrics` (``metrics.json``, typed);
``rows`` are flat rows of ``results.csv`` (:meth:`RunMetrics.row`). Nothing here writes files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from spectune.results.metrics import RunMetrics, SpectraPoint, Validation

_COLORS = [
    "#4c72b0",
    "#dd8452",
    "#55a868",
    "#c44e52",
    "#8172b3",
    "#937860",
    "#da8bc3",
    "#8c8c8c",
    "#ccb974",
    "#64b5cd",
]


def loss_curve(
    logs: Mapping[str, Sequence[Mapping[str, float]]], title: str = "Training loss"
) -> Figure:
    """Training loss against optimizer step, one line per run.

    Args:
        logs: run name -> rows of ``train_log.csv`` (``step`` and ``loss``).
    """
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    drawn = 0
    for i, (name, rows) in enumerate(logs.items()):
        pts = [(r["step"], r["loss"]) for r in rows if "step" in r and "loss" in r]
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        ax.plot(
            x,
            y,
            marker="o" if len(pts) < 30 else None,
            ms=3,
            lw=1.4,
            color=_COLORS[i % len(_COLORS)],
            label=name,
        )
        drawn += 1
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean token NLL)")
    ax.set_title(title)
    if drawn:
        ax.legend(fontsize=8, ncol=2 if drawn > 6 else 1)
    else:
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def validation_curve(
    log: Sequence[Mapping[str, float]],
    validation: Validation,
    title: str = "Training and validation loss",
) -> Figure:
    """Training loss (``train_log.csv`` rows) and validation loss against optimizer step;
    the best validation step is marked, and the step the adapter holds when it is another
    (early stopping without restoring the best)."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    pts = [(r["step"], r["loss"]) for r in log if "step" in r and "loss" in r]
    if pts:
        ax.plot(*zip(*pts, strict=True), lw=1.2, color="#8c8c8c", label="training loss")
    curve = validation.curve
    ax.plot(
        [p.step for p in curve],
        [p.loss for p in curve],
        marker="o",
        ms=3.5,
        lw=1.6,
        color=_COLORS[0],
        label=f"validation loss ({validation.n_examples} examples)",
    )
    if validation.best_step is not None:
        ax.axvline(
            validation.best_step,
            color=_COLORS[2],
            ls="--",
            lw=1,
            label=f"best: step {validation.best_step} ({validation.best_loss:.3f})",
        )
    if validation.stopped_early and curve:
        ax.axvline(
            curve[-1].step,
            color=_COLORS[3],
            ls=":",
            lw=1,
            label=f"early stop: step {curve[-1].step}",
        )
    kept = (
        "best step's (restored)"
        if validation.restored_best
        else f"step {validation.adapter_step}'s"
    )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (the objective's)")
    ax.set_title(f"{title}; saved adapter: the {kept}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def spectra_vs_validation(
    points: Sequence[SpectraPoint],
    validation: Validation | None,
    title: str = "Adapter spectra during training",
) -> Figure:
    """The adapter's mean alpha and fraction of layers with alpha < 2 against optimizer step,
    under the validation loss; beside them, mean alpha against the validation loss at the
    steps that have both (each point labelled with its step)."""
    fig = Figure(figsize=(11.0, 6.4))
    grid = fig.add_gridspec(3, 2, width_ratios=(1.5, 1.0))
    ax_loss = fig.add_subplot(grid[0, 0])
    ax_alpha = fig.add_subplot(grid[1, 0], sharex=ax_loss)
    ax_frac = fig.add_subplot(grid[2, 0], sharex=ax_loss)
    ax_xy = fig.add_subplot(grid[:, 1])
    steps = [p.step for p in points]
    curve = [] if validation is None else validation.curve
    if curve:
        ax_loss.plot(
            [p.step for p in curve], [p.loss for p in curve], marker="o", ms=3, color=_COLORS[0]
        )
    else:
        ax_loss.text(
            0.5,
            0.5,
            "no validation split (data.n_validation)",
            ha="center",
            va="center",
            transform=ax_loss.transAxes,
            fontsize=8,
        )
    ax_loss.set_ylabel("validation loss", fontsize=8)
    alphas = [np.nan if p.mean_alpha is None else p.mean_alpha for p in points]
    fracs = [np.nan if p.frac_alpha_below_2 is None else p.frac_alpha_below_2 for p in points]
    ax_alpha.plot(steps, alphas, marker="o", ms=3, color=_COLORS[1])
    ax_alpha.axhline(2.0, color="gray", ls="--", lw=0.8)
    ax_alpha.set_ylabel("mean alpha", fontsize=8)
    ax_frac.plot(steps, fracs, marker="o", ms=3, color=_COLORS[3])
    ax_frac.set_ylim(-0.05, 1.05)
    ax_frac.set_ylabel("layers alpha < 2", fontsize=8)
    ax_frac.set_xlabel("optimizer step")
    for ax in (ax_loss, ax_alpha, ax_frac):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    by_step = {p.step: p.loss for p in curve}
    pairs = [
        (by_step[p.step], p.mean_alpha, p.step)
        for p in points
        if p.step in by_step and p.mean_alpha is not None
    ]
    if pairs:
        xs, ys, labels = zip(*pairs, strict=True)
        ax_xy.plot(xs, ys, color="#bbbbbb", lw=0.8, zorder=1)
        sc = ax_xy.scatter(xs, ys, c=labels, cmap="viridis", s=28, zorder=2)
        for x, y, step in pairs:
            ax_xy.annotate(str(step), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        fig.colorbar(sc, ax=ax_xy, label="optimizer step")
    else:
        ax_xy.text(
            0.5,
            0.5,
            "no step with both a validation loss\nand the spectra",
            ha="center",
            va="center",
            transform=ax_xy.transAxes,
            fontsize=8,
        )
    ax_xy.axhline(2.0, color="gray", ls="--", lw=0.8)
    ax_xy.set_xlabel("validation loss")
    ax_xy.set_ylabel("mean adapter alpha")
    ax_xy.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def learning_forgetting(
    runs: Sequence[RunMetrics], title: str = "Learning vs forgetting"
) -> Figure:
    """Two panels: held-out accuracy and general-text perplexity, before and after each run
    (:class:`~spectune.results.metrics.RunMetrics`).

    The "before" bar is the base model (the same for every run judged against it).
    """
    names = [m.run.name for m in runs]
    acc0 = [m.learning.accuracy_before for m in runs]
    acc1 = [m.learning.accuracy_after for m in runs]
    ppl0 = [m.forgetting.perplexity_before for m in runs]
    ppl1 = [m.forgetting.perplexity_after for m in runs]
    fig = Figure(figsize=(max(7.0, 1.3 * len(runs) + 4), 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(len(runs))
    w = 0.38
    for ax, b, a, label in (
        (ax1, acc0, acc1, "held-out exact-match accuracy"),
        (ax2, ppl0, ppl1, "perplexity on general text"),
    ):
        bv = [np.nan if v is None else 100 * v if ax is ax1 else v for v in b]
        av = [np.nan if v is None else 100 * v if ax is ax1 else v for v in a]
        ax.bar(x - w / 2, bv, w, color="#bbbbbb", label="before (base)")
        bars = ax.bar(x + w / 2, av, w, color=[_COLORS[i % len(_COLORS)] for i in x], label="after")
        for rect, v in zip(bars, av, strict=True):
            if np.isfinite(v):
                ax.annotate(
                    f"{v:.1f}" if ax is ax1 else f"{v:.2f}",
                    (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_xticks(
            x,
            names,
            rotation=30 if len(runs) > 3 else 0,
            ha="right" if len(runs) > 3 else "center",
            fontsize=8,
        )
        ax.set_title(label + (" (%)" if ax is ax1 else " (lower: less forgetting)"), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def metric_bars(
    rows: Sequence[Mapping[str, Any]],
    column: str,
    *,
    label: str | None = None,
    title: str | None = None,
) -> Figure:
    """One bar per run of a ``results.csv`` column (missing values left empty)."""
    names = [str(r["name"]) for r in rows]
    values = [np.nan if r.get(column) is None else float(r[column]) for r in rows]
    fig = Figure(figsize=(max(6.0, 0.55 * len(rows) + 3), 4.0))
    ax = fig.subplots()
    bars = ax.bar(
        np.arange(len(rows)), values, color=[_COLORS[i % len(_COLORS)] for i in range(len(rows))]
    )
    for rect, v in zip(bars, values, strict=True):
        if np.isfinite(v):
            ax.annotate(
                f"{v:.3g}",
                (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(
        np.arange(len(rows)),
        names,
        rotation=35 if len(rows) > 3 else 0,
        ha="right" if len(rows) > 3 else "center",
        fontsize=8,
    )
    ax.set_ylabel(label or column)
    ax.set_title(title or (label or column))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def tradeoff(
    rows: Sequence[Mapping[str, Any]], title: str = "Learning vs forgetting per run"
) -> Figure:
    """Accuracy gained (y) against perplexity change on general text (x): up and left is best."""
    fig = Figure(figsize=(6.5, 4.8))
    ax = fig.subplots()
    for i, r in enumerate(rows):
        if r.get("accuracy_after") is None or r.get("perplexity_change") is None:
            continue
        gain = 100 * (r["accuracy_after"] - (r.get("accuracy_before") or 0.0))
        ax.scatter(r["perplexity_change"], gain, s=40, color=_COLORS[i % len(_COLORS)])
        ax.annotate(
            str(r["name"]),
            (r["perplexity_change"], gain),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.axvline(0, color="gray", lw=1, ls="--")
    ax.set_xlabel("perplexity change on general text (forgetting)")
    ax.set_ylabel("held-out accuracy gain (points)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def objective_scatter(
    points: Sequence[Sequence[float]],
    labels: Sequence[str],
    front: Sequence[bool],
    names: Sequence[str],
    directions: Sequence[str],
) -> Figure:
    """The first two objectives of a search's trials, the Pareto-optimal ones in red and
    joined (the front), each point labelled with its run.

    Args:
        points: per trial, its objective values (at least two).
        labels: per trial, the label drawn beside it.
        front: per trial, whether it is Pareto-optimal.
        names / directions: the objectives' names and "maximize"/"minimize".
    """
    fig = Figure(figsize=(6.5, 4.8))
    ax = fig.subplots()
    for p, label, on in zip(points, labels, front, strict=True):
        ax.scatter(
            p[0],
            p[1],
            s=40 if on else 24,
            color="#c44e52" if on else "#4c72b0",
            zorder=3 if on else 2,
        )
        ax.annotate(label, (p[0], p[1]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    best = sorted((p[0], p[1]) for p, on in zip(points, front, strict=True) if on)
    if len(best) > 1:
        ax.plot(*zip(*best, strict=True), "--", color="#c44e52", lw=1, label="Pareto front")
        ax.legend(fontsize=8)
    arrow = {"maximize": "higher is better", "minimize": "lower is better"}
    ax.set_xlabel(f"{names[0]} ({arrow[directions[0]]})")
    ax.set_ylabel(f"{names[1]} ({arrow[directions[1]]})")
    ax.set_title("Search trials (red: Pareto-optimal)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


__all__ = [
    "learning_forgetting",
    "loss_curve",
    "metric_bars",
    "objective_scatter",
    "spectra_vs_validation",
    "tradeoff",
    "validation_curve",
]
