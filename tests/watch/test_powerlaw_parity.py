"""Power-law fit parity with WeightWatcher 0.7.7 on the same eigenvalues.

WW's ``WWFit`` (default fit) and ``RMT_Util.fit_clipped_powerlaw`` (``fix_fingers="clip_xmax"``)
are run on exactly the eigenvalues spectune fits (sorted, > 1e-5).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from spectune.watch.powerlaw import EVALS_THRESH, fit_powerlaw

from .conftest import pareto_sample, quiet


def random_spectrum(rng: np.random.Generator, n: int) -> np.ndarray:
    """A varied positive spectrum: Pareto tails, MP-like bulks, mixtures, a few tiny values."""
    kind = rng.integers(4)
    if kind == 0:
        x = pareto_sample(
            n, rng.uniform(1.5, 5.0), rng.uniform(0.01, 2.0), int(rng.integers(1 << 30))
        )
    elif kind == 1:
        x = (rng.standard_normal(n) * 0.3 + 1.0) ** 2 + 1e-3
    elif kind == 2:
        bulk = rng.uniform(0.1, 1.0, size=n)
        k = max(1, n // 10)
        bulk[:k] = rng.pareto(rng.uniform(1.0, 3.0), size=k) * 5 + 1
        x = bulk
    else:
        x = np.exp(rng.normal(0, rng.uniform(0.5, 3.0), size=n))
    x = x.copy()
    if n > 4 and rng.uniform() < 0.3:
        x[: rng.integers(1, 3)] = rng.choice([0.0, 1e-7, 2e-6])  # at or below EVALS_THRESH
    return np.sort(x)


def ww_fit(ww, data: np.ndarray):
    from weightwatcher.WW_powerlaw import WWFit

    with quiet():
        return WWFit(data)


def compare(ww, ev: np.ndarray, check_sigma: bool) -> None:
    data = np.sort(ev[ev > EVALS_THRESH])
    ref = ww_fit(ww, data)
    fit = fit_powerlaw(ev)
    assert fit.status == "success"
    assert fit.alpha == pytest.approx(ref.alpha, abs=1e-6, rel=1e-9)
    assert fit.xmin == pytest.approx(ref.xmin, abs=1e-12, rel=1e-12)
    assert fit.D == pytest.approx(ref.D, abs=1e-6)
    if check_sigma:
        assert fit.sigma == pytest.approx(ref.sigma, abs=1e-6)
    # (not len(ref.data): in the small-sample branch WW trims .data at the J-selected xmin
    # before re-selecting xmin by argmin D, so .data can be shorter than the reported tail)
    assert fit.n_tail == int(np.sum(data >= ref.xmin))
    assert fit.num_pl_spikes == int(np.sum(ev >= fit.xmin))
    assert fit.xmax == data[-1]


@pytest.mark.parametrize("seed", range(6))
def test_default_fit_matches_wwfit_standard_branch(ww, seed):
    rng = np.random.default_rng(seed)
    for n in [20, 21, 33, 64, 100, 257, 600]:
        for _ in range(3):
            compare(ww, random_spectrum(rng, n), check_sigma=True)


@pytest.mark.parametrize("seed", range(4))
def test_default_fit_matches_wwfit_small_sample_branch(ww, seed):
    """9 <= n < 20: WW's small-sample estimator (tails >= 8, bias-corrected alpha)."""
    rng = np.random.default_rng(100 + seed)
    for n in range(9, 20):
        for _ in range(6):
            ev = random_spectrum(rng, n)
            ev = ev[ev > EVALS_THRESH]  # keep n as the fitted size
            if len(ev) < 9:
                continue
            compare(ww, ev, check_sigma=True)


def test_small_sample_branch_is_really_taken(ww):
    """n in [9, 20): alpha is the bias-corrected 1 + (n - 1) / sum ln(x / xmin) of the tail."""
    x = pareto_sample(15, 2.5, 1.0, seed=5)
    fit = fit_powerlaw(x)
    tail = x[x >= fit.xmin]
    n = len(tail)
    assert n >= 8
    assert fit.alpha == pytest.approx(1 + (n - 1) / np.sum(np.log(tail / fit.xmin)), rel=1e-12)
    # the unbiased 1 + n / s of the standard branch differs
    assert abs(fit.alpha - (1 + n / np.sum(np.log(tail / fit.xmin)))) > 1e-3


@pytest.mark.parametrize("n", range(2, 9))
def test_tiny_samples_match_ww_alpha_xmin_D(ww, n):
    """n < 9: the whole sample is the tail. alpha/xmin/D agree with WW; sigma is documented
    to differ for n < 8 (WW reports -1/sqrt(n) from an array it fills too late)."""
    rng = np.random.default_rng(n)
    for _ in range(10):
        ev = np.sort(rng.pareto(2.0, size=n) + 0.1)
        ref = ww_fit(ww, ev)
        fit = fit_powerlaw(ev)
        assert fit.alpha == pytest.approx(ref.alpha, abs=1e-6)
        assert fit.xmin == pytest.approx(ref.xmin, rel=1e-12)
        assert fit.D == pytest.approx(ref.D, abs=1e-6)
        assert fit.xmin == ev[0] and fit.n_tail == n
        assert fit.sigma == pytest.approx((fit.alpha - 1) / math.sqrt(n), rel=1e-12)
        if n < 8:
            assert ref.sigma == pytest.approx(-1 / math.sqrt(n))  # WW's value, for the record


def test_failed_fits_are_nan_not_minus_one():
    one = fit_powerlaw(np.array([0.0, 1e-7, 3.0]))  # one eigenvalue above the threshold
    assert one.status == "failed" and math.isnan(one.alpha) and math.isnan(one.xmin)
    assert one.xmax == 3.0
    equal = fit_powerlaw(np.full(12, 2.0))  # no power law in equal values
    assert equal.status == "failed" and math.isnan(equal.alpha)
    nonfinite = fit_powerlaw(np.array([1.0, 2.0, np.nan, 4.0]))
    assert nonfinite.status == "failed"
    with pytest.raises(ValueError, match="fix_fingers"):
        fit_powerlaw(np.arange(1.0, 30.0), fix_fingers="peak")


def with_fingers(rng: np.random.Generator, n: int) -> np.ndarray:
    """A bulk (power law, log-normal or MP-like) plus 0-4 outsized eigenvalues ("fingers")."""
    k = int(rng.integers(0, 5))
    mode = int(rng.integers(3))
    if mode == 0:
        x = pareto_sample(n, rng.uniform(2.5, 5.0), 1.0, int(rng.integers(1 << 30)))
        if k:
            x[-k:] = x[-k - 1] * (1 + rng.uniform(0, 0.02, size=k)) * rng.uniform(1, 3)
    elif mode == 1:
        x = np.exp(rng.normal(0, 0.3, size=n))
        if k:
            x[-k:] = x.max() * rng.uniform(2, 4) * (1 + 0.01 * rng.uniform(size=k))
    else:
        x = (rng.standard_normal(n) * 0.3 + 1) ** 2
        if k:
            x[-k:] = np.max(x) * rng.uniform(1.5, 3, size=k)
    return np.sort(x)


@pytest.mark.parametrize("seed", range(3))
def test_clip_xmax_matches_ww_fit_clipped_powerlaw(ww, seed):
    from weightwatcher.RMT_Util import fit_clipped_powerlaw

    rng = np.random.default_rng(200 + seed)
    n_clipped = 0
    for _ in range(25):
        ev = with_fingers(rng, int(rng.choice([30, 80, 200])))
        data = ev[ev > EVALS_THRESH]
        with quiet():
            best, num_fingers, raw = fit_clipped_powerlaw(data)
        fit = fit_powerlaw(ev, fix_fingers="clip_xmax")
        assert fit.alpha == pytest.approx(best.alpha, abs=1e-6)
        assert fit.xmin == pytest.approx(best.xmin, rel=1e-12)
        assert fit.D == pytest.approx(best.D, abs=1e-6)
        assert fit.sigma == pytest.approx(best.sigma, abs=1e-6)
        assert fit.num_fingers == num_fingers
        assert fit.raw_alpha == pytest.approx(raw.alpha, abs=1e-6)
        assert fit.raw_alpha == pytest.approx(fit_powerlaw(ev).alpha, rel=1e-12)
        if num_fingers:
            n_clipped += 1
            # k = num_fingers + 1 eigenvalues clipped off; alpha dropped by > finger_thresh
            assert fit.xmax == data[-(num_fingers + 2)]
            assert fit.alpha + 1.0 < fit.raw_alpha
        else:
            assert fit.alpha == fit.raw_alpha and fit.xmax == data[-1]
    assert n_clipped >= 1  # the cases exercise the clipping, not just the plain fit
