"""Per-layer metrics of an ESD, with WeightWatcher 0.7.7's definitions.

For eigenvalues lambda_1 <= ... <= lambda_M of W^T W (singular values s_i = sqrt(lambda_i)):

=================  ===========================================================================
norm               sum lambda_i = ||W||_F^2 (WW's "norm" is the squared Frobenius norm)
log_norm           log10(norm)
spectral_norm      lambda_max = ||W||_2^2;  log_spectral_norm = log10(lambda_max)
stable_rank        norm / lambda_max
matrix_rank        #{s_i > s_max * N * eps(float64)} (numpy's matrix_rank tolerance; for a
                   float64 Gram-route ESD also s_i > 1.5e-7 s_max, see esd.GRAM_RANK_FLOOR)
rank_loss          M - matrix_rank;  weak_rank_loss = #{lambda_i < 1e-6}
entropy            -sum p_i ln p_i / ln(matrix_rank), p_i = lambda_i / sum lambda + 1e-10
alpha_weighted     alpha * log10(lambda_max)
log_alpha_norm     log10(sum lambda_i^alpha)
=================  ===========================================================================

``status`` is "success" or "failed" (power-law fit failed: alpha and the alpha-based metrics
are NaN), "zero-update" (all eigenvalues zero, e.g. an untrained LoRA adapter with B = 0) or
"non-finite" (the matrix holds NaN/Inf). ``warning`` joins "over-trained" (alpha < 2),
"under-trained" (alpha > 6) and "too few eigenvalues for a reliable fit" (fewer than
``min_evals`` eigenvalues above the fit threshold).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spectune.watch.powerlaw import EVALS_THRESH, PowerLawFit, alpha_warning, fit_powerlaw
from spectune.watch.tpl import (
    TruncatedPowerLawFit,
    compare_pl_tpl,
    fit_truncated_powerlaw,
)

#: eigenvalues below this count as lost rank in ``weak_rank_loss`` (WW's default tolerance)
WEAK_RANK_TOLERANCE = 1e-6
_ENTROPY_EPS = 1e-10
TOO_FEW = "too few eigenvalues for a reliable fit"

NAN = float("nan")

#: the columns :func:`esd_metrics` fills, in order
METRIC_COLUMNS = [
    "num_evals", "has_esd", "lambda_max", "sv_max", "sv_min", "norm", "log_norm",
    "spectral_norm", "log_spectral_norm", "stable_rank", "matrix_rank", "rank_loss",
    "weak_rank_loss", "entropy", "alpha", "alpha_weighted", "log_alpha_norm", "xmin", "xmax",
    "D", "sigma", "num_pl_spikes", "status", "warning",
]  # fmt: skip


def matrix_rank(svals: np.ndarray, N: int, floor: float = 0.0) -> int:
    """Numerical rank from singular values with numpy's tolerance s_max * N * eps.

    Args:
        svals: singular values.
        N: the larger matrix dimension.
        floor: singular values at or below ``floor * s_max`` also count as zero (the rounding
            level of the route that produced them, see ``esd.GRAM_RANK_FLOOR``).
    """
    if len(svals) == 0:
        return 0
    s_max = float(np.max(svals))
    tol = max(s_max * N * np.finfo(np.float64).eps, s_max * floor)
    return int(np.count_nonzero(svals > tol))


def matrix_entropy(evals: np.ndarray, rank: int) -> float:
    """WW's normalized spectral entropy: -sum p ln p / ln(rank), p = lambda / sum + 1e-10."""
    total = float(np.sum(evals))
    if total <= 0:
        return NAN
    p = evals / total + _ENTROPY_EPS
    denom = math.log(rank + _ENTROPY_EPS)
    if denom == 0:
        return NAN
    return float(-np.sum(p * np.log(p)) / denom)


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 and math.isfinite(x) else NAN


def empty_metrics(status: str, warning: str = "") -> dict[str, Any]:
    """The metric columns for a row without a usable ESD."""
    row: dict[str, Any] = {c: NAN for c in METRIC_COLUMNS}
    row.update(has_esd=False, num_evals=0, num_pl_spikes=0, status=status, warning=warning)
    return row


def esd_metrics(
    evals: np.ndarray,
    N: int,
    *,
    min_evals: int = 8,
    fix_fingers: str | None = None,
    rank_loss: int | None = None,
    fit: PowerLawFit | TruncatedPowerLawFit | None = None,
    rank_floor: float = 0.0,
    fit_type: str = "power_law",
    detX: bool = False,
    compare_fits: bool = False,
) -> tuple[dict[str, Any], PowerLawFit | TruncatedPowerLawFit | None]:
    """All metric columns of one layer from its ESD.

    Args:
        evals: eigenvalues of W^T W (any order; pooled over Conv2D positions).
        N: the larger matrix dimension (for the rank tolerance).
        min_evals: fewer eigenvalues above the fit threshold than this add the warning
            "too few eigenvalues for a reliable fit".
        fix_fingers: passed to :func:`~spectune.watch.powerlaw.fit_powerlaw` (or, for a
            TPL fit, "xmin_peak" to :func:`~spectune.watch.tpl.fit_truncated_powerlaw`).
        rank_loss: precomputed rank loss (summed over Conv2D positions); default from evals.
        fit: a precomputed power-law fit (skips fitting).
        rank_floor: passed to :func:`matrix_rank` as ``floor``.
        fit_type: "power_law" (WW's default fit) or "truncated_power_law" (WW's
            ``fit='TPL'``; with ``fix_fingers="xmin_peak"`` WW's ``fit='E_TPL'``): alpha is the
            TPL's and a ``Lambda`` column is added.
        detX: add WW's detX / ERG columns (:func:`detx_columns`).
        compare_fits: add ``pl_tpl_R``, ``pl_tpl_p``, ``pl_tpl_R_normalized`` and
            ``better_fit``: the log-likelihood ratio test of power law against truncated
            power law on the tail above the row's xmin
            (:func:`~spectune.watch.tpl.compare_pl_tpl`).

    Returns:
        ``(row, fit)``: the metric columns (see :data:`METRIC_COLUMNS`) and the power-law fit
        (None for a zero update).
    """
    ev = np.sort(np.clip(np.asarray(evals, dtype=np.float64), 0.0, None))
    if len(ev) == 0:
        return empty_metrics("failed", TOO_FEW), None
    lambda_max = float(ev[-1])
    if lambda_max <= 0:
        return _zero_update_metrics(len(ev)), None
    sv = np.sqrt(ev)
    rank = matrix_rank(sv, N, rank_floor)
    norm = float(np.sum(ev))
    tpl = fit_type == "truncated_power_law"
    if fit is None and tpl:
        fit = fit_truncated_powerlaw(ev, fix_fingers=fix_fingers or None)
    elif fit is None:
        fit = fit_powerlaw(ev, fix_fingers=fix_fingers)
    alpha = fit.alpha if fit.status == "success" else NAN
    with np.errstate(over="ignore"):
        alpha_norm = float(np.sum(ev**alpha)) if math.isfinite(alpha) else NAN
    warnings = []
    if fit.status == "success":
        w = alpha_warning(alpha)
        if w:
            warnings.append(w)
    if tpl and fit.warning:
        warnings.append(fit.warning)
    if int(np.count_nonzero(ev > EVALS_THRESH)) < min_evals:
        warnings.append(TOO_FEW)
    row = {
        "num_evals": len(ev),
        "has_esd": True,
        "lambda_max": lambda_max,
        "sv_max": float(sv[-1]),
        "sv_min": float(sv[0]),
        "norm": norm,
        "log_norm": _log10(norm),
        "spectral_norm": lambda_max,
        "log_spectral_norm": _log10(lambda_max),
        "stable_rank": norm / lambda_max,
        "matrix_rank": rank,
        "rank_loss": len(ev) - rank if rank_loss is None else rank_loss,
        "weak_rank_loss": int(np.count_nonzero(ev < WEAK_RANK_TOLERANCE)),
        "entropy": matrix_entropy(ev, rank),
        "alpha": alpha,
        "alpha_weighted": alpha * _log10(lambda_max) if math.isfinite(alpha) else NAN,
        "log_alpha_norm": _log10(alpha_norm),
        "xmin": fit.xmin,
        "xmax": fit.xmax,
        "D": fit.D,
        "sigma": fit.sigma,
        "num_pl_spikes": fit.num_pl_spikes,
        "status": fit.status,
        "warning": "; ".join(warnings),
    }
    row.update(_fit_columns(ev, fit, tpl, fix_fingers, detX, compare_fits))
    return row, fit


def _zero_update_metrics(n: int) -> dict[str, Any]:
    """The row of an ESD of ``n`` eigenvalues that are all zero (an untrained update)."""
    row = empty_metrics("zero-update", "all eigenvalues are zero (untrained or empty update)")
    row.update(
        num_evals=n,
        has_esd=True,
        norm=0.0,
        spectral_norm=0.0,
        lambda_max=0.0,
        sv_max=0.0,
        sv_min=0.0,
        matrix_rank=0,
        rank_loss=n,
        weak_rank_loss=n,
        stable_rank=NAN,
    )
    return row


def _fit_columns(
    ev: np.ndarray,
    fit: PowerLawFit | TruncatedPowerLawFit,
    tpl: bool,
    fix_fingers: str | None,
    detX: bool,
    compare_fits: bool,
) -> dict[str, Any]:
    """The optional columns of :func:`esd_metrics`: the TPL's ``Lambda``, the clipped
    fingers, detX / ERG and the PL-vs-TPL test, as asked for."""
    cols: dict[str, Any] = {}
    if tpl:
        cols["Lambda"] = fit.Lambda
    if fix_fingers == "clip_xmax":
        cols["num_fingers"] = fit.num_fingers
        cols["raw_alpha"] = fit.raw_alpha
    if detX:
        cols.update(detx_columns(ev, fit.num_pl_spikes if fit.status == "success" else None))
    if compare_fits:
        cmp = compare_pl_tpl(ev, fit.xmin) if fit.status == "success" else None
        cols["pl_tpl_R"] = cmp.R if cmp else NAN
        cols["pl_tpl_p"] = cmp.p if cmp else NAN
        cols["pl_tpl_R_normalized"] = cmp.R_normalized if cmp else NAN
        cols["better_fit"] = cmp.preferred if cmp else ""
    return cols


def detx_columns(evals: np.ndarray, num_pl_spikes: int | None) -> dict[str, Any]:
    """WeightWatcher 0.7.7's detX / ERG columns of an ESD.

    The ESD is rescaled to mean 1 (lambda * M / sum lambda, M eigenvalues, zeros included);
    scanning down from the top, the first index idx >= 1 whose tail product
    prod(lambda[idx:]) falls below 1 gives
    ``detX_num = M - idx`` (M when no product drops below 1). ``num_ERG_spikes`` is the same
    number, ``ERG_gap = detX_num - num_pl_spikes``, ``detX_val`` the eigenvalue at idx in the
    ESD's units and ``detX_val_unrescaled`` the same eigenvalue rescaled to mean 1 (WW's names,
    kept as WW assigns them).
    """
    ev = np.sort(np.asarray(evals, dtype=np.float64))
    out: dict[str, Any] = {
        "detX_num": 0,
        "num_ERG_spikes": 0,
        "ERG_gap": NAN,
        "detX_val": NAN,
        "detX_val_unrescaled": NAN,
    }
    total = float(np.sum(ev))
    if len(ev) < 2 or total <= 0:
        return out
    scale = len(ev) / total
    rescaled = scale * ev
    idx, num = 1, len(ev)
    if rescaled[0] < rescaled[-1]:
        with np.errstate(over="ignore", under="ignore"):
            prods = np.cumprod(rescaled[::-1])[::-1]  # prods[i] = prod(rescaled[i:])
        below = np.nonzero(prods[1:] < 1.0)[0]
        if below.size:
            idx = int(below[-1]) + 1
            num = len(ev) - idx
    else:
        idx, num = 0, 0
    out.update(
        detX_num=num,
        num_ERG_spikes=num,
        detX_val=float(rescaled[idx] / scale),
        detX_val_unrescaled=float(rescaled[idx]),
    )
    if num_pl_spikes is not None:
        out["ERG_gap"] = num - int(num_pl_spikes)
    return out


def rank_at_energy(evals: np.ndarray, fraction: float = 0.9) -> int:
    """Smallest k such that the k largest eigenvalues hold ``fraction`` of sum(lambda).

    With eigenvalues of Delta W^T Delta W this is the rank holding 90% of the update's squared
    Frobenius norm ("rank90" of "LoRA Learns Less and Forgets Less").
    """
    ev = np.sort(np.asarray(evals, dtype=np.float64))[::-1]
    total = ev.sum()
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(ev) / total, fraction - 1e-12) + 1)


__all__ = [
    "METRIC_COLUMNS",
    "TOO_FEW",
    "detx_columns",
    "empty_metrics",
    "esd_metrics",
    "matrix_entropy",
    "matrix_rank",
    "rank_at_energy",
]
