"""Truncated power-law (TPL) fits of an ESD's tail, as WeightWatcher 0.7.7 makes them.

The model: the tail lambda >= xmin follows

    p(x) = C x^(-alpha) exp(-Lambda x),     C = Lambda^(1 - alpha) / Gamma(1 - alpha, Lambda xmin),

with alpha > 1 and Lambda > 0 (Gamma(a, z) is the upper incomplete gamma function). Its CDF
on the tail is F(x) = 1 - Gamma(1 - alpha, Lambda x) / Gamma(1 - alpha, Lambda xmin).

WeightWatcher (``fit='TPL'``, ``pl_package='powerlaw'``) fits it through the ``powerlaw``
package (1.5; 2.0 rejects WW's call): for every candidate xmin (each distinct eigenvalue but
the largest) the maximum-likelihood (alpha, Lambda) is found by Nelder-Mead (scipy's
``fmin`` with its default tolerances, started at the power-law MLE alpha and 1 / mean of the
tail); parameters outside the range give every point the likelihood 1e-307. The KS distance
of each fit to the tail's empirical CDF is computed, and the xmin with the smallest distance
among the fits inside the parameter range wins. ``fit='E_TPL'`` is the same with
``fix_fingers='xmin_peak'``: candidates restricted to the eigenvalues at most 1.5 times the
peak of the ESD's log-histogram (see :func:`xmin_peak_range`). WW reports the TPL alpha as
``alpha``, Lambda as ``Lambda``, the TPL KS distance as ``D``, and ``sigma`` = NaN (the
``powerlaw`` TPL has no standard error); the alpha-derived columns use the TPL alpha.

What is ours: the negative log-likelihood is evaluated in closed form,

    -log L = alpha sum ln x + Lambda sum x - n ln C,

from the tail's sums (O(1) per Nelder-Mead step instead of O(n) and an mpmath call), and
Gamma(a, z) for a < 1 comes from a continued fraction (z >= 3) or, below, from
Gamma(a, z) = Gamma(a, 3) + sum_k (-1)^k / k! (3^(a+k) - z^(a+k)) / (a+k), whose terms
stay exact for a near 0, -1, -2 ... (no recurrence in a, no Gamma(a) poles).
The Nelder-Mead runs of all candidate xmins advance in lockstep, vectorized, each taking
exactly the branches scipy's ``fmin`` takes for it (bit-identical results, tested), and the
KS distances are vectorized. The result is the same optimization as WeightWatcher's,
computed 10x-45x faster on SmolLM2's layers (``bench/tpl_vs_weightwatcher.py``).

Differences from WeightWatcher's row: ``xmax`` is the largest eigenvalue fitted (WW writes
None there for TPL fits), and a failed fit is NaN with status "failed" and a reason (WW: -1).

A fit at a parameter bound is reported as such: when alpha ends within 1e-3 of its lower
bound 1 (common on trained layers: the cutoff Lambda carries the tail) or Lambda is
negligible against the tail (Lambda xmax < 1e-6: no truncation, a plain power law), the
fit's ``warning`` says so. A fit that cannot be made gives NaN and status "failed".
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize
from scipy.stats import chi2

from spectune.watch.powerlaw import EVALS_THRESH, candidate_xmins, xmin_peak_range

#: powerlaw's likelihood for impossible points (10 ** sys.float_info.min_10_exp)
_TINY = 10.0**sys.float_info.min_10_exp
_LOG_TINY = math.log(_TINY)
_LOG_UNDERFLOW = -744.0  # exp() of less than this is 0 in float64
_CF_EPS = 1e-16
_CF_MAX_ITER = 2000
_SERIES_TERMS = 45
_BATCH_MIN = 48  # candidates from which the lockstep Nelder-Mead beats scipy's fmin
_SPLIT = 3.0  # Gamma(a, z): continued fraction for z >= 3 (~40 terms), series below
#: alpha within this of 1 is "at its lower bound"
ALPHA_BOUND_TOL = 1e-3
#: Lambda * xmax below this is "at its lower bound" (no truncation)
LAMBDA_BOUND_TOL = 1e-6
ALPHA_AT_BOUND = "TPL alpha at its lower bound 1 (the cutoff Lambda carries the tail)"
LAMBDA_AT_BOUND = "TPL Lambda at its lower bound 0 (no truncation: a plain power law)"


# ---------------------------------------------------------------------------------------------
# The upper incomplete gamma function for a < 1 (negative a included), in logs
# ---------------------------------------------------------------------------------------------


def _log_gamma_cf(a: float, z: float) -> float:
    """ln Gamma(a, z) for z >= 3 (any real a < 1) by its continued fraction (modified Lentz):
    Gamma(a, z) = e^-z z^a / (z + 1 - a - 1 (1 - a) / (z + 3 - a - 2 (2 - a) / ...))."""
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, _CF_MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < tiny:
            d = tiny
        c = b + an / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            break
    return -z + a * math.log(z) + math.log(h)


def _series_below(a: float, z: float) -> float:
    """int_z^c t^(a-1) e^-t dt for 0 < z < c = :data:`_SPLIT`, term by term:
    sum_k (-1)^k / k! (c^(a+k) - z^(a+k)) / (a+k).

    Each difference is c^s (-expm1(s ln(z / c))) / s (c^s ln(c / z) at s = 0), exact for
    small s, so orders a near 0, -1, -2 ... lose nothing; the alternating sum loses at most
    a factor e^c (~20) to cancellation.
    """
    log_r = math.log(z / _SPLIT)
    expm1 = math.expm1
    total = 0.0
    weight = _SPLIT**a  # (-1)^k c^(a+k) / k!
    for k in range(_SERIES_TERMS):
        if k:
            weight *= -_SPLIT / k
        s = a + k
        term = weight * (-expm1(s * log_r) / s if s != 0.0 else -log_r)
        total += term
        if k > 4 and abs(term) < 1e-17 * abs(total):
            break
    return total


def log_upper_gamma(a: float, z: float) -> float:
    """ln Gamma(a, z), the upper incomplete gamma function, for real a < 1 and z > 0.

    Args:
        a: the order (any real number below 1; negative values included).
        z: the lower limit of integration, z > 0.

    Returns:
        ln int_z^inf t^(a-1) e^-t dt.
    """
    if z >= _SPLIT:
        return _log_gamma_cf(a, z)
    try:
        value = math.exp(_log_gamma_cf(a, _SPLIT)) + _series_below(a, z)
    except OverflowError:  # a far below 0 and z small: beyond float range, stay in logs
        value = math.inf
    if not (0.0 < value < math.inf):
        return _log_gamma_cf(a, z)  # the continued fraction converges for every z > 0
    return math.log(value)


def _log_gamma_cf_many(a: float | np.ndarray, z: np.ndarray) -> np.ndarray:
    """log Gamma(a, z) elementwise by the modified Lentz continued fraction (z >= 3), each
    element iterated until its own term converges; ``a`` a number or an array like ``z``."""
    tiny = 1e-300
    b = z + 1.0 - a
    c = np.full_like(z, 1.0 / tiny)
    d = 1.0 / b
    h = d.copy()
    active = np.ones(z.shape, dtype=bool)
    for i in range(1, _CF_MAX_ITER):
        an = -i * (i - a)
        b = b + 2.0
        d = an * d + b
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = b + an / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        delta = d * c
        h = np.where(active, h * delta, h)
        active &= np.abs(delta - 1.0) >= _CF_EPS
        if not active.any():
            break
    return -z + a * np.log(z) + np.log(h)


def log_upper_gamma_array(a: float, z: np.ndarray) -> np.ndarray:
    """:func:`log_upper_gamma` for one order ``a`` at many points ``z`` (vectorized)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    hi = z >= _SPLIT
    if hi.any():
        zz = z[hi]
        out[hi] = _log_gamma_cf_many(a, zz)
    lo = ~hi
    if lo.any():
        err = np.seterr(all="ignore")  # huge orders overflow here; _fix_overflow redoes them
        log_r = np.log(z[lo] / _SPLIT)
        log_c = math.log(_SPLIT)
        total = np.zeros_like(log_r)
        fact = 1.0
        for k in range(_SERIES_TERMS):
            if k:
                fact *= k
            s = a + k
            g = -np.expm1(s * log_r) / s if s != 0.0 else -log_r
            term = g * (math.exp(s * log_c) / fact)
            total += -term if k % 2 else term
        out[lo] = np.log(math.exp(_log_gamma_cf(a, _SPLIT)) + total)
        np.seterr(**err)
    return _fix_overflow(np.full(z.shape, a), z, out)


def _fix_overflow(a: np.ndarray, z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Entries the series could not hold in floats (NaN/inf): the continued fraction, in logs."""
    bad = ~np.isfinite(out)
    for i in zip(*np.nonzero(bad), strict=True):
        out[i] = _log_gamma_cf(float(a[i]), float(z[i]))
    return out


# ---------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------


@dataclass
class TruncatedPowerLawFit:
    """Result of a truncated power-law fit of an ESD tail.

    Attributes:
        alpha: the TPL exponent (NaN when the fit failed).
        Lambda: the exponential cutoff rate (NaN when failed).
        xmin: start of the fitted tail.
        xmax: largest eigenvalue of the data fitted.
        D: KS distance between the fitted TPL and the tail.
        sigma: NaN (WeightWatcher reports none for TPL fits).
        num_pl_spikes: eigenvalues >= xmin among all those given.
        n_tail: eigenvalues in the fitted tail.
        loglikelihood: log-likelihood of the tail under the fit.
        status: "success" or "failed".
        warning: "" or why the numbers need care (a parameter at its bound, failure reason).
    """

    alpha: float
    Lambda: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int
    n_tail: int
    loglikelihood: float
    status: str
    warning: str = ""

    def to_dict(self) -> dict[str, float | int | str]:
        """The fields as a JSON-able dict."""
        return asdict(self)


def _failed(reason: str, xmax: float = float("nan")) -> TruncatedPowerLawFit:
    nan = float("nan")
    return TruncatedPowerLawFit(nan, nan, nan, xmax, nan, nan, 0, 0, nan, "failed", reason)


def _nll(params: np.ndarray, tail: np.ndarray, xmin: float, s_log: float, s_x: float) -> float:
    """-log L of the tail under TPL(alpha, Lambda) with powerlaw 1.5's conventions."""
    alpha, lam = float(params[0]), float(params[1])
    n = len(tail)
    if not (lam > 0.0 and alpha > 1.0):
        return -n * _LOG_TINY  # out of range: every likelihood 1e-307
    a = 1.0 - alpha
    log_c = a * math.log(lam) - log_upper_gamma(a, lam * xmin)
    # smallest log density is at the top of the tail (the density decreases)
    top = -alpha * math.log(tail[-1]) - lam * tail[-1]
    if top > _LOG_UNDERFLOW and math.isfinite(log_c):
        return alpha * s_log + lam * s_x - n * log_c
    # some densities underflow to 0 and count as 1e-307, as in powerlaw
    base = -alpha * np.log(tail) - lam * tail
    ll = np.where(base > _LOG_UNDERFLOW, base + log_c, _LOG_TINY)
    return float(-np.sum(ll))


def _mle(tail: np.ndarray, xmin: float) -> tuple[float, float, float]:
    """(alpha, Lambda, loglikelihood) maximizing the TPL likelihood of ``tail`` (>= xmin)."""
    alpha0 = 1.0 + len(tail) / np.sum(np.log(tail / xmin))
    lam0 = 1.0 / np.mean(tail)
    s_log, s_x = float(np.sum(np.log(tail))), float(np.sum(tail))
    params, fval, *_ = optimize.fmin(
        _nll,
        np.array([alpha0, lam0]),
        args=(tail, xmin, s_log, s_x),
        full_output=True,
        disp=False,
    )
    return float(params[0]), float(params[1]), -float(fval)


def _log_upper_gamma_many(a: np.ndarray, z: np.ndarray) -> np.ndarray:
    """:func:`log_upper_gamma` for arrays of orders and points (elementwise, same shapes)."""
    a = np.asarray(a, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    zc = np.maximum(z, _SPLIT)  # the continued fraction at max(z, 3)
    log_cf = _log_gamma_cf_many(a, zc)
    hi = z >= _SPLIT
    out[hi] = log_cf[hi]
    lo = ~hi
    if lo.any():
        err = np.seterr(all="ignore")  # huge orders overflow here; _fix_overflow redoes them
        al, zl = a[lo], z[lo]
        log_r = np.log(zl / _SPLIT)
        total = np.zeros_like(zl)
        weight = _SPLIT**al
        for k in range(_SERIES_TERMS):
            if k:
                weight = weight * (-_SPLIT / k)
            sk = al + k
            safe = np.where(sk != 0.0, sk, 1.0)
            g = np.where(sk != 0.0, -np.expm1(sk * log_r) / safe, -log_r)
            total = total + weight * g
        out[lo] = np.log(np.exp(log_cf[lo]) + total)
        np.seterr(**err)
    return _fix_overflow(a, z, out)


class _TailStats:
    """Per-candidate constants of the TPL likelihood: n, xmin, sum ln x, sum x, top value."""

    def __init__(self, data: np.ndarray, cand: np.ndarray) -> None:
        log_data = np.log(data)
        csum_log = np.concatenate([np.cumsum(log_data[::-1])[::-1], [0.0]])
        csum_x = np.concatenate([np.cumsum(data[::-1])[::-1], [0.0]])
        self.data = data
        self.cand = cand
        self.n = (len(data) - cand).astype(np.float64)
        self.xmin = data[cand]
        self.s_log = csum_log[cand]
        self.s_x = csum_x[cand]
        self.top = float(data[-1])

    def nll(self, rows: np.ndarray, alpha: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """-log L for candidates ``rows`` at (alpha, lam), as :func:`_nll` computes it."""
        n = self.n[rows]
        out = -n * _LOG_TINY
        ok = (lam > 0.0) & (alpha > 1.0)
        if ok.any():
            r, al, la = rows[ok], alpha[ok], lam[ok]
            a = 1.0 - al
            with np.errstate(all="ignore"):
                log_c = a * np.log(la) - _log_upper_gamma_many(a, la * self.xmin[r])
                top = -al * math.log(self.top) - la * self.top
                val = al * self.s_log[r] + la * self.s_x[r] - self.n[r] * log_c
            slow = ~((top > _LOG_UNDERFLOW) & np.isfinite(log_c))
            for j in np.nonzero(slow)[0]:  # densities underflow: the exact per-point sum
                i = int(self.cand[r[j]])
                tail = self.data[i:]
                val[j] = _nll(
                    np.array([al[j], la[j]]),
                    tail,
                    float(tail[0]),
                    float(np.sum(np.log(tail))),
                    float(np.sum(tail)),
                )
            out[ok] = val
        return out


def _mle_batch(data: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_mle` for every candidate xmin at once: scipy's Nelder-Mead (``fmin`` defaults:
    reflection 1, expansion 2, contraction 0.5, shrink 0.5, initial steps of 5%, xatol =
    fatol = 1e-4, at most 400 evaluations and iterations) run in lockstep over the candidates,
    each following exactly the branches its own run takes. A candidate that comes near the
    evaluation or iteration limit is finished by scipy's ``fmin`` itself.

    Returns:
        (alphas, Lambdas, loglikelihoods), one per candidate.
    """
    st = _TailStats(data, cand)
    C = len(cand)
    x0 = np.empty((C, 2))
    with np.errstate(all="ignore"):
        for j, i in enumerate(cand):  # the start exactly as powerlaw computes it
            tail = data[i:]
            x0[j, 0] = 1.0 + len(tail) / np.sum(np.log(tail / data[i]))
            x0[j, 1] = 1.0 / np.mean(tail)
    sim = np.empty((C, 3, 2))
    sim[:, 0] = x0
    sim[:, 1] = x0
    sim[:, 2] = x0
    for k in range(2):
        col = sim[:, k + 1, k]
        sim[:, k + 1, k] = np.where(col != 0, 1.05 * col, 0.00025)
    rows = np.arange(C)
    fsim = np.stack([st.nll(rows, sim[:, v, 0], sim[:, v, 1]) for v in range(3)], axis=1)
    fcalls = np.full(C, 3)
    iters = np.ones(C, dtype=np.int64)
    order = np.argsort(fsim, axis=1)
    sim = np.take_along_axis(sim, order[:, :, None], axis=1)
    fsim = np.take_along_axis(fsim, order, axis=1)
    active = np.ones(C, dtype=bool)
    fallback = np.zeros(C, dtype=bool)
    max_calls = 400
    while True:
        act = np.nonzero(active)[0]
        if act.size == 0:
            break
        s, f = sim[act], fsim[act]
        done = (np.abs(s[:, 1:] - s[:, :1]).reshape(len(act), -1).max(axis=1) <= 1e-4) & (
            np.abs(f[:, :1] - f[:, 1:]).max(axis=1) <= 1e-4
        )
        near = (fcalls[act] + 4 > max_calls) | (iters[act] + 1 >= max_calls)
        fallback[act[~done & near]] = True
        active[act[done | near]] = False
        act = act[~(done | near)]
        if act.size == 0:
            break
        s, f = sim[act], fsim[act]
        xbar = np.add.reduce(s[:, :2], 1) / 2
        xr = (1 + 1) * xbar - 1 * s[:, 2]
        fxr = st.nll(act, xr[:, 0], xr[:, 1])
        fcalls[act] += 1
        expand = fxr < f[:, 0]
        accept_r = ~expand & (fxr < f[:, 1])
        outside = ~expand & ~accept_r & (fxr < f[:, 2])
        inside = ~expand & ~accept_r & ~outside
        second = np.where(expand[:, None], (1 + 1 * 2) * xbar - 1 * 2 * s[:, 2],
                          np.where(outside[:, None], (1 + 0.5 * 1) * xbar - 0.5 * 1 * s[:, 2],
                                   (1 - 0.5) * xbar + 0.5 * s[:, 2]))  # fmt: skip
        need = expand | outside | inside
        fsec = np.full(len(act), np.nan)
        if need.any():
            fsec[need] = st.nll(act[need], second[need, 0], second[need, 1])
            fcalls[act[need]] += 1
        new_x = np.where(((expand & (fsec < fxr)) | (outside & (fsec <= fxr))
                          | (inside & (fsec < f[:, 2])))[:, None], second, xr)  # fmt: skip
        new_f = np.where((expand & (fsec < fxr)) | (outside & (fsec <= fxr))
                         | (inside & (fsec < f[:, 2])), fsec, fxr)  # fmt: skip
        shrink = (outside & ~(fsec <= fxr)) | (inside & ~(fsec < f[:, 2]))
        keep = ~shrink
        s[keep, 2] = new_x[keep]
        f[keep, 2] = new_f[keep]
        if shrink.any():
            sh = np.nonzero(shrink)[0]
            for v in (1, 2):
                s[sh, v] = s[sh, 0] + 0.5 * (s[sh, v] - s[sh, 0])
                f[sh, v] = st.nll(act[sh], s[sh, v, 0], s[sh, v, 1])
            fcalls[act[sh]] += 2
        iters[act] += 1
        order = np.argsort(f, axis=1)
        sim[act] = np.take_along_axis(s, order[:, :, None], axis=1)
        fsim[act] = np.take_along_axis(f, order, axis=1)
    alphas, lams, lls = sim[:, 0, 0].copy(), sim[:, 0, 1].copy(), -fsim.min(axis=1)
    for j in np.nonzero(fallback)[0]:  # rare: let scipy finish it, exactly as powerlaw would
        i = int(cand[j])
        alphas[j], lams[j], lls[j] = _mle(data[i:], float(data[i]))
    return alphas, lams, lls


def _in_range(alpha: float, lam: float) -> bool:
    return bool(lam > 0.0 and alpha > 1.0)


def tpl_cdf(x: np.ndarray, alpha: float, Lambda: float, xmin: float) -> np.ndarray:
    """The TPL's CDF on the tail, evaluated as ``powerlaw`` 1.5 evaluates it.

    With q(x) = Gamma(1 - alpha, Lambda x) / Lambda^(1 - alpha) (the unnormalized tail
    integral), powerlaw computes F = ((1 - q(x)) - (1 - q(xmin))) / (1 - (1 - q(xmin))); the
    same rounding is kept here, so KS distances (and the xmin they select) agree.
    """
    x = np.asarray(x, dtype=np.float64)
    if not _in_range(alpha, Lambda):
        return np.full(x.shape, _TINY)
    a = 1.0 - alpha
    log_lam_a = a * math.log(Lambda)
    base = 1.0 - np.exp(log_upper_gamma_array(a, Lambda * x) - log_lam_a)
    base_min = 1.0 - math.exp(log_upper_gamma(a, Lambda * xmin) - log_lam_a)
    if base_min == 1.0:  # no precision left for the tail: powerlaw returns all ones
        return np.ones(x.shape)
    return (base - base_min) / (1.0 - base_min)


def _ks(bins: np.ndarray, ecdf: np.ndarray, alpha: float, lam: float, xmin: float) -> float:
    """KS distance on the tail: ``bins`` are its distinct values, ``ecdf`` the empirical CDF of
    all data there (fraction strictly below), renormalized to the tail."""
    actual = (ecdf - ecdf[0]) / (1.0 - ecdf[0])
    diff = tpl_cdf(bins, alpha, lam, xmin) - actual
    return float(max(diff.max(), -diff.min()))


def fit_truncated_powerlaw(
    evals: np.ndarray,
    *,
    fix_fingers: str | None = None,
    thresh: float = EVALS_THRESH,
) -> TruncatedPowerLawFit:
    """Fit a truncated power law to the tail of an ESD, as WeightWatcher 0.7.7 does.

    Args:
        evals: eigenvalues (any order); values <= ``thresh`` are ignored.
        fix_fingers: None (xmin searched over every eigenvalue: WW's ``fit='TPL'``) or
            "xmin_peak" (xmin searched near the ESD's peak: WW's ``fit='E_TPL'``).
        thresh: eigenvalues at or below this are dropped before fitting.

    Returns:
        A :class:`TruncatedPowerLawFit`.

    Raises:
        ValueError: unknown ``fix_fingers``.
    """
    if fix_fingers not in (None, False, "", "xmin_peak"):
        raise ValueError(
            f"fix_fingers must be None or 'xmin_peak' for a TPL fit, got {fix_fingers!r}"
        )
    ev = np.sort(np.asarray(evals, dtype=np.float64).ravel())
    if not np.isfinite(ev).all():
        return _failed("non-finite eigenvalues")
    data = ev[ev > thresh]
    if len(data) < 2:
        return _failed("fewer than two eigenvalues above the threshold")
    xmax = float(data[-1])
    xr = xmin_peak_range(data, thresh) if fix_fingers == "xmin_peak" else None
    cand = candidate_xmins(data, xr)
    if cand.size == 0:
        return _failed("fewer than two distinct eigenvalues to fit", xmax)
    bins, first = np.unique(data, return_index=True)
    ecdf_all = first / len(data)  # fraction of the data strictly below each distinct value
    Ds = np.empty(cand.size)
    with np.errstate(all="ignore"):
        if cand.size >= _BATCH_MIN:
            alphas, lams, lls = _mle_batch(data, cand)
            fits = list(zip(alphas.tolist(), lams.tolist(), lls.tolist(), strict=True))
        else:  # few candidates: scipy's fmin one by one costs less than the batch overhead
            fits = [_mle(data[i:], float(data[i])) for i in cand]
    for j, i in enumerate(cand):
        xmin = float(data[i])
        with np.errstate(all="ignore"):
            k = int(np.searchsorted(bins, xmin))
            Ds[j] = _ks(bins[k:], ecdf_all[k:], fits[j][0], fits[j][1], xmin)
    good = np.array([_in_range(a, lam) for a, lam, _ in fits])
    if good.all() or not good.any():
        best = int(np.argmin(Ds))
    else:
        best = int(np.ma.masked_array(Ds, mask=~good).argmin())
    alpha, lam, ll = fits[best]
    i = int(cand[best])
    xmin = float(data[i])
    if not (math.isfinite(alpha) and math.isfinite(lam)):
        return _failed("the likelihood maximization did not converge", xmax)
    warnings = []
    if not good[best]:
        warnings.append("no fit inside the parameter range (alpha > 1, Lambda > 0)")
    if alpha - 1.0 < ALPHA_BOUND_TOL:
        warnings.append(ALPHA_AT_BOUND)
    if lam * xmax < LAMBDA_BOUND_TOL:
        warnings.append(LAMBDA_AT_BOUND)
    return TruncatedPowerLawFit(
        alpha=alpha,
        Lambda=lam,
        xmin=xmin,
        xmax=xmax,
        D=float(Ds[best]),
        sigma=float("nan"),
        num_pl_spikes=int(np.count_nonzero(ev >= xmin)),
        n_tail=len(data) - i,
        loglikelihood=ll,
        status="success",
        warning="; ".join(warnings),
    )


@dataclass
class FitComparison:
    """Log-likelihood ratio test of power law (PL) against truncated power law (TPL).

    Attributes:
        R: sum over the tail of ln p_PL(x) - ln p_TPL(x); negative favours the TPL.
        p: significance of R's sign (the laws are nested: 1 - chi2_1 CDF of |2R|);
            below 0.05 the sign is trusted.
        R_normalized: R / sqrt(n var), var the variance of the pointwise differences.
        n_tail: points compared.
    """

    R: float
    p: float
    R_normalized: float
    n_tail: int

    @property
    def preferred(self) -> str:
        """ "power_law", "truncated_power_law" or "undecided" (p >= 0.05)."""
        if not (self.p < 0.05):
            return "undecided"
        return "power_law" if self.R > 0 else "truncated_power_law"


def _pl_loglikelihoods(tail: np.ndarray, alpha: float, xmin: float) -> np.ndarray:
    if not alpha > 1.0:
        return np.full(tail.shape, _LOG_TINY)
    base = -alpha * np.log(tail)
    log_c = math.log(alpha - 1.0) + (alpha - 1.0) * math.log(xmin)
    return np.where(base > _LOG_UNDERFLOW, base + log_c, _LOG_TINY)


def _tpl_loglikelihoods(tail: np.ndarray, alpha: float, lam: float, xmin: float) -> np.ndarray:
    if not _in_range(alpha, lam):
        return np.full(tail.shape, _LOG_TINY)
    a = 1.0 - alpha
    log_c = a * math.log(lam) - log_upper_gamma(a, lam * xmin)
    base = -alpha * np.log(tail) - lam * tail
    return np.where(base > _LOG_UNDERFLOW, base + log_c, _LOG_TINY)


def compare_pl_tpl(
    evals: np.ndarray, xmin: float, *, thresh: float = EVALS_THRESH
) -> FitComparison:
    """Which law fits the tail ``evals >= xmin`` better: the Clauset-Shalizi-Newman
    log-likelihood ratio test, as ``powerlaw`` 1.5's
    ``Fit(evals, xmin=xmin).distribution_compare('power_law', 'truncated_power_law')``.

    Both laws are fitted by maximum likelihood on the same tail (the PL alpha in closed form,
    the TPL by Nelder-Mead as in :func:`fit_truncated_powerlaw`). A significant negative R
    says the tail bends away from a straight line on the log-log plot, so the plain alpha
    describes it less well. The PL is a TPL with Lambda = 0, so at the true maxima R <= 0; a
    significant positive R means the TPL's Nelder-Mead stopped short (typically with alpha
    pinned at 1), exactly as ``powerlaw`` would report it.

    Args:
        evals: eigenvalues (any order); values <= ``thresh`` are ignored.
        xmin: start of the tail (e.g. the power-law fit's xmin).
        thresh: eigenvalues at or below this are dropped.

    Returns:
        A :class:`FitComparison` (NaN fields when the tail has fewer than two points).
    """
    ev = np.sort(np.asarray(evals, dtype=np.float64).ravel())
    tail = ev[(ev > thresh) & (ev >= xmin)] if math.isfinite(xmin) else ev[:0]
    n = len(tail)
    if n < 2 or not np.isfinite(tail).all():
        nan = float("nan")
        return FitComparison(nan, nan, nan, n)
    with np.errstate(all="ignore"):
        alpha_pl = 1.0 + n / float(np.sum(np.log(tail / xmin)))
        alpha, lam, _ = _mle(tail, xmin)
        diff = _pl_loglikelihoods(tail, alpha_pl, xmin) - _tpl_loglikelihoods(
            tail, alpha, lam, xmin
        )
    R = float(np.sum(diff))
    var = float(np.mean((diff - diff.mean()) ** 2))
    p = float(chi2.sf(abs(2.0 * R), 1))
    R_norm = R / math.sqrt(n * var) if var > 0 else float("nan")
    return FitComparison(R=R, p=p, R_normalized=R_norm, n_tail=n)


__all__ = [
    "ALPHA_AT_BOUND",
    "FitComparison",
    "compare_pl_tpl",
    "LAMBDA_AT_BOUND",
    "TruncatedPowerLawFit",
    "candidate_xmins",
    "fit_truncated_powerlaw",
    "log_upper_gamma",
    "log_upper_gamma_array",
    "tpl_cdf",
    "xmin_peak_range",
]
