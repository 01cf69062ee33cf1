"""Figures of the spectra of weights: functions that take spectral results (a details table,
a comparison's tables, eigenvalues and their fits) and return matplotlib Figures.

Nothing here writes files: :mod:`spectune.report.files` saves the figures (atomically).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spectune.watch.powerlaw import PowerLawFit
from spectune.watch.tpl import log_upper_gamma


def _ok(details: pd.DataFrame, col: str = "alpha") -> pd.DataFrame:
    d = details[details["status"] == "success"] if "status" in details else details
    return d[pd.to_numeric(d[col], errors="coerce").notna()]


def alpha_histogram(details: pd.DataFrame, title: str = "Layer alphas", bins: int = 40) -> Figure:
    """Histogram of layer alphas with the mean and the 2 / 6 warning bounds marked."""
    d = _ok(details)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    alphas = d["alpha"].astype(float).to_numpy()
    ax.hist(alphas, bins=bins, color="#4c72b0", alpha=0.85)
    if len(alphas):
        mean = float(np.mean(alphas))
        ax.axvline(mean, color="#c44e52", lw=2, label=f"mean alpha = {mean:.2f}")
    for x in (2.0, 6.0):
        ax.axvline(x, color="gray", ls="--", lw=1)
    ax.set_xlabel("alpha (power-law exponent of the ESD tail)")
    ax.set_ylabel("layers")
    ax.set_title(f"{title} ({len(alphas)} layers)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def _depth(longname: str) -> int | None:
    m = re.search(r"(?:layers|layer|h|blocks|block|blk)\.(\d+)\.", longname)
    return int(m.group(1)) if m else None


def alpha_by_depth(details: pd.DataFrame, title: str = "Alpha by layer depth") -> Figure:
    """Alpha of every matrix against its block index, one marker per matrix kind."""
    d = _ok(details).copy()
    d["depth"] = [_depth(n) for n in d["longname"]]
    d = d[d["depth"].notna()]
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    kinds = d["longname"].str.replace(r".*\.", "", regex=True)
    kinds = [
        n.split(".")[-2] if n.endswith("lora_BA") else k
        for n, k in zip(d["longname"], kinds, strict=True)
    ]
    d["kind"] = kinds
    for kind, group in d.groupby("kind"):
        ax.plot(group["depth"], group["alpha"], marker="o", ms=4, lw=0.8, label=kind)
    ax.axhline(2.0, color="gray", ls="--", lw=1)
    ax.axhline(6.0, color="gray", ls="--", lw=1)
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("alpha")
    ax.set_title(title)
    if len(d):
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def esd_loglog(
    evals: np.ndarray, fit: PowerLawFit | None, title: str = "ESD", bins: int = 80
) -> Figure:
    """Log-log histogram density of an ESD with the fitted power-law tail drawn over it."""
    ev = np.asarray(evals, dtype=np.float64)
    ev = ev[ev > 0]
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    if len(ev) > 1:
        edges = np.logspace(np.log10(ev.min()), np.log10(ev.max()), bins + 1)
        dens, _ = np.histogram(ev, bins=edges, density=True)
        centers = np.sqrt(edges[:-1] * edges[1:])
        keep = dens > 0
        ax.loglog(centers[keep], dens[keep], "o", ms=3, color="#4c72b0", label="ESD")
    if fit is not None and fit.status == "success":
        tail = ev[ev >= fit.xmin]
        frac = len(tail) / len(ev)
        x = np.logspace(np.log10(fit.xmin), np.log10(ev.max()), 50)
        pdf = frac * (fit.alpha - 1) / fit.xmin * (x / fit.xmin) ** (-fit.alpha)
        ax.loglog(
            x,
            pdf,
            "--",
            color="#c44e52",
            lw=2,
            label=f"power law alpha={fit.alpha:.2f}, D={fit.D:.3f}",
        )
        ax.axvline(fit.xmin, color="#c44e52", lw=1, alpha=0.6)
    ax.set_xlabel("eigenvalue lambda of W^T W")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def base_vs_adapter_alpha(
    details: pd.DataFrame, title: str = "Adapter alpha vs base alpha"
) -> Figure:
    """Scatter of each row's alpha against its base matrix's alpha (needs ``base_alpha``)."""
    d = _ok(details)
    d = (
        d[pd.to_numeric(d.get("base_alpha"), errors="coerce").notna()]
        if "base_alpha" in d
        else d.iloc[:0]
    )
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    x = d["base_alpha"].astype(float) if len(d) else pd.Series(dtype=float)
    y = d["alpha"].astype(float) if len(d) else pd.Series(dtype=float)
    ax.scatter(x, y, s=14, alpha=0.8, color="#55a868")
    if len(d):
        lo = float(min(x.min(), y.min()))
        hi = float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="gray", ls="--", lw=1, label="y = x")
        ax.legend()
    ax.set_xlabel("base model alpha")
    ax.set_ylabel("alpha of this model / adapter")
    ax.set_title(f"{title} ({len(d)} matrices)")
    fig.tight_layout()
    return fig


def pick_layers(details: pd.DataFrame, k: int = 4) -> Sequence[str]:
    """Longnames of k layers worth plotting: lowest, median and highest alpha, and the largest."""
    d = _ok(details).sort_values("alpha")
    if d.empty:
        return []
    picks = [d.iloc[0], d.iloc[len(d) // 2], d.iloc[-1]]
    picks.append(d.sort_values("lambda_max").iloc[-1])
    seen: list[str] = []
    for r in picks:
        if r["longname"] not in seen:
            seen.append(r["longname"])
    return seen[:k]


def scale_collapse(table: pd.DataFrame, title: str = "Norm change per layer (b - a)") -> Figure:
    """Change of log10 spectral and Frobenius norms per matched layer (a :func:`compare`
    table), in model order; collapsed layers marked in red."""
    d = table[table["match"] == "matched"].reset_index(drop=True)
    fig = Figure(figsize=(9, 4.2))
    ax = fig.subplots()
    x = np.arange(len(d))
    ax.plot(
        x,
        d["d_log_spectral_norm"].astype(float),
        marker="o",
        ms=3,
        lw=0.8,
        label="d log10 spectral norm^2",
    )
    ax.plot(
        x, d["d_log_norm"].astype(float), marker="s", ms=3, lw=0.8, label="d log10 Frobenius norm^2"
    )
    bad = d.index[d["collapsed"].astype(bool)]
    if len(bad):
        ax.scatter(
            bad,
            d.loc[bad, "d_log_spectral_norm"].astype(float),
            s=60,
            facecolors="none",
            edgecolors="#c44e52",
            lw=1.5,
            label="collapsed",
            zorder=3,
        )
        for i in bad[:8]:
            ax.annotate(
                str(d.loc[i, "longname"]),
                (i, float(d.loc[i, "d_log_spectral_norm"])),
                fontsize=6,
                rotation=30,
                color="#c44e52",
            )
    ax.axhline(0.0, color="gray", ls="--", lw=1)
    ax.set_xlabel("layer (order of the reference model)")
    ax.set_ylabel("change (log10 units)")
    ax.set_title(f"{title}: {len(bad)} collapsed of {len(d)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def correlation_flow_plot(
    flow: pd.DataFrame,
    other: pd.DataFrame | None = None,
    column: str = "alpha",
    labels: tuple[str, str] = ("base", "tuned"),
    title: str = "Correlation flow",
) -> Figure:
    """Alpha along depth per layer type with its fitted trend (a :func:`correlation_flow`
    table); layers breaking the flow circled. With ``other`` (e.g. the tuned model's flow)
    both are drawn, the second dashed, so the bends fine-tuning made show."""
    kinds = sorted(set(flow["kind"]) | (set(other["kind"]) if other is not None else set()))
    n = max(1, len(kinds))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, kind in zip(axes, kinds, strict=False):
        for f, style, label in ((flow, "-", labels[0]), (other, "--", labels[1])):
            if f is None:
                continue
            g = f[f["kind"] == kind].sort_values("depth")
            if g.empty:
                continue
            (line,) = ax.plot(g["depth"], g[column], style, marker="o", ms=3, lw=0.8, label=label)
            ax.plot(g["depth"], g["trend"], ":", color=line.get_color(), lw=1)
            br = g[g["breaks_flow"]]
            ax.scatter(
                br["depth"], br[column], s=60, facecolors="none", edgecolors="#c44e52", lw=1.5
            )
        ax.set_title(kind, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(kinds) :]:
        ax.set_visible(False)
    if other is not None and len(kinds):
        axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def intruders_by_layer(details: pd.DataFrame, title: str = "Intruder dimensions") -> Figure:
    """Intruder dimensions per layer (needs ``num_intruders``: ``analyze(intruders=True)``)."""
    d = (
        details[pd.to_numeric(details.get("num_intruders"), errors="coerce").notna()]
        if "num_intruders" in details
        else details.iloc[:0]
    )
    fig = Figure(figsize=(9, 3.8))
    ax = fig.subplots()
    n = d["num_intruders"].astype(float).to_numpy() if len(d) else np.zeros(0)
    ax.bar(np.arange(len(n)), n, color="#8172b2")
    ax.set_xlabel("layer")
    ax.set_ylabel("intruders in the top k")
    ax.set_title(f"{title}: {int(n.sum())} in {int((n > 0).sum())} of {len(n)} layers")
    fig.tight_layout()
    return fig


def esd_tpl(
    evals: np.ndarray, fit, title: str = "ESD, truncated power law", bins: int = 80
) -> Figure:
    """Log-log ESD density with a truncated power-law fit
    (:class:`~spectune.watch.tpl.TruncatedPowerLawFit`) drawn over its tail."""
    fig = esd_loglog(evals, None, title=title, bins=bins)
    ax = fig.axes[0]
    ev = np.asarray(evals, dtype=np.float64)
    ev = ev[ev > 0]
    if fit is not None and fit.status == "success" and len(ev):
        frac = np.count_nonzero(ev >= fit.xmin) / len(ev)
        x = np.logspace(np.log10(fit.xmin), np.log10(ev.max()), 80)
        a = 1.0 - fit.alpha
        log_c = a * np.log(fit.Lambda) - log_upper_gamma(a, fit.Lambda * fit.xmin)
        pdf = frac * np.exp(log_c - fit.alpha * np.log(x) - fit.Lambda * x)
        ax.loglog(
            x,
            pdf,
            "--",
            color="#dd8452",
            lw=2,
            label=f"TPL alpha={fit.alpha:.2f}, Lambda={fit.Lambda:.2g}",
        )
        ax.axvline(fit.xmin, color="#dd8452", lw=1, alpha=0.6)
        ax.legend(fontsize=8)
    return fig


__all__ = [
    "alpha_by_depth",
    "alpha_histogram",
    "base_vs_adapter_alpha",
    "correlation_flow_plot",
    "esd_loglog",
    "esd_tpl",
    "intruders_by_layer",
    "pick_layers",
    "scale_collapse",
]
