"""Randomized ESDs (``rand_*`` columns): correlation traps planted and absent, and the
distribution of every column against WeightWatcher 0.7.7's.

WeightWatcher shuffles with numpy's global generator (``np.random.shuffle``) and spectune with
a seeded torch generator, so the two never draw the same permutation: single runs cannot be
compared. We seed WW's generator (``np.random.seed``) and ours with the same seeds, run both
K times on the same layer and compare the means of each column: they must agree within
4 standard errors of the difference (plus 1e-3 of the value for near-deterministic columns).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from spectune.watch import analyze

from .conftest import quiet

RAND_COLUMNS = ["max_rand_eval", "rand_distance", "ww_softrank", "ww_maxdist", "rand_sigma_mp",
                "rand_bulk_max", "rand_mp_softrank", "rand_num_spikes"]  # fmt: skip


def planted(kind: str, N: int = 400, M: int = 200, seed: int = 0) -> torch.Tensor:
    """Noise; noise + a constant offset or one huge entry (structure that survives shuffling:
    a correlation trap); noise + a rank-one signal (real correlation, destroyed by shuffling)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, M)) / np.sqrt(N)
    if kind == "offset":
        W += 0.05
    elif kind == "outlier":
        W[3, 7] = 5.0
    elif kind == "signal":
        u, v = rng.standard_normal(N), rng.standard_normal(M)
        W += 3.0 * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    return torch.tensor(W)


def module_of(W: torch.Tensor) -> torch.nn.Module:
    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    lin.weight.data = W.float()
    return torch.nn.Sequential(lin)


def ww_rows(module: torch.nn.Module, seeds) -> list:
    import weightwatcher as ww

    rows = []
    for s in seeds:
        np.random.seed(s)
        with quiet(), contextlib.redirect_stdout(io.StringIO()):
            d = ww.WeightWatcher(model=module).analyze(randomize=True, mp_fit=True)
        rows.append(d.iloc[0])
    return rows


@pytest.mark.parametrize(("kind", "traps"), [("noise", 0), ("offset", 1), ("outlier", 1),
                                             ("signal", 0)])  # fmt: skip
def test_planted_correlation_traps_are_found_and_real_correlations_are_not(kind, traps):
    W = planted(kind)
    ours = analyze({"w.weight": W}, randomize=True, mp_fit=True, progress=False).iloc[0]
    assert ours["rand_num_spikes"] == ours["num_traps"] == traps
    if kind == "signal":  # a real correlation: a spike in the ESD, none after shuffling
        assert ours["num_spikes"] == 1 and ours["ww_softrank"] < 0.5
    theirs = ww_rows(module_of(W), [0])[0]
    assert theirs["rand_num_spikes"] == theirs["num_traps"] == traps


def compare_distributions(ours: list, theirs: list) -> dict[str, float]:
    """Largest |mean difference| / allowed, per column (<= 1 passes)."""
    ratios = {}
    for col in RAND_COLUMNS:
        a = np.array([float(r[col]) for r in ours])
        b = np.array([float(r[col]) for r in theirs])
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        allowed = 4.0 * se + 1e-3 * abs(b.mean()) + 1e-12
        ratios[col] = float(abs(a.mean() - b.mean()) / allowed)
    return ratios


@pytest.mark.slow
def test_rand_columns_match_weightwatcher_in_distribution_on_a_planted_trap():
    W = planted("offset", 300, 120, seed=1)
    K = 4
    ours = [analyze({"w.weight": W}, randomize=True, mp_fit=True, seed=s, progress=False).iloc[0]
            for s in range(K)]  # fmt: skip
    theirs = ww_rows(module_of(W), range(K))
    ratios = compare_distributions(ours, theirs)
    assert max(ratios.values()) <= 1.0, ratios


@pytest.mark.slow
@pytest.mark.real_weights
def test_rand_columns_match_weightwatcher_in_distribution_on_the_embedded_model(capsys):
    from spectune.models.loading import default_model_dir
    from spectune.weights import open_source

    with open_source(str(default_model_dir())) as src:
        W = src.load("model.layers.3.self_attn.k_proj.weight").double()
    K = 6
    ours = [analyze({"w.weight": W}, randomize=True, mp_fit=True, seed=s, progress=False).iloc[0]
            for s in range(K)]  # fmt: skip
    theirs = ww_rows(module_of(W), range(K))
    ratios = compare_distributions(ours, theirs)
    with capsys.disabled():
        print("\n[randomize] k_proj 3, |mean diff| / (4 SE + 1e-3 |mean|): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))  # fmt: skip
    assert max(ratios.values()) <= 1.0, ratios
