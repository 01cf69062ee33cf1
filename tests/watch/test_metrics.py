"""Per-layer metrics computed by hand from known singular values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spectune.watch import analyze, fit_powerlaw
from spectune.watch.metrics import rank_at_energy

from .conftest import matrix_with_singular_values

EPS = np.finfo(np.float64).eps


def diag_matrix(svals, N: int) -> torch.Tensor:
    """N x M matrix with svals on the diagonal (M = len(svals))."""
    W = torch.zeros(N, len(svals), dtype=torch.float64)
    W[range(len(svals)), range(len(svals))] = torch.tensor(svals, dtype=torch.float64)
    return W


def one_row(W: torch.Tensor, **kwargs):
    details = analyze({"model.layer.weight": W}, progress=False, **kwargs)
    assert len(details) == 1
    return details.iloc[0]


def hand_entropy(ev: list[float], rank: int) -> float:
    """WW's normalized entropy: p = lambda / sum + 1e-10, divided by ln(rank + 1e-10)."""
    total = sum(ev)
    p = [e / total + 1e-10 for e in ev]
    return -sum(q * math.log(q) for q in p) / math.log(rank + 1e-10)


def test_full_rank_diag_matrix_by_hand():
    # singular values 3, 2, 1, 0.5 of a 6 x 4 matrix: eigenvalues 9, 4, 1, 0.25
    row = one_row(diag_matrix([0.5, 3.0, 1.0, 2.0], 6))
    assert (row["N"], row["M"], row["Q"], row["rf"]) == (6, 4, 1.5, 1)
    assert row["num_evals"] == 4 and row["has_esd"]
    assert row["norm"] == pytest.approx(14.25, rel=1e-14)
    assert row["log_norm"] == pytest.approx(math.log10(14.25), rel=1e-14)
    assert row["lambda_max"] == pytest.approx(9.0, rel=1e-14)
    assert row["spectral_norm"] == pytest.approx(9.0, rel=1e-14)
    assert row["log_spectral_norm"] == pytest.approx(math.log10(9.0), rel=1e-14)
    assert row["sv_max"] == pytest.approx(3.0, rel=1e-14)
    assert row["sv_min"] == pytest.approx(0.5, rel=1e-14)
    assert row["stable_rank"] == pytest.approx(14.25 / 9.0, rel=1e-14)
    assert row["matrix_rank"] == 4 and row["rank_loss"] == 0 and row["weak_rank_loss"] == 0
    assert row["entropy"] == pytest.approx(hand_entropy([9, 4, 1, 0.25], 4), rel=1e-12)
    # the power-law columns come from the fit of the same eigenvalues (4 < 9: whole sample)
    ev = [0.25, 1.0, 4.0, 9.0]
    s = sum(math.log(e / 0.25) for e in ev)
    alpha = 1 + 3 / s  # small-sample branch, bias-corrected, whole sample is the tail
    assert row["alpha"] == pytest.approx(alpha, rel=1e-12)
    assert row["xmin"] == pytest.approx(0.25) and row["xmax"] == pytest.approx(9.0)
    assert row["alpha_weighted"] == pytest.approx(alpha * math.log10(9.0), rel=1e-12)
    assert row["log_alpha_norm"] == pytest.approx(math.log10(sum(e**alpha for e in ev)), rel=1e-12)
    assert row["sigma"] == pytest.approx((alpha - 1) / 2, rel=1e-12)
    assert row["num_pl_spikes"] == 4
    assert alpha < 2  # 1 + 3 / ln(1 * 4 * 16 * 36) = 1.388
    assert row["warning"] == "over-trained; too few eigenvalues for a reliable fit"  # 4 < 8
    assert row["status"] == "success"


def test_rank_deficient_diag_matrix_by_hand():
    # singular values 3, 2, 1e-4, 0 (8 x 4): rank 3 (1e-4 > 3 * 8 * eps), eigenvalues 9, 4, 1e-8, 0
    row = one_row(diag_matrix([3.0, 2.0, 1e-4, 0.0], 8))
    assert row["matrix_rank"] == 3
    assert row["rank_loss"] == 1
    assert row["weak_rank_loss"] == 2  # eigenvalues below 1e-6: 1e-8 and 0
    assert row["norm"] == pytest.approx(13 + 1e-8, rel=1e-14)
    assert row["stable_rank"] == pytest.approx((13 + 1e-8) / 9, rel=1e-14)
    assert row["sv_min"] == 0.0
    assert row["entropy"] == pytest.approx(hand_entropy([9, 4, 1e-8, 0.0], 3), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotated_matrix_gives_the_same_metrics(seed):
    """U diag(s) V^T with random orthogonal U, V: same numbers as the diagonal matrix,
    including the rank of an exactly rank-deficient matrix (rounding in the Gram route must not
    turn the zero singular values into rank)."""
    s = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 1e-2, 0.0, 0.0])
    N = 13
    W = matrix_with_singular_values(s, N, seed)
    row, ref = one_row(W), one_row(diag_matrix(list(s), N))
    assert np.linalg.matrix_rank(W.numpy()) == 6  # numpy (and WeightWatcher) say 6
    assert row["matrix_rank"] == ref["matrix_rank"] == 6
    assert row["rank_loss"] == ref["rank_loss"] == 2
    assert row["weak_rank_loss"] == ref["weak_rank_loss"] == 2
    for col in ["norm", "lambda_max", "stable_rank", "log_norm", "sv_max", "entropy", "alpha",
                "alpha_weighted", "log_alpha_norm", "xmin", "D"]:  # fmt: skip
        assert row[col] == pytest.approx(ref[col], rel=1e-9, abs=1e-12), col
    assert row["entropy"] == pytest.approx(hand_entropy(list(s**2), 6), rel=1e-9)


def test_wide_matrix_is_transposed_for_N_M():
    """A 4 x 10 matrix has N = 10, M = 4, Q = 2.5; the ESD is the same as for its transpose."""
    W = diag_matrix([4.0, 3.0, 2.0, 1.0], 10).T.contiguous()
    row = one_row(W)
    assert (row["N"], row["M"], row["Q"]) == (10, 4, 2.5)
    assert row["norm"] == pytest.approx(30.0)
    assert row["lambda_max"] == pytest.approx(16.0)


def test_conv2d_kernel_pools_positions_with_ww_normalization():
    """A (out, in, kh, kw) kernel: kh*kw matrices, eigenvalues pooled and scaled by 1/2
    (WeightWatcher's conv2d_norm multiplies W by sqrt(1/2))."""
    g = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv2d(6, 10, kernel_size=(3, 2))
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    details = analyze(conv, progress=False)
    assert len(details) == 1
    row = details.iloc[0]
    W = conv.weight.detach().double()
    ev = np.sort(np.concatenate([
        np.linalg.svd(W[:, :, i, j].numpy(), compute_uv=False) ** 2 * 0.5
        for i in range(3) for j in range(2)
    ]))  # fmt: skip
    assert row["layer_type"] == "conv2d"
    assert (row["N"], row["M"], row["rf"], row["num_evals"]) == (10, 6, 6, 36)
    assert row["norm"] == pytest.approx(ev.sum(), rel=1e-12)
    assert row["lambda_max"] == pytest.approx(ev[-1], rel=1e-12)
    assert row["alpha"] == pytest.approx(fit_powerlaw(ev).alpha, rel=1e-9)
    assert row["norm"] == pytest.approx(0.5 * float((W**2).sum()), rel=1e-12)


def test_rank_at_energy_by_hand():
    ev = np.array([1.0, 2.0, 3.0, 4.0, 90.0])  # total 100
    assert rank_at_energy(ev, 0.9) == 1  # 90 holds exactly 90%
    assert rank_at_energy(ev, 0.95) == 3  # 90 + 4 + 3 = 97 >= 95
    assert rank_at_energy(ev, 1.0) == 5
    assert rank_at_energy(np.ones(10), 0.9) == 9
    assert rank_at_energy(np.zeros(4), 0.9) == 0


def test_min_evals_warning_and_warning_thresholds():
    """Eight eigenvalues pass min_evals=8, seven do not; alpha < 2 warns over-trained."""
    s = np.sqrt(np.geomspace(1.0, 1e4, 8))  # a very heavy tail: alpha < 2
    row = one_row(diag_matrix(list(s), 8))
    assert row["alpha"] < 2 and row["warning"] == "over-trained"
    row7 = one_row(diag_matrix(list(s[:7]), 8))
    assert "too few eigenvalues for a reliable fit" in row7["warning"]
    row_min = one_row(diag_matrix(list(s), 8), min_evals=9)
    assert row_min["warning"] == "over-trained; too few eigenvalues for a reliable fit"
