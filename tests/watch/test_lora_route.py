"""The rank-r LoRA route: eigenvalues of (s B A)^T (s B A) without forming B A."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectune.watch import eigenvalues, lora_eigenvalues


def dense_top_r(A: torch.Tensor, B: torch.Tensor, s: float) -> np.ndarray:
    """Reference: full float64 SVD of the formed N x M update, top r squared singular values."""
    delta = (s * (B.double() @ A.double())).numpy()
    sv = np.linalg.svd(delta, compute_uv=False)
    return np.sort(sv[: A.shape[0]] ** 2)


@pytest.mark.parametrize(
    ("N", "M", "r", "s"),
    [(64, 32, 4, 2.0), (300, 200, 16, 0.5), (200, 300, 8, 16 / 8**0.5), (500, 300, 64, 1.0),
     (50, 50, 50, 3.0)],
)  # fmt: skip
def test_lora_eigenvalues_equal_dense_svd(N, M, r, s):
    g = torch.Generator().manual_seed(N + M + r)
    A = torch.randn(r, M, generator=g) / M**0.5
    B = torch.randn(N, r, generator=g)
    got = lora_eigenvalues(A, B, s)
    ref = dense_top_r(A, B, s)
    assert got.shape == (r,) and got.dtype == np.float64
    assert np.all(np.diff(got) >= 0)
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-8 * ref.max())
    # scaling enters squared
    np.testing.assert_allclose(lora_eigenvalues(A, B, 1.0) * s**2, got, rtol=1e-12)
    # the nonzero part of the dense Gram-route ESD is the same
    dense = eigenvalues(s * (B.double() @ A.double()))
    np.testing.assert_allclose(dense[-r:], got, rtol=1e-8, atol=1e-10 * got.max())


@pytest.mark.parametrize("rank_B", [0, 1, 3])
def test_rank_deficient_B_gives_zeros(rank_B):
    """B of rank < r (e.g. some columns still zero after training): exactly r - rank(B) zeros."""
    r, N, M = 8, 96, 40
    g = torch.Generator().manual_seed(rank_B)
    A = torch.randn(r, M, generator=g, dtype=torch.float64)
    B = torch.zeros(N, r, dtype=torch.float64)
    if rank_B:
        B = torch.randn(N, rank_B, generator=g, dtype=torch.float64) @ torch.randn(
            rank_B, r, generator=g, dtype=torch.float64
        )
    got = lora_eigenvalues(A, B, 2.0)
    ref = dense_top_r(A, B, 2.0)
    assert got.shape == (r,)
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-8 * max(ref.max(), 1.0))
    scale = max(float(got.max()), 1.0)
    assert np.count_nonzero(got > 1e-12 * scale) == rank_B
    np.testing.assert_allclose(got[-rank_B:] if rank_B else got, ref[-rank_B:] if rank_B else ref,
                               rtol=1e-8, atol=1e-12)  # fmt: skip


def test_lora_bf16_factors_and_shape_errors():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 24, generator=g).bfloat16()
    B = torch.randn(40, 4, generator=g).bfloat16()
    np.testing.assert_allclose(lora_eigenvalues(A, B), dense_top_r(A, B, 1.0), rtol=1e-8)
    with pytest.raises(ValueError, match="do not chain"):
        lora_eigenvalues(A, B.T)
    with pytest.raises(ValueError, match="NaN or Inf"):
        lora_eigenvalues(A.float().clone().fill_(float("nan")), B)
