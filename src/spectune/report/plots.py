"""Figures of spectral results: functions that take data and return matplotlib Figures.

Nothing here writes files; the CLI saves the figures (atomically).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from spectune.spectral.powerlaw import PowerLawFit


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
    import re

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
        ax.loglog(x, pdf, "--", color="#c44e52", lw=2,
                  label=f"power law alpha={fit.alpha:.2f}, D={fit.D:.3f}")  # fmt: skip
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


__all__ = [
    "alpha_by_depth",
    "alpha_histogram",
    "base_vs_adapter_alpha",
    "esd_loglog",
    "pick_layers",
]
