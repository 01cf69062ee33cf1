"""The speed paths give the answers of the plain ones: pruned KS search, direct sytrd + sterf."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from spectune.watch import powerlaw as pl
from spectune.watch._lapack import eigvalsh_upper


def _candidates(ev: np.ndarray):
    data = np.sort(ev[ev > pl.EVALS_THRESH])
    n = len(data)
    log_data = np.log(data)
    s = pl._tail_sums(log_data)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + (n - np.arange(n - 1)) / s
    return data, log_data, alphas, alphas > 1.0


def _spectra():
    rng = np.random.default_rng(7)
    out = []
    for n, m in ((1000, 500), (300, 300), (2000, 100), (900, 64)):  # Marchenko-Pastur
        x = rng.standard_normal((n, m))
        out.append(np.linalg.eigvalsh(x.T @ x))
    for a in (1.5, 2.5, 4.0, 7.0):  # planted power laws
        out.append(rng.pareto(a - 1.0, size=800) + 1.0)
    for _ in range(12):  # bulk plus a heavy tail, of several sizes
        bulk = rng.uniform(0.1, 1.0, size=rng.integers(64, 600))
        tail = rng.pareto(rng.uniform(1.5, 5.0), size=rng.integers(10, 200)) + 1.0
        out.append(np.r_[bulk, tail])
    for decimals in (1, 2):  # many equal values: equal D values, equal-value tails
        out.append(np.round(rng.pareto(2.0, size=500) + 1.0, decimals))
    out.append(np.r_[np.linspace(1.0, 2.0, 100), [5.0, 5.0, 5.0]])  # alpha = inf at the top
    out.append(np.r_[np.linspace(1.0, 2.0, 100), np.full(40, 5.0)])
    return out


@pytest.mark.parametrize("k", range(len(_spectra())))
def test_pruned_ks_search_picks_the_same_xmin_and_D_as_the_full_table(k):
    data, log_data, alphas, valid = _candidates(_spectra()[k])
    full = pl._ks_distances(data, log_data, alphas, valid, prune=False)
    pruned = pl._ks_distances(data, log_data, alphas, valid)
    i_full, i_pruned = int(np.argmin(full)), int(np.argmin(pruned))
    assert i_pruned == i_full
    np.testing.assert_array_equal(pruned[i_pruned], full[i_full])  # bit for bit, NaN included
    computed = np.isfinite(pruned) & (pruned < 1.0)
    np.testing.assert_array_equal(pruned[computed], full[computed])
    assert np.all(np.isinf(pruned[~computed & valid]) | np.isnan(full[~computed & valid]) |
                  (full[~computed & valid] >= 1.0))  # fmt: skip


def test_pruning_skips_most_candidates_of_a_real_sized_spectrum():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1536, 576))
    ev = np.r_[np.linalg.eigvalsh(x.T @ x)[:-20], (rng.pareto(2.0, 20) + 1.0) * 5000.0]
    data, log_data, alphas, valid = _candidates(ev)
    pruned = pl._ks_distances(data, log_data, alphas, valid)
    computed = np.count_nonzero(np.isfinite(pruned))
    assert computed < 0.5 * valid.sum(), computed


def test_a_tail_of_equal_values_still_fails_the_fit_with_pruning():
    # the top three eigenvalues are equal: that candidate's alpha is infinite and its D NaN;
    # WW's argmin picks it, so the fit fails (alpha NaN) with or without pruning
    ev = np.r_[np.linspace(1.0, 2.0, 100), [5.0, 5.0, 5.0]]
    assert pl.fit_powerlaw(ev).status == "failed"


@pytest.mark.parametrize(
    "dtype, scale",
    # near the ends of each range, where syevr would rescale first
    [(np.float64, s) for s in (1.0, 1e-300, 1e300)] + [(np.float32, s) for s in (1.0, 1e-33, 1e33)],
)
def test_sytrd_sterf_eigenvalues_match_scipy_evr_across_scales(dtype, scale):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 120))
    g = (x.T @ x) * scale
    ref = scipy.linalg.eigvalsh(g.astype(np.float64))
    c = np.asfortranarray(np.triu(g).astype(dtype))
    ours = np.sort(eigvalsh_upper(c)).astype(np.float64)
    tol = 1e-13 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(ours, ref, rtol=0, atol=tol * ref.max())
    assert np.all(np.isfinite(ours))


def test_sytrd_sterf_small_sizes():
    assert eigvalsh_upper(np.zeros((0, 0), order="F")).shape == (0,)
    np.testing.assert_array_equal(eigvalsh_upper(np.full((1, 1), 4.0, order="F")), [4.0])
    c = np.asfortranarray([[2.0, 1.0], [0.0, 2.0]])  # upper triangle of [[2, 1], [1, 2]]
    np.testing.assert_allclose(np.sort(eigvalsh_upper(c)), [1.0, 3.0], rtol=1e-15)
