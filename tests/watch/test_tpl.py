"""Truncated power-law fits, the PL-vs-TPL likelihood ratio, xmin_peak and detX/ERG.

Anchors: ``powerlaw`` 1.5 (what WeightWatcher 0.7.7's TPL fits run on) and WeightWatcher 0.7.7
itself, one layer at a time. They are imported directly: a missing anchor fails these tests.

Tolerance: our TPL fit runs the same Nelder-Mead (scipy ``fmin``, same start, same defaults)
on a closed-form likelihood; the objective differs from powerlaw's only in rounding (~1e-13
relative), so the simplex takes the same path and alpha/Lambda agree to ~1e-12 in practice.
We assert 1e-6 relative: a rounding difference that flips one simplex comparison could move
the result within fmin's own tolerance (xtol = ftol = 1e-4), which we have not seen.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import powerlaw
import pytest
import torch

from spectune.errors import SpectuneError
from spectune.watch import analyze
from spectune.watch.metrics import detx_columns
from spectune.watch.powerlaw import candidate_xmins, fit_powerlaw, xmin_peak_range
from spectune.watch.tpl import (
    ALPHA_AT_BOUND,
    compare_pl_tpl,
    fit_truncated_powerlaw,
    log_upper_gamma,
    log_upper_gamma_array,
)

from .conftest import matrix_with_singular_values, pareto_sample, quiet

RTOL = 1e-6


def tpl_sample(n: int, alpha: float, lam: float, xmin: float, seed: int) -> np.ndarray:
    """n draws of p(x) ~ x^-alpha exp(-lam x) on [xmin, inf) (rejection from a power law)."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    while len(out) < n:
        u = 1.0 - rng.uniform(size=4 * n)
        x = xmin * u ** (-1.0 / (alpha - 1.0))
        keep = rng.uniform(size=x.size) < np.exp(-lam * (x - xmin))
        out.extend(x[keep].tolist())
    return np.sort(np.asarray(out[:n]))


def powerlaw_tpl(data: np.ndarray, **kwargs) -> powerlaw.Fit:
    """powerlaw 1.5's TPL fit exactly as WeightWatcher 0.7.7 calls it."""
    with quiet():
        return powerlaw.Fit(data, xmax=None, verbose=False, distribution="truncated_power_law",
                            xmin_distribution="truncated_power_law", **kwargs)  # fmt: skip


def test_powerlaw_is_the_version_weightwatcher_needs():
    assert powerlaw.__version__ == "1.5"


@pytest.mark.parametrize("a", [-1e-9, -1e-4, -0.3, -0.9999999, -1.0, -1.5, -2.0, -4.7, 0.4, -150.0])
def test_log_upper_gamma_matches_mpmath(a):
    z = np.array([1e-8, 1e-3, 0.2, 0.999, 1.0, 1.5, 7.0, 60.0, 400.0])
    with mpmath.workdps(40):
        if a > -100:
            ref = [mpmath.gammainc(a, mpmath.mpf(float(x))) for x in z]
        else:  # mpmath's gammainc is unreliable this far out; integrate instead
            steps = [0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3, 10]
            ref = [mpmath.quad(lambda t: t ** (a - 1) * mpmath.exp(-t),
                               [x * (1 + d) for d in steps] + [mpmath.inf])
                   for x in map(mpmath.mpf, z.tolist())]  # fmt: skip
        ref = np.array([float(mpmath.log(r)) for r in ref])
    rtol = 1e-13 if a > -100 else 1e-10  # the quadrature reference is good to ~1e-11
    scalar = np.array([log_upper_gamma(a, float(x)) for x in z])
    np.testing.assert_allclose(scalar, ref, rtol=rtol, atol=1e-13)
    np.testing.assert_allclose(log_upper_gamma_array(a, z), ref, rtol=rtol, atol=1e-13)


def test_tpl_fit_matches_powerlaw_package():
    """Same xmin, alpha, Lambda and D as powerlaw 1.5 on a planted TPL sample."""
    data = tpl_sample(60, alpha=1.8, lam=0.05, xmin=1.0, seed=1)
    ref = powerlaw_tpl(data)
    ours = fit_truncated_powerlaw(data)
    assert ours.status == "success"
    assert ours.xmin == ref.xmin
    assert math.isclose(ours.alpha, ref.truncated_power_law.alpha, rel_tol=RTOL)
    assert math.isclose(ours.Lambda, ref.truncated_power_law.Lambda, rel_tol=RTOL)
    assert math.isclose(ours.D, ref.D, rel_tol=RTOL)
    assert math.isnan(ours.sigma) and math.isnan(ref.sigma)


def test_e_tpl_restricts_xmin_like_powerlaw_package():
    data = np.sort(np.concatenate([tpl_sample(50, 2.2, 0.02, 2.0, seed=2),
                                   np.random.default_rng(3).uniform(0.5, 2.0, 40)]))  # fmt: skip
    xr = xmin_peak_range(data)
    ref = powerlaw_tpl(data, xmin=xr)
    ours = fit_truncated_powerlaw(data, fix_fingers="xmin_peak")
    assert ours.xmin == ref.xmin <= xr[1]
    assert math.isclose(ours.alpha, ref.truncated_power_law.alpha, rel_tol=RTOL)
    assert math.isclose(ours.Lambda, ref.truncated_power_law.Lambda, rel_tol=RTOL)


def test_planted_truncation_is_recovered_and_preferred():
    data = tpl_sample(400, alpha=1.5, lam=0.02, xmin=1.0, seed=4)
    fit = fit_truncated_powerlaw(data[data >= 1.0][::2])  # 200 points keep it quick
    assert abs(fit.alpha - 1.5) < 0.25 and 0.005 < fit.Lambda < 0.05
    cmp = compare_pl_tpl(data, 1.0)
    assert cmp.R < 0 and cmp.p < 1e-3 and cmp.preferred == "truncated_power_law"


def test_pure_power_law_is_not_called_truncated():
    data = pareto_sample(300, alpha=2.5, xmin=1.0, seed=5)
    cmp = compare_pl_tpl(data, 1.0)
    assert cmp.preferred in ("undecided", "power_law")


def test_alpha_at_its_bound_is_reported():
    """An exponential tail: the TPL's alpha runs into its bound 1 and the fit says so."""
    data = np.sort(1.0 + np.random.default_rng(6).exponential(3.0, 80))
    fit = fit_truncated_powerlaw(data)
    assert fit.status == "success"
    assert fit.alpha - 1.0 < 1e-3
    assert ALPHA_AT_BOUND in fit.warning


@pytest.mark.parametrize("seed", [0, 1])
def test_loglikelihood_ratio_matches_powerlaw_distribution_compare(seed):
    data = np.concatenate([tpl_sample(150, 1.7, 0.03, 1.0, seed), [0.2, 0.5, 0.7]])
    with quiet():
        ref_fit = powerlaw.Fit(data, verbose=False)
        R, p = ref_fit.distribution_compare("power_law", "truncated_power_law")
        Rn, _ = ref_fit.distribution_compare("power_law", "truncated_power_law",
                                             normalized_ratio=True)  # fmt: skip
    ours = compare_pl_tpl(data, ref_fit.xmin)
    assert ours.n_tail == len(ref_fit.data)
    assert math.isclose(ours.R, R, rel_tol=RTOL, abs_tol=1e-9)
    assert math.isclose(ours.R_normalized, Rn, rel_tol=RTOL, abs_tol=1e-9)
    # powerlaw computes p as 1 - CDF (0 below 1e-16); ours is the survival function
    assert math.isclose(ours.p, p, rel_tol=1e-6, abs_tol=1e-15)


def test_bad_input_fails_with_a_reason():
    assert fit_truncated_powerlaw(np.array([1.0])).status == "failed"
    bad = fit_truncated_powerlaw(np.array([1.0, np.nan, 2.0]))
    assert bad.status == "failed" and "non-finite" in bad.warning
    with pytest.raises(ValueError, match="xmin_peak"):
        fit_truncated_powerlaw(np.arange(1.0, 30.0), fix_fingers="clip_xmax")
    assert math.isnan(compare_pl_tpl(np.array([1.0, 2.0]), 5.0).R)


def test_analyze_options_are_checked():
    W = torch.randn(40, 20, dtype=torch.float64)
    with pytest.raises(SpectuneError, match="fit must be one of"):
        analyze({"w.weight": W}, fit="lognormal", progress=False)
    with pytest.raises(SpectuneError, match="clip_xmax"):
        analyze({"w.weight": W}, fit="TPL", fix_fingers="clip_xmax", progress=False)
    with pytest.raises(SpectuneError, match="fix_fingers must be"):
        analyze({"w.weight": W}, fix_fingers="peak", progress=False)


def test_analyze_tpl_columns_on_a_planted_spectrum():
    sv = np.sqrt(tpl_sample(48, 1.6, 0.05, 1.0, seed=7))
    W = matrix_with_singular_values(sv, 96, seed=8)
    d = analyze({"layer.weight": W}, fit="TPL", compare_fits=True, detX=True, progress=False)
    row = d.iloc[0]
    fit = fit_truncated_powerlaw(sv**2)
    assert math.isclose(row["alpha"], fit.alpha, rel_tol=1e-9)
    assert math.isclose(row["Lambda"], fit.Lambda, rel_tol=1e-9)
    assert math.isclose(row["alpha_weighted"], fit.alpha * math.log10(row["lambda_max"]))
    for col in ["pl_tpl_R", "pl_tpl_p", "better_fit", "detX_num", "ERG_gap"]:
        assert col in d.columns


# ---------------------------------------------------------------------------------------------
# xmin_peak with the plain power law, and detX / ERG (against WeightWatcher, fast)
# ---------------------------------------------------------------------------------------------


def test_xmin_peak_powerlaw_matches_powerlaw_package():
    data = np.sort(np.concatenate([pareto_sample(120, 2.5, 1.0, seed=9),
                                   np.random.default_rng(10).uniform(0.2, 1.0, 200)]))  # fmt: skip
    with quiet():
        ref = powerlaw.Fit(data, xmin=xmin_peak_range(data), verbose=False)
    ours = fit_powerlaw(data, fix_fingers="xmin_peak")
    assert ours.xmin == ref.xmin
    assert math.isclose(ours.alpha, ref.alpha, rel_tol=1e-12)
    assert math.isclose(ours.D, ref.D, rel_tol=1e-9)
    assert math.isclose(ours.sigma, ref.sigma, rel_tol=1e-12)


def test_detx_counts_by_hand():
    ev = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.5])  # mean 2.666: rescaled = ev * 6 / 16
    cols = detx_columns(ev, num_pl_spikes=2)
    r = ev * 6 / 16
    idx = max(i for i in range(1, 6) if np.prod(r[i:]) < 1.0)
    assert cols["detX_num"] == cols["num_ERG_spikes"] == 6 - idx
    assert cols["ERG_gap"] == 6 - idx - 2
    assert math.isclose(cols["detX_val"], ev[idx]) and math.isclose(
        cols["detX_val_unrescaled"], r[idx]
    )


def _ww_analyze(ww, model, **kwargs):
    with quiet():
        return ww.WeightWatcher(model=model).analyze(**kwargs)


def test_xmin_peak_and_detx_parity_with_weightwatcher(tiny):
    import weightwatcher as ww

    theirs = _ww_analyze(ww, tiny, fix_fingers="xmin_peak", pl_package="powerlaw", detX=True)
    ours = analyze(tiny, fix_fingers="xmin_peak", detX=True, progress=False)
    m = ours.merge(theirs, on="longname", suffixes=("", "_ww"))
    assert len(m) == len(ours) == 16
    # WW fails where no candidate xmin is left (alpha -1); so do we (alpha NaN, "failed")
    assert ((m["status"] == "failed") == (m["status_ww"] == "failed")).all()
    ok = m[m["status"] == "success"]
    assert len(ok) >= 10
    for col in ["alpha", "xmin", "D", "sigma"]:
        np.testing.assert_allclose(ok[col].astype(float), ok[f"{col}_ww"].astype(float),
                                   rtol=1e-9, err_msg=col)  # fmt: skip
    for col in ["detX_val", "detX_val_unrescaled"]:
        np.testing.assert_allclose(m[col].astype(float), m[f"{col}_ww"].astype(float),
                                   rtol=1e-9, err_msg=col)  # fmt: skip
    for col in ["detX_num", "num_ERG_spikes"]:
        assert (m[col].astype(int) == m[f"{col}_ww"].astype(int)).all(), col
    for col in ["num_pl_spikes", "ERG_gap"]:
        assert (ok[col].astype(int) == ok[f"{col}_ww"].astype(int)).all(), col


# ---------------------------------------------------------------------------------------------
# TPL / E_TPL against WeightWatcher on real layers, one at a time (slow: WW takes ~25 s)
# ---------------------------------------------------------------------------------------------


def smollm_layer(name: str) -> torch.nn.Module:
    """One linear layer of the embedded model, as a module WeightWatcher can analyze alone."""
    from spectune.models.loading import default_model_dir
    from spectune.weights import open_source

    with open_source(str(default_model_dir())) as src:
        W = src.load(f"{name}.weight").float()
    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    lin.weight.data = W
    return torch.nn.Sequential(lin)


@pytest.mark.slow
@pytest.mark.real_weights
@pytest.mark.parametrize("fit", ["TPL", "E_TPL"])
def test_tpl_parity_with_weightwatcher_on_the_embedded_model(fit, capsys):
    import time

    import weightwatcher as ww

    layer = smollm_layer("model.layers.0.self_attn.k_proj")  # 192 eigenvalues
    t0 = time.perf_counter()
    theirs = _ww_analyze(ww, layer, fit=fit, pl_package="powerlaw").iloc[0]
    t1 = time.perf_counter()
    ours = analyze(layer, fit=fit, progress=False).iloc[0]
    t2 = time.perf_counter()
    assert theirs["status"] == ours["status"] == "success"
    for col in ["alpha", "Lambda", "xmin", "D", "alpha_weighted", "log_alpha_norm"]:
        assert math.isclose(ours[col], theirs[col], rel_tol=RTOL), (col, ours[col], theirs[col])
    assert ours["num_pl_spikes"] == theirs["num_pl_spikes"]
    with capsys.disabled():
        print(f"\n[tpl] {fit} k_proj 0: WeightWatcher {t1 - t0:.1f} s, spectune {t2 - t1:.2f} s")


def test_lockstep_nelder_mead_follows_scipy_fmin_exactly():
    """The batched Nelder-Mead over all candidate xmins gives the numbers scipy's fmin gives
    candidate by candidate (the same branches, the same arithmetic)."""
    from spectune.watch.tpl import _mle, _mle_batch

    data = np.concatenate([tpl_sample(80, 1.6, 0.04, 1.0, seed=11), [0.3, 0.6, 0.9]])
    data = np.sort(data)
    cand = candidate_xmins(data, None)
    alphas, lams, lls = _mle_batch(data, cand)
    ref = np.array([_mle(data[i:], float(data[i])) for i in cand])
    np.testing.assert_array_equal(alphas, ref[:, 0])
    np.testing.assert_array_equal(lams, ref[:, 1])
    np.testing.assert_allclose(lls, ref[:, 2], rtol=1e-12)


@pytest.mark.slow
def test_tpl_parity_with_weightwatcher_on_a_whole_block(tiny, capsys):
    """Every matrix of one decoder block of the tiny Llama (7 ESDs of 16-32 eigenvalues),
    analyzed as one model by both; every TPL alpha sits at its bound 1, which WW reports
    silently and we flag."""
    import time

    import weightwatcher as ww

    block = tiny.model.layers[0]
    t0 = time.perf_counter()
    theirs = _ww_analyze(ww, block, fit="TPL", pl_package="powerlaw")
    t1 = time.perf_counter()
    ours = analyze(block, fit="TPL", progress=False)
    t2 = time.perf_counter()
    m = ours.merge(theirs, on="longname", suffixes=("", "_ww"))
    assert len(m) == 7 and (m["status_ww"] == "success").all()
    for col in ["alpha", "Lambda", "xmin", "D"]:
        np.testing.assert_allclose(m[col], m[f"{col}_ww"].astype(float), rtol=RTOL, err_msg=col)
    assert m["warning"].str.contains(ALPHA_AT_BOUND, regex=False).all()
    with capsys.disabled():
        print(f"\n[tpl] tiny Llama block, 7 matrices: WeightWatcher {t1 - t0:.1f} s, "
              f"spectune {t2 - t1:.2f} s")  # fmt: skip


def test_spectrum_gives_the_rows_tpl_fit():
    from spectune.watch import spectrum

    sv = np.sqrt(tpl_sample(40, 1.7, 0.05, 1.0, seed=12))
    W = matrix_with_singular_values(sv, 80, seed=13)
    row = analyze({"layer.weight": W}, fit="E_TPL", progress=False).iloc[0]
    evals, fit = spectrum({"layer.weight": W}, "layer", fit="E_TPL")
    assert len(evals) == 40
    assert fit.alpha == row["alpha"] and fit.Lambda == row["Lambda"]
