"""Random-matrix theory: Marchenko-Pastur (MP) bulk fits and randomized ESDs.

Definitions follow WeightWatcher 0.7.7 (``mp_fit`` and ``randomize``):

* The ESD is rescaled to mean 1 (W_scale^2 = n / sum(lambda)); a kernel density estimate (linear
  kernel, bandwidth 0.1, 1000 points on [0, lambda_max + 0.5]) is compared with the MP density
  of aspect ratio Q and scale sigma; sigma is found by a grid search over
  [0.05, 2) x sigma_0 in steps of 0.01 sigma_0 (sigma_0 from lambda_max), polished by
  Nelder-Mead, minimizing the squared residual. For Q = 1 the quarter-circle law is fitted to
  the singular values instead.
* bulk_max = (sigma (1 + 1/sqrt(Q)))^2, bulk_min = (sigma (1 - 1/sqrt(Q)))^2; a spike is an
  eigenvalue above bulk_max + sqrt(TW), TW = Q^(-1/2) bulk_max^(2/3) M^(-2/3) (Tracy-Widom
  width), all in the rescaled units; mp_softrank = bulk_max / lambda_max. The reported
  bulk_max / bulk_min are converted back to the ESD's own units (divided by W_scale^2), as WW
  reports them, so they compare with lambda_max.
* Randomized ESD: the matrix's entries shuffled (a seeded permutation), which destroys
  correlations but keeps the entry distribution; ``rand_distance`` is the Jensen-Shannon
  distance between the sorted ESD and the sorted randomized ESD (as WW: the eigenvalue
  vectors themselves normalized as distributions), ``ww_softrank`` = max rand / max ESD,
  ``ww_maxdist`` = max ESD - max rand, and the MP fit of the randomized ESD gives
  ``rand_num_spikes`` (correlation traps).

The KDE does not depend on sigma, so it is computed once per fit (WW recomputes it for
every grid point), which makes the fit about two orders of magnitude faster.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import optimize

from spectune.watch.esd import eigenvalues

_KDE_POINTS = 1000
_KDE_BW = 0.1
_KDE_FLOOR = 0.01


def linear_kde(samples: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Density at ``grid`` of a linear (triangular) kernel estimate, normalized to integrate to 1.

    K_h(u) = max(0, 1 - |u| / h) / h. Sorted samples and cumulative sums make it
    O((n + g) log n) instead of O(n g).
    """
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)
    h = float(bandwidth)
    c0 = np.concatenate([[0.0], np.cumsum(np.ones_like(x))])
    c1 = np.concatenate([[0.0], np.cumsum(x)])
    lo = np.searchsorted(x, grid - h, side="right")
    mid = np.searchsorted(x, grid, side="right")
    hi = np.searchsorted(x, grid + h, side="left")
    # samples in (g - h, g]: weight 1 - (g - x)/h ; samples in (g, g + h): 1 - (x - g)/h
    cnt_l, sum_l = c0[mid] - c0[lo], c1[mid] - c1[lo]
    cnt_r, sum_r = c0[hi] - c0[mid], c1[hi] - c1[mid]
    left = cnt_l - (grid * cnt_l - sum_l) / h
    right = cnt_r - (sum_r - grid * cnt_r) / h
    return (left + right) / (n * h)


def mp_density(x: np.ndarray, Q: float, sigma: float) -> tuple[np.ndarray, float, float]:
    """Marchenko-Pastur density for aspect ratio Q >= 1 and scale sigma; returns (pdf, a, b)."""
    b = (sigma * (1 + np.sqrt(1 / Q))) ** 2
    a = (sigma * (1 - np.sqrt(1 / Q))) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.sqrt((b - x) * (x - a)) / (2 * np.pi * sigma * sigma * x / Q)
    return np.nan_to_num(val), a, b


def quarter_circle_density(x: np.ndarray, sigma: float) -> np.ndarray:
    """Quarter-circle density of singular values (Q = 1)."""
    with np.errstate(invalid="ignore"):
        val = np.sqrt(4 - x**2) / (np.pi * sigma * sigma)
    return np.nan_to_num(val)


def _fit_sigma(to_fit: np.ndarray, Q: float, sigma0: float) -> float:
    grid = np.linspace(0, np.max(to_fit) + 0.5, _KDE_POINTS)
    dens = linear_kde(to_fit, grid, _KDE_BW)
    good = dens > _KDE_FLOOR
    xde, yde = grid[good], dens[good]
    x_peak = xde[np.argmax(yde)]

    def loss(p: np.ndarray) -> float:
        sigma = float(np.ravel(p)[0])
        if Q == 1:
            resid = quarter_circle_density(xde, sigma) - yde
        else:
            ymp, a, b = mp_density(xde, Q, sigma)
            if b < x_peak or b > xde.max() or a > x_peak:
                return 1000.0**2 * len(yde)
            resid = ymp - yde
        return float(np.sum(resid**2))

    grid_sigma = np.arange(0.05 * sigma0, 2.0 * sigma0, 0.01 * sigma0)
    losses = np.array([loss(np.array([s])) for s in grid_sigma])
    start = grid_sigma[int(np.argmin(losses))]
    polished = optimize.fmin(loss, np.array([start]), disp=False)
    return float(polished[0])


def mp_fit(evals: np.ndarray, N: int, M: int) -> dict[str, float]:
    """Fit the MP bulk to an ESD and count the spikes outside it.

    Args:
        evals: the ESD (eigenvalues of W^T W).
        N: the matrix's larger dimension.
        M: its smaller dimension.

    Returns:
        dict with num_spikes, sigma_mp, mp_softrank and W_scale (sigma_mp in the rescaled units,
        where the ESD has mean 1), and bulk_max, bulk_min in the units of ``evals`` (WW's).
    """
    ev = np.sort(np.asarray(evals, dtype=np.float64))
    Q = N / M
    nan = float("nan")
    total = float(np.sum(ev))
    if len(ev) < 2 or total <= 0 or not np.isfinite(total):
        return dict(
            num_spikes=nan, sigma_mp=nan, mp_softrank=nan, bulk_max=nan, bulk_min=nan, W_scale=nan
        )
    w_scale = np.sqrt(len(ev)) / np.sqrt(total)
    scaled = ev * w_scale**2
    lambda_max = float(scaled.max())
    sigma0 = np.sqrt(lambda_max) / (1 + 1 / np.sqrt(Q))
    to_fit = np.sqrt(scaled) if Q == 1 else scaled
    sigma = _fit_sigma(to_fit, Q, sigma0)
    bulk_max = (sigma * (1 + 1 / np.sqrt(Q))) ** 2
    bulk_min = (sigma * (1 - 1 / np.sqrt(Q))) ** 2
    tw = 1 / np.sqrt(Q) * bulk_max ** (2 / 3) * M ** (-2 / 3)
    num_spikes = int(np.count_nonzero(scaled > bulk_max + np.sqrt(tw)))
    return dict(
        num_spikes=num_spikes,
        sigma_mp=sigma,
        mp_softrank=bulk_max / lambda_max,
        bulk_max=bulk_max / w_scale**2,
        bulk_min=bulk_min / w_scale**2,
        W_scale=float(w_scale),
    )


def shuffled(W: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """W with its entries randomly permuted (same shape, same entry distribution)."""
    flat = W.reshape(-1)
    return flat[torch.randperm(flat.numel(), generator=generator)].reshape(W.shape)


def randomized_metrics(
    mats: list[torch.Tensor],
    evals: np.ndarray,
    N: int,
    M: int,
    *,
    seed: int,
    scale: float = 1.0,
    precision: str = "float64",
) -> dict[str, float]:
    """WeightWatcher's randomized-ESD columns for one layer.

    Args:
        mats: the layer's matrices (one for dense layers, kh*kw for Conv2D).
        evals: the layer's ESD.
        N, M: dimensions of one matrix (N >= M).
        seed: seed of the shuffles (recorded by the caller).
        scale: the matrix scale applied to ``evals`` (Conv2D normalization).
        precision: eigenvalue precision.

    Returns:
        dict with max_rand_eval, rand_distance, ww_softrank, ww_maxdist and the MP fit of the
        randomized ESD as rand_num_spikes, num_traps, rand_sigma_mp, rand_mp_softrank,
        rand_W_scale, rand_bulk_max, rand_bulk_min. With fewer than 100 eigenvalues per matrix
        the randomized ESD pools 5 shuffles (as WW).
    """
    gen = torch.Generator().manual_seed(int(seed))
    replicas = 5 if M < 100 else 1
    runs = []
    for _ in range(replicas):
        ev = [eigenvalues(shuffled(m, gen), precision=precision) for m in mats]
        runs.append(np.concatenate(ev) * scale * scale)
    rand = np.sort(np.concatenate(runs))
    first = np.sort(runs[0])
    ev_sorted = np.sort(np.asarray(evals, dtype=np.float64))
    out: dict[str, float] = {"max_rand_eval": float(rand.max())}
    if len(first) == len(ev_sorted) and ev_sorted.sum() > 0:
        p = ev_sorted / ev_sorted.sum()
        q = first / first.sum()
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            kl_p = np.nansum(np.where(p > 0, p * np.log(p / m), 0.0))
            kl_q = np.nansum(np.where(q > 0, q * np.log(q / m), 0.0))
        out["rand_distance"] = float(np.sqrt(max((kl_p + kl_q) / 2, 0.0)))
    else:
        out["rand_distance"] = float("nan")
    out["ww_softrank"] = (
        float(first.max() / ev_sorted.max()) if ev_sorted.max() > 0 else float("nan")
    )
    out["ww_maxdist"] = float(ev_sorted.max() - first.max())
    fit = mp_fit(rand, N, M)
    out.update(
        rand_num_spikes=fit["num_spikes"],
        num_traps=fit["num_spikes"],
        rand_sigma_mp=fit["sigma_mp"],
        rand_mp_softrank=fit["mp_softrank"],
        rand_W_scale=fit["W_scale"],
        rand_bulk_max=fit["bulk_max"],
        rand_bulk_min=fit["bulk_min"],
    )
    return out


def marchenko_pastur_matrix(N: int, M: int, sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    """A Gaussian N x M matrix with entry variance sigma^2 / N: its ESD follows MP(Q = N/M)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, M)) * sigma / np.sqrt(N)


__all__ = [
    "linear_kde",
    "marchenko_pastur_matrix",
    "mp_density",
    "mp_fit",
    "randomized_metrics",
]
