"""Power-law fits of an ESD's tail, with WeightWatcher 0.7.7's estimator, vectorized.

The model: the tail lambda >= xmin of the ESD follows p(lambda) ~ lambda^(-alpha). For every
candidate xmin (each eigenvalue but the largest, in ascending order) the continuous maximum
likelihood estimate is

    alpha(xmin) = 1 + n / sum_{j: x_j >= xmin} ln(x_j / xmin),     n = #{x_j >= xmin},

and the Kolmogorov-Smirnov distance between the tail's empirical CDF (0, 1/n, ..., (n-1)/n)
and the fitted CDF F(x) = 1 - (x / xmin)^(1 - alpha) is

    D(xmin) = max_j | F(x_j) - (j - i) / n |.

The chosen xmin minimizes D (first minimum on ties); sigma = (alpha - 1) / sqrt(n) is the
standard error of alpha. Eigenvalues at or below ``EVALS_THRESH`` (1e-5) are dropped first.
With fewer than 20 eigenvalues left, WeightWatcher's small-sample branch applies: tails of at
least 8 points and the bias-corrected alpha = 1 + (n - 1) / sum ln(x_j / xmin); xmin still
minimizes D (WW computes a J = D - 0.868 / sqrt(n) ranking but then overwrites its choice with
argmin D, and we reproduce the numbers it reports). With fewer than 9 eigenvalues the whole
sample is the tail.

WeightWatcher evaluates these in a Python loop, O(N^2) numpy work with O(N) interpreter
overhead. Here the alphas come from one reversed cumulative sum and the KS distances from
blocked matrix expressions, computed only for the candidates that can still be the minimum
(a branch and bound on exact lower bounds, see :func:`_ks_distances`), so a 4096-eigenvalue
fit takes milliseconds.

``fix_fingers="xmin_peak"`` restricts the xmin candidates to the eigenvalues up to 1.5 x the
peak of the ESD's log-histogram (WeightWatcher with ``pl_package='powerlaw'``; with its default
package every such fit fails) and uses the plain estimator at every sample size, as the
``powerlaw`` package does. The truncated power law is in :mod:`spectune.watch.tpl`.

Differences from WeightWatcher, on purpose: a fit that cannot be made (fewer than two
eigenvalues above the threshold, or a non-finite alpha) has ``status == "failed"`` and
``alpha = NaN`` (WeightWatcher reports -1, which then reads as "over-trained"); all-equal
eigenvalues fail too (WW reports alpha 0). When the whole small sample is the tail, sigma is
(alpha - 1) / sqrt(n) (WW reports -1 / sqrt(n) there, from an array it fills too late).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

#: eigenvalues at or below this are left out of the fit (WeightWatcher's EVALS_THRESH)
EVALS_THRESH = 1e-5
#: below this many eigenvalues the small-sample estimator is used (WeightWatcher's SMALL_N_CUTOFF)
SMALL_N_CUTOFF = 20
#: smallest tail the small-sample estimator considers
SMALL_N_KMIN = 8
#: alpha below this: "over-trained"; above UNDER_TRAINED_ALPHA: "under-trained"
OVER_TRAINED_ALPHA = 2.0
UNDER_TRAINED_ALPHA = 6.0
#: clip_xmax finger fixing: how many of the largest eigenvalues may be clipped, and by how much
#: alpha must drop to accept a clipped fit
DEFAULT_MAX_FINGERS = 10
DEFAULT_FINGER_THRESH = 1.0

_BLOCK_ELEMS = 1 << 21  # ~16 MB of float64 per block of KS work
_KS_ROWS = 48  # candidates per block: the masked triangle is rows^2 / 2 wasted entries
_KS_STRIDE = 16  # the pruning bound of the KS distances uses every 16th point
_KS_BATCH = 16  # candidates computed exactly at a time, lowest bounds first


@dataclass
class PowerLawFit:
    """Result of a power-law fit of an ESD tail.

    Attributes:
        alpha: the power-law exponent (NaN when the fit failed).
        xmin: start of the fitted tail (NaN when failed).
        xmax: largest eigenvalue of the data fitted.
        D: Kolmogorov-Smirnov distance of the fit.
        sigma: standard error of alpha, (alpha - 1) / sqrt(n_tail).
        num_pl_spikes: number of eigenvalues >= xmin (in the full ESD given).
        n_tail: number of eigenvalues in the fitted tail.
        status: "success" or "failed".
        num_fingers: eigenvalues clipped off the top by ``fix_fingers="clip_xmax"`` (0 otherwise).
        raw_alpha: with clip_xmax, the alpha before clipping (NaN otherwise).
        candidates: the candidate xmins, their alphas and KS distances (+inf where the search
            proved a candidate cannot be the minimum without computing it); not serialized.
    """

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int
    n_tail: int
    status: str
    num_fingers: int = 0
    raw_alpha: float = float("nan")
    candidates: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, float | int | str]:
        """The scalar fields as a JSON-able dict."""
        d = asdict(self)
        d.pop("candidates", None)
        return d


def _failed(xmax: float = float("nan")) -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, nan, xmax, nan, nan, 0, 0, "failed")


def _tail_sums(log_data: np.ndarray) -> np.ndarray:
    """s_i = sum_{j >= i} (ln x_j - ln x_i) for i = 0..N-2, stably (shifted reverse cumsum)."""
    shifted = log_data - log_data[0]
    rev_cum = np.cumsum(shifted[::-1])[::-1]  # rev_cum[i] = sum_{j >= i} shifted[j]
    n = len(log_data) - np.arange(len(log_data))
    return (rev_cum - n * shifted)[:-1]


def _ks_rows(log_data: np.ndarray, alphas: np.ndarray, ii: np.ndarray, cols: np.ndarray):
    """| F_i(x_j) - (j - i) / n_i | for candidates ``ii`` (rows) at points ``cols`` (columns).

    Every entry is computed by the same sequence of float operations whatever the other rows
    and columns are, so a value taken on a subset of columns equals the full table's entry
    bit for bit (the pruning in :func:`_ks_distances` relies on it). Entries left of a row's
    own start are not part of its tail and are meaningless; callers mask them.
    """
    L = log_data[cols][None, :] - log_data[ii][:, None]
    with np.errstate(over="ignore", invalid="ignore"):  # alpha = inf: 0 * inf = NaN, kept
        L *= (1.0 - alphas[ii])[:, None]
        np.exp(L, out=L)
    inv_n = 1.0 / (len(log_data) - ii).astype(np.float64)  # k / n = (j - i) / n_i
    L += cols.astype(np.float64)[None, :] * inv_n[:, None] - (ii * inv_n)[:, None]
    np.subtract(1.0, L, out=L)
    np.abs(L, out=L)
    return L


def _ks_exact(log_data: np.ndarray, alphas: np.ndarray, rows: np.ndarray, Ds: np.ndarray) -> None:
    """Ds[i] = the KS distance of candidate i, for every i in ``rows`` (ascending).

    Blocks of candidates close together share one table over the columns their tails cover;
    a block spans at most :data:`_KS_ROWS` candidate positions, so the work left of each
    row's own start (masked) stays small.
    """
    N = len(log_data)
    k = 0
    while k < len(rows):
        c0 = int(rows[k])
        span = max(1, min(_KS_ROWS, _BLOCK_ELEMS // (N - c0)))
        stop = int(np.searchsorted(rows, c0 + span, side="left"))
        ii = rows[k:stop]
        cols = np.arange(c0, N)
        L = _ks_rows(log_data, alphas, ii, cols)
        if ii.size > 1:  # columns left of a row's start are not its tail
            L[cols[None, :] < ii[:, None]] = 0.0
        Ds[ii] = L.max(axis=1)
        k = stop


def _ks_distances(
    data: np.ndarray,
    log_data: np.ndarray,
    alphas: np.ndarray,
    valid: np.ndarray,
    *,
    prune: bool = True,
) -> np.ndarray:
    """KS distance of every candidate xmin that can be the minimum (D = 1 where not ``valid``).

    For candidate i, tail x_i..x_{N-1} (n = N - i points):
        D_i = max_{k=0..n-1} | 1 - exp((1 - alpha_i)(ln x_{i+k} - ln x_i)) - k / n |.

    The fit only needs the first minimum of D. With ``prune`` (default) D is computed exactly
    only where it can be that minimum: a lower bound for every candidate comes from every
    :data:`_KS_STRIDE`-th point (entries identical to the full table's, so bound <= D
    exactly). Candidates are then computed exactly in order of their bounds, and the search
    stops at the first bound above the smallest D found: no candidate left can reach it. The
    minimum and its first position are the same as with the full table (ties included: a
    bound equal to the minimum is still computed); candidates never computed get +inf.
    ``prune=False`` computes every D (for plots of D against xmin).
    """
    N = len(data)
    Ds = np.ones(N - 1, dtype=np.float64)
    cand = np.nonzero(valid)[0]
    if cand.size == 0:
        return Ds
    if not prune or N < 4 * _KS_STRIDE:
        _ks_exact(log_data, alphas, cand, Ds)
        return Ds
    cols = np.arange(0, N, _KS_STRIDE)
    bound = np.zeros(N - 1, dtype=np.float64)
    step = max(1, _BLOCK_ELEMS // len(cols))
    for b in range(0, cand.size, step):
        ii = cand[b : b + step]
        L = _ks_rows(log_data, alphas, ii, cols)
        L[cols[None, :] < ii[:, None]] = 0.0  # points left of a candidate's start
        bound[ii] = L.max(axis=1)
    # An infinite alpha (a tail of equal values) gives D = NaN, which argmin picks before any
    # number: if there is one, nothing else matters. The shortest tails are computed first
    # (their bounds see few points, their exact D costs little) for a first upper bound.
    first = ~np.isfinite(alphas[cand]) | (cand >= N - 4 * _KS_STRIDE)
    _ks_exact(log_data, alphas, cand[first], Ds)
    Ds[cand[~first]] = np.inf
    upper = float(np.min(Ds[cand[first]])) if first.any() else np.inf
    if np.isnan(upper):
        return Ds
    rest = cand[~first]
    rest = rest[np.argsort(bound[rest], kind="stable")]
    for b in range(0, rest.size, _KS_BATCH):  # branch and bound, lowest bounds first
        if bound[rest[b]] > upper:
            break
        batch = np.sort(rest[b : b + _KS_BATCH])
        _ks_exact(log_data, alphas, batch, Ds)
        upper = min(upper, float(np.min(Ds[batch])))
    return Ds


def _fit_standard(data: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    N = len(data)
    log_data = np.log(data)
    s = _tail_sums(log_data)
    n = (N - np.arange(N - 1)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / s
    valid = alphas > 1.0
    Ds = _ks_distances(data, log_data, alphas, valid)
    best = int(np.argmin(Ds))
    return best, alphas, Ds, n


def _fit_small(data: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """WeightWatcher 0.7.7's small-sample fit, as it behaves.

    Candidates need a tail of >= 8 points; alpha is bias-corrected, 1 + (n - 1) / s. WW's
    ``fit_powerlaw_smallN`` ranks candidates by J = D - 0.868 / sqrt(n), but ``WWFit.__init__``
    then re-selects ``argmin(D)`` over the same arrays, so the reported fit is the minimum-D
    candidate; we reproduce that. When no candidate qualifies the whole sample is the tail.
    """
    N = len(data)
    log_data = np.log(data)
    s = _tail_sums(log_data)
    n = (N - np.arange(N - 1)).astype(np.float64)
    ok = (n >= SMALL_N_KMIN) & (s > 1e-12)
    alphas = np.zeros(N - 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas[ok] = 1.0 + (n[ok] - 1.0) / s[ok]
    valid = ok & (alphas > 1.0)
    Ds = _ks_distances(data, log_data, alphas, valid)
    if valid.any():
        return int(np.argmin(Ds)), alphas, Ds, n
    # no candidate qualified: the whole sample is the tail
    if s[0] <= 1e-12:
        return -1, alphas, Ds, n  # all eigenvalues equal: no power law
    alphas[0] = 1.0 + (N - 1.0) / s[0]
    first = np.zeros(N - 1, dtype=bool)
    first[0] = alphas[0] > 1.0
    Ds[0] = _ks_distances(data, log_data, alphas, first)[0]
    return 0, alphas, Ds, n


def _fit_sorted(data: np.ndarray) -> PowerLawFit:
    """Fit data that is sorted ascending and strictly above the threshold."""
    N = len(data)
    if N < 2:
        return _failed(float(data[-1]) if N else float("nan"))
    if N < SMALL_N_CUTOFF:
        best, alphas, Ds, n = _fit_small(data)
    else:
        best, alphas, Ds, n = _fit_standard(data)
    if best < 0:  # all eigenvalues equal: WW reports alpha 0 here; no power law exists
        return _failed(float(data[-1]))
    sigmas = (alphas - 1.0) / np.sqrt(n)
    alpha, sigma, D = float(alphas[best]), float(sigmas[best]), float(Ds[best])
    xmin, n_tail = float(data[best]), int(n[best])
    fit = PowerLawFit(
        alpha=alpha,
        xmin=xmin,
        xmax=float(data[-1]),
        D=D,
        sigma=sigma,
        num_pl_spikes=n_tail,
        n_tail=n_tail,
        status="success",
        candidates={"xmins": data[:-1], "alphas": alphas, "Ds": Ds},
    )
    if not np.isfinite(fit.alpha):
        return _failed(float(data[-1]))
    return fit


def _clip_xmax(data: np.ndarray, max_fingers: int, finger_thresh: float) -> PowerLawFit:
    """WeightWatcher's ``fix_fingers='clip_xmax'``: clip the top eigenvalues while alpha drops.

    Fit the full tail, then refit with the k largest eigenvalues removed, k = 2 .. max_fingers-1;
    the first clipped fit whose alpha is lower by more than ``finger_thresh`` wins (with
    ``num_fingers = k - 1``); the search stops early when a clipped alpha falls to 2 or below.
    """
    first = _fit_sorted(data)
    if first.status != "success":
        return first
    best, fingers = first, 0
    for k in range(2, max_fingers):
        if len(data) - k < 2:
            break
        fit = _fit_sorted(data[:-k])
        if fit.status != "success":
            break
        if fit.alpha + finger_thresh < first.alpha:
            best, fingers = fit, k - 1
            break
        if fit.alpha <= OVER_TRAINED_ALPHA:
            break
    best.num_fingers = fingers
    best.raw_alpha = first.alpha
    return best


#: fix_fingers='xmin_peak': bins of the log-histogram whose peak sets the xmin range, and how
#: far above the peak xmin may go (WeightWatcher 0.7.7's values)
PEAK_BINS = 100
PEAK_XMIN_MAX = 1.5


def xmin_peak_range(evals: np.ndarray, thresh: float = EVALS_THRESH) -> tuple[float, float]:
    """WeightWatcher 0.7.7's xmin range for ``fix_fingers='xmin_peak'``.

    The peak is the left edge of the most populated of 100 bins of log10(evals > thresh);
    WW then searches xmin in (log10(0.95 peak), 1.5 peak). The lower end mixes a log10 with
    linear eigenvalues (as WW computes it); with the usual eigenvalue scales it lies below
    every eigenvalue, so in effect xmin ranges over the eigenvalues up to 1.5 x the peak.

    Returns:
        ``(low, high)`` as WW passes them to ``powerlaw.Fit(xmin=...)``.
    """
    ev = np.asarray(evals, dtype=np.float64)
    nz = ev[ev > thresh]
    counts, edges = np.histogram(np.log10(nz), bins=PEAK_BINS)
    peak = 10 ** edges[int(np.argmax(counts))]
    return float(np.log10(0.95 * peak)), float(PEAK_XMIN_MAX * peak)


def candidate_xmins(data: np.ndarray, xmin_range: tuple[float, float] | None) -> np.ndarray:
    """Indices (into sorted ``data``) of the distinct values tried as xmin, as ``powerlaw``
    1.5 picks them: the first index of each distinct value (within ``xmin_range`` if given),
    the largest such value left out."""
    if xmin_range is None:
        pool = np.arange(len(data))
    else:
        lo, hi = min(xmin_range), max(xmin_range)
        pool = np.nonzero((data >= lo) & (data <= hi))[0]
    _, first = np.unique(data[pool], return_index=True)
    return pool[first][:-1]


def _fit_xmin_peak(data: np.ndarray) -> PowerLawFit:
    """WeightWatcher's ``fix_fingers='xmin_peak'`` (through the ``powerlaw`` package): xmin
    searched only among the eigenvalues up to 1.5 x the peak of the ESD's log-histogram
    (:func:`xmin_peak_range`), with the plain estimator at every size
    (``powerlaw`` has no small-sample branch)."""
    N = len(data)
    if N < 2:
        return _failed(float(data[-1]) if N else float("nan"))
    cand = candidate_xmins(data, xmin_peak_range(data, 0.0))
    if cand.size == 0:
        return _failed(float(data[-1]))
    log_data = np.log(data)
    s = _tail_sums(log_data)
    n = (N - np.arange(N - 1)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / s
    valid = np.zeros(N - 1, dtype=bool)
    valid[cand] = alphas[cand] > 1.0
    if not valid.any():
        return _failed(float(data[-1]))
    Ds = _ks_distances(data, log_data, alphas, valid, prune=False)
    Ds[~valid] = np.inf
    best = int(np.argmin(Ds))
    alpha = float(alphas[best])
    if not np.isfinite(alpha):
        return _failed(float(data[-1]))
    return PowerLawFit(
        alpha=alpha,
        xmin=float(data[best]),
        xmax=float(data[-1]),
        D=float(Ds[best]),
        sigma=float((alpha - 1.0) / np.sqrt(n[best])),
        num_pl_spikes=int(n[best]),
        n_tail=int(n[best]),
        status="success",
        candidates={"xmins": data[:-1], "alphas": alphas, "Ds": Ds},
    )


def fit_powerlaw(
    evals: np.ndarray,
    *,
    fix_fingers: str | None = None,
    max_fingers: int = DEFAULT_MAX_FINGERS,
    finger_thresh: float = DEFAULT_FINGER_THRESH,
    thresh: float = EVALS_THRESH,
) -> PowerLawFit:
    """Fit a power law to the tail of an ESD, as WeightWatcher 0.7.7 does.

    Args:
        evals: eigenvalues (any order); values <= ``thresh`` are ignored.
        fix_fingers: None; "clip_xmax" to clip "fingers" (a few outsized eigenvalues); or
            "xmin_peak" to search xmin only up to 1.5 x the ESD's peak (see
            :func:`_fit_xmin_peak`).
        max_fingers: with clip_xmax, the most eigenvalues that may be clipped.
        finger_thresh: with clip_xmax, how much alpha must drop to accept clipping.
        thresh: eigenvalues at or below this are dropped before fitting.

    Returns:
        A :class:`PowerLawFit`; ``num_pl_spikes`` counts eigenvalues >= xmin among all
        ``evals`` given.

    Raises:
        ValueError: unknown ``fix_fingers``.
    """
    ev = np.sort(np.asarray(evals, dtype=np.float64).ravel())
    if not np.isfinite(ev).all():
        return _failed()
    data = ev[ev > thresh]
    if fix_fingers in (None, False, ""):
        fit = _fit_sorted(data)
    elif fix_fingers == "clip_xmax":
        fit = _clip_xmax(data, max_fingers, finger_thresh)
    elif fix_fingers == "xmin_peak":
        fit = _fit_xmin_peak(data)
    else:
        raise ValueError(
            f"fix_fingers must be None, 'clip_xmax' or 'xmin_peak', got {fix_fingers!r}"
        )
    if fit.status == "success":
        fit.num_pl_spikes = int(np.count_nonzero(ev >= fit.xmin))
    return fit


def alpha_warning(alpha: float) -> str:
    """WeightWatcher's training-quality warning for an alpha: over-/under-trained or ""."""
    if not np.isfinite(alpha):
        return ""
    if alpha < OVER_TRAINED_ALPHA:
        return "over-trained"
    if alpha > UNDER_TRAINED_ALPHA:
        return "under-trained"
    return ""


__all__ = ["EVALS_THRESH", "PowerLawFit", "alpha_warning", "fit_powerlaw"]
