"""Relevance S = |U| diag(sigma) |V|^T and matrix importance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spectune.errors import SpectuneError
from spectune.tuning.methods.frog.scoring import (
    alpha_importance,
    frobenius_importance,
    frobenius_norm,
    relevance,
    svd_factors,
)


def naive_relevance(W: np.ndarray) -> np.ndarray:
    """S_ij = sum_k sigma_k |u_ik| |v_jk| with an explicit triple loop (numpy's SVD)."""
    U, s, Vh = np.linalg.svd(W, full_matrices=False)
    n, m = W.shape
    S = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            total = 0.0
            for k in range(len(s)):
                total += s[k] * abs(U[i, k]) * abs(Vh[k, j])
            S[i, j] = total
    return S


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (9, 9), (1, 6), (12, 3)])
def test_relevance_matches_triple_loop(shape):
    rng = np.random.default_rng(sum(shape))
    W = rng.standard_normal(shape)
    expected = naive_relevance(W)
    got = relevance(torch.from_numpy(W)).numpy()
    assert got.shape == shape and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_relevance_float32_close_to_float64():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((20, 11))
    got = relevance(torch.from_numpy(W).float())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), naive_relevance(W), rtol=2e-4)


def test_rank_one_relevance_is_abs_w_and_bound_holds():
    u = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    v = torch.tensor([3.0, 0.0, -1.0, 2.0], dtype=torch.float64)
    W = torch.outer(u, v)  # rank 1: S = sigma |u1| |v1|^T = |W|
    torch.testing.assert_close(relevance(W), W.abs(), rtol=1e-12, atol=1e-12)
    W2 = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert bool((relevance(W2) >= W2.abs() - 1e-12).all())  # triangle inequality


def test_exact_rank_truncation_and_randomized():
    gen = torch.Generator().manual_seed(0)
    # a matrix of exact rank 4: the rank-4 truncation is the full relevance
    W = torch.randn(40, 4, dtype=torch.float64, generator=gen) @ torch.randn(
        4, 30, dtype=torch.float64, generator=gen
    )
    full = relevance(W)
    torch.testing.assert_close(relevance(W, rank=4), full, rtol=1e-9, atol=1e-9)
    # randomized of rank 4 (oversampled to 14) recovers the same triplets
    torch.testing.assert_close(relevance(W, "randomized", rank=4), full, rtol=1e-8, atol=1e-8)
    U, s, V = svd_factors(W, rank=2)
    assert U.shape == (40, 2) and s.shape == (2,) and V.shape == (30, 2)


def test_randomized_is_seeded_and_leaves_global_rng_alone():
    W = torch.randn(60, 50, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = relevance(W, "randomized", rank=5, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = relevance(W, "randomized", rank=5, seed=7)
    c = relevance(W, "randomized", rank=5, seed=8, niter=0)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_frobenius_from_singular_values():
    W = torch.randn(13, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    s = torch.linalg.svdvals(W)
    assert frobenius_norm(W) == pytest.approx(float(torch.sqrt((s**2).sum())), rel=1e-12)
    assert frobenius_norm(torch.tensor([[3.0, 4.0]])) == 5.0


def test_frobenius_importance_hand_values():
    np.testing.assert_allclose(frobenius_importance([1.0, 3.0]), [0.25, 0.75])
    np.testing.assert_allclose(frobenius_importance([0.0, 0.0]), [0.0, 0.0])
    with pytest.raises(SpectuneError):
        frobenius_importance([1.0, -1.0])


def test_alpha_importance_formula():
    norms = [2.0, 1.0, 1.0]
    alphas = [2.0, 6.0, 30.0]  # 30 is clipped to 6
    got = alpha_importance(norms, alphas, power=1.0, alpha_range=(2.0, 6.0))
    w = np.array([2.0 * 2.0, 1.0 * 6.0, 1.0 * 6.0])  # the geometric mean cancels
    np.testing.assert_allclose(got, w / w.sum(), rtol=1e-12)
    # power 0 is plain Frobenius importance
    np.testing.assert_allclose(alpha_importance(norms, alphas, power=0.0), [0.5, 0.25, 0.25])
    # a failed fit (NaN) is neutral: it gets the geometric mean of the others
    got = alpha_importance([1.0, 1.0, 1.0], [2.0, 4.5, math.nan], power=2.0)
    a_bar = math.sqrt(2.0 * 4.5)  # = 3
    w = np.array([(2 / a_bar) ** 2, (4.5 / a_bar) ** 2, 1.0])
    np.testing.assert_allclose(got, w / w.sum(), rtol=1e-12)
    # all NaN: Frobenius importance
    np.testing.assert_allclose(alpha_importance([1.0, 3.0], [math.nan, math.nan]), [0.25, 0.75])
    with pytest.raises(SpectuneError, match="one per matrix"):
        alpha_importance([1.0, 2.0], [3.0])


@pytest.mark.parametrize(
    "W, match",
    [
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN/Inf"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "NaN/Inf"),
        (torch.ones(3), "2-D"),
        (torch.ones(2, 2, dtype=torch.int64), "floating-point"),
        (torch.ones(0, 3), "empty"),
    ],
)
def test_bad_matrices_name_the_tensor(W, match):
    with pytest.raises(SpectuneError, match=match) as info:
        relevance(W, name="layers.0.q_proj.weight")
    assert "layers.0.q_proj.weight" in str(info.value)


def test_bad_svd_arguments():
    W = torch.randn(4, 4)
    with pytest.raises(SpectuneError, match="svd must be"):
        relevance(W, svd="fast")
    with pytest.raises(SpectuneError, match="rank"):
        relevance(W, rank=0)
