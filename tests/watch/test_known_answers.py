"""Known answers from random-matrix theory and planted power laws.

* Marchenko-Pastur (MP): a Gaussian N x M matrix with entry variance 1/N has an ESD (of W^T W)
  on [(1 - 1/sqrt(Q))^2, (1 + 1/sqrt(Q))^2], Q = N/M, with mean 1 and no heavy tail.
* Planted spikes: adding theta u v^T (unit u, v) with theta above the BBP threshold puts one
  eigenvalue outside the bulk, at (1 + theta^2)(y + theta^2) / theta^2 with y = 1/Q
  (Benaych-Georges & Nadakuditi).
* Planted power laws: eigenvalues drawn from p(x) ~ x^-alpha give back alpha.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from spectune.watch import analyze, fit_powerlaw
from spectune.watch.rmt import mp_fit

from .conftest import matrix_with_singular_values, mp_matrix, pareto_sample


def mp_cdf(x: np.ndarray, Q: float) -> np.ndarray:
    """CDF of the MP law of W^T W (entry variance 1/N, Q = N/M > 1), by quadrature.

    Density (written here independently of spectune's): sqrt((b - x)(x - a)) / (2 pi y x),
    y = 1/Q, a, b = (1 -/+ sqrt(y))^2.
    """
    y = 1.0 / Q
    a, b = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2

    def pdf(t: float) -> float:
        return math.sqrt(max((b - t) * (t - a), 0.0)) / (2 * math.pi * y * t)

    out = []
    for v in x:
        v = min(max(v, a), b)
        out.append(integrate.quad(pdf, a, v, limit=200)[0])
    return np.asarray(out)


def analyze_matrix(W, **kwargs):
    """analyze() on a one-matrix state dict; returns the single row."""
    details = analyze({"block.proj.weight": torch.as_tensor(W)}, progress=False, **kwargs)
    assert len(details) == 1
    return details.iloc[0]


# ---------------------------------------------------------------------------------------------
# Marchenko-Pastur
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("N", "M", "seed"), [(1000, 500, 0), (800, 400, 2), (600, 600, 3)])
def test_mp_random_matrix_has_bulk_edge_and_no_heavy_tail(N, M, seed):
    W = mp_matrix(N, M, seed)
    row = analyze_matrix(W, mp_fit=True)
    Q = N / M
    lam_plus = (1 + 1 / math.sqrt(Q)) ** 2
    lam_minus = (1 - 1 / math.sqrt(Q)) ** 2
    assert row["N"] == N and row["M"] == M and row["Q"] == pytest.approx(Q)
    assert row["num_evals"] == M and row["status"] == "success"
    # largest eigenvalue at the bulk edge; Tracy-Widom fluctuations are O(M^(-2/3)) ~ 2%
    assert row["lambda_max"] == pytest.approx(lam_plus, rel=0.06)
    if Q > 1:
        assert row["sv_min"] ** 2 == pytest.approx(lam_minus, abs=0.04)
    # mean eigenvalue sum(W_ij^2) / M = 1 up to sqrt(2 / (N M))
    assert row["norm"] / M == pytest.approx(1.0, abs=0.01)
    # no heavy tail: a large alpha, and the under-trained warning exactly when alpha > 6
    assert row["alpha"] > 4
    assert ("under-trained" in row["warning"]) == (row["alpha"] > 6)
    assert "over-trained" not in row["warning"]
    # MP fit: scale 1, no spikes, bulk edge near lambda_+, entries not rescaled
    assert row["sigma_mp"] == pytest.approx(1.0, abs=0.03)
    assert row["num_spikes"] == 0
    assert row["bulk_max"] == pytest.approx(lam_plus, rel=0.05)
    assert row["W_scale"] == pytest.approx(1.0, abs=0.01)
    # bulk_max is in the ESD's units (WW's), so the soft rank is bulk_max / lambda_max
    assert row["mp_softrank"] == pytest.approx(row["bulk_max"] / row["lambda_max"], rel=1e-9)
    assert row["bulk_min"] == pytest.approx(lam_minus, abs=0.03)


@pytest.mark.parametrize(("N", "M", "seed"), [(900, 300, 5)])
def test_mp_esd_follows_the_marchenko_pastur_law(N, M, seed):
    """Kolmogorov-Smirnov distance between the computed ESD and the MP CDF is small."""
    from spectune.watch import eigenvalues

    ev = eigenvalues(torch.from_numpy(mp_matrix(N, M, seed)))
    assert ev.shape == (M,) and np.all(np.diff(ev) >= 0)
    empirical = (np.arange(M) + 0.5) / M
    ks = np.max(np.abs(mp_cdf(ev, N / M) - empirical))
    assert ks < 0.03, ks
    # and a matrix with a different aspect ratio is far from this law (the test can fail)
    assert np.max(np.abs(mp_cdf(ev, 4 * N / M) - empirical)) > 0.1


@pytest.mark.parametrize(("N", "M", "n_spikes", "seed"), [(1000, 500, 1, 0), (800, 400, 4, 2),
                                                         (500, 500, 2, 3)])  # fmt: skip
def test_planted_spikes_are_counted(N, M, n_spikes, seed):
    rng = np.random.default_rng(1000 + seed)
    W = mp_matrix(N, M, seed)
    thetas = 3.0 + np.arange(n_spikes)
    for theta in thetas:
        u = rng.standard_normal(N)
        v = rng.standard_normal(M)
        W = W + theta * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    row = analyze_matrix(W, mp_fit=True)
    assert row["num_spikes"] == n_spikes
    # the outliers sit where spiked-model theory puts them (y = M / N)
    from spectune.watch import eigenvalues

    ev = eigenvalues(torch.from_numpy(W))
    y = M / N
    expected = np.sort((1 + thetas**2) * (y + thetas**2) / thetas**2)
    np.testing.assert_allclose(ev[-n_spikes:], expected, rtol=0.05)
    assert ev[-n_spikes - 1] < (1 + math.sqrt(y)) ** 2 * 1.06  # the rest stays in the bulk
    assert row["lambda_max"] == pytest.approx(ev[-1], rel=1e-12)


def test_mp_fit_without_spikes_on_a_pure_bulk_and_with_one_spike():
    """mp_fit directly: counting is against bulk_max + sqrt(Tracy-Widom width)."""
    N, M = 1000, 500
    from spectune.watch import eigenvalues

    ev = eigenvalues(torch.from_numpy(mp_matrix(N, M, 7)))
    fit = mp_fit(ev, N, M)
    assert fit["num_spikes"] == 0
    # one eigenvalue planted far outside the bulk is the only spike
    planted = ev.copy()
    planted[-1] = 20.0
    fit = mp_fit(planted, N, M)
    assert fit["num_spikes"] == 1
    scaled = planted * fit["W_scale"] ** 2
    assert scaled.mean() == pytest.approx(1.0, rel=1e-12)  # W_scale rescales to mean 1
    bulk_max = fit["bulk_max"] * fit["W_scale"] ** 2  # in the rescaled units
    assert bulk_max == pytest.approx((fit["sigma_mp"] * (1 + 1 / math.sqrt(N / M))) ** 2)
    tw = (1 / math.sqrt(N / M)) * bulk_max ** (2 / 3) * M ** (-2 / 3)
    assert int(np.sum(scaled > bulk_max + math.sqrt(tw))) == 1
    assert fit["mp_softrank"] == pytest.approx(bulk_max / scaled.max(), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Planted power laws
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.8, 2.0, 2.5, 3.0, 3.5, 4.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_planted_alpha(alpha, seed):
    x = pareto_sample(2000, alpha, xmin=0.5, seed=seed)
    fit = fit_powerlaw(x)
    assert fit.status == "success"
    assert abs(fit.alpha - alpha) < 0.1, (fit.alpha, alpha)
    assert fit.xmin >= 0.5 and fit.xmin in x
    assert fit.num_pl_spikes == int(np.sum(x >= fit.xmin)) == fit.n_tail
    assert fit.sigma == pytest.approx((fit.alpha - 1) / math.sqrt(fit.n_tail), rel=1e-12)
    assert fit.xmax == x[-1]


@pytest.mark.parametrize("alpha", [1.8, 2.0, 2.5, 3.0, 4.0, 5.0])
def test_fit_on_exact_power_law_quantiles(alpha):
    """Noise-free planted law (stratified quantiles): the whole sample is the tail and alpha
    is recovered to a few thousandths (a fit that ignored its input would fail here)."""
    n = 2000
    u = (np.arange(n) + 0.5) / n
    x = np.sort(0.5 * u ** (-1.0 / (alpha - 1.0)))
    fit = fit_powerlaw(x)
    assert abs(fit.alpha - alpha) < 0.005 * alpha
    assert fit.xmin == x[0] and fit.n_tail == n
    assert fit.D < 0.01


def test_analyze_recovers_planted_alpha_from_a_matrix():
    """A matrix with exactly the planted spectrum (random orthogonal U, V) gives alpha back."""
    alpha, M, N = 2.5, 1000, 1200
    x = pareto_sample(M, alpha, xmin=0.5, seed=11)
    W = matrix_with_singular_values(np.sqrt(x), N, seed=11)
    row = analyze_matrix(W)
    assert abs(row["alpha"] - alpha) < 0.1
    exact = fit_powerlaw(x)  # the fit on the exact eigenvalues
    assert row["alpha"] == pytest.approx(exact.alpha, abs=1e-6)
    assert row["xmin"] == pytest.approx(exact.xmin, rel=1e-8)
    assert row["D"] == pytest.approx(exact.D, abs=1e-6)
    assert row["lambda_max"] == pytest.approx(x[-1], rel=1e-10)
    assert row["norm"] == pytest.approx(x.sum(), rel=1e-10)
    assert row["warning"] == ""
    row32 = analyze_matrix(W.float(), precision="float32")
    assert abs(row32["alpha"] - row["alpha"]) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.0])
def test_analyze_recovers_planted_alpha_large(alpha):
    M, N = 2000, 2500
    x = pareto_sample(M, alpha, xmin=1.0, seed=int(alpha * 10))
    row = analyze_matrix(matrix_with_singular_values(np.sqrt(x), N, seed=3))
    assert abs(row["alpha"] - alpha) < 0.1
    assert row["alpha"] == pytest.approx(fit_powerlaw(x).alpha, abs=1e-6)
