"""Intruder dimensions: singular directions a fine-tune adds that the base model never had.

Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: An Illusion of Equivalence") compare
the left singular vectors of a tuned weight W_t (out x in) with those of its base W_0:

    sim_i = max_j | <u_i(W_t), u_j(W_0)> |,      i = 1..k (the k largest singular values),

and call u_i(W_t) an *intruder dimension* when sim_i < epsilon: a top direction of the tuned
matrix that is nearly orthogonal to every singular direction of the base. LoRA tends to
create them, full fine-tuning much less; they go with forgetting. Defaults as in the paper
and in peft's ``reduce_intruder_dimension``: k = 10, epsilon = 0.5, left singular vectors
(the output side, U of W = U S V^T with W stored as (out, in)).

For a LoRA update W_t = W_0 + s B A the top-k singular vectors of W_t are computed by
Lanczos (``scipy.sparse.linalg.svds``) on the operator x -> W_0 x + s B (A x) without forming
the dense product B A; the base's singular vectors come from one dense SVD of W_0 (every
base direction is compared). Full and FROG fine-tunes give W_t directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, svds

#: the paper's / peft's defaults
DEFAULT_TOP_K = 10
DEFAULT_THRESHOLD = 0.5


@dataclass
class IntruderResult:
    """Intruder dimensions of one tuned matrix against its base.

    Attributes:
        num_intruders: how many of the top-k tuned singular vectors are intruders.
        top_k: the k used (at most the matrix's smaller side).
        threshold: the epsilon used.
        similarities: sim_i for i = 1..k (largest singular value first).
        indices: positions (0-based, among the top k) of the intruders.
        singular_values: the tuned matrix's top-k singular values.
    """

    num_intruders: int
    top_k: int
    threshold: float
    similarities: np.ndarray = field(repr=False)
    indices: list[int]
    singular_values: np.ndarray = field(repr=False)

    @property
    def min_similarity(self) -> float:
        """The smallest sim_i among the top k (NaN when k = 0)."""
        return float(self.similarities.min()) if self.similarities.size else float("nan")

    def to_dict(self) -> dict:
        """The result as JSON-able values."""
        return {
            "num_intruders": self.num_intruders,
            "top_k": self.top_k,
            "threshold": self.threshold,
            "similarities": self.similarities.tolist(),
            "indices": list(self.indices),
            "singular_values": self.singular_values.tolist(),
        }


def _as_matrix(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    a = x.detach().to(torch.float64).cpu().numpy() if isinstance(x, torch.Tensor) else x
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} holds NaN or Inf values")
    return a


def _check(top_k: int, threshold: float) -> None:
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")


def _result(U_t: np.ndarray, S_t: np.ndarray, U_0: np.ndarray, threshold: float) -> IntruderResult:
    sims = np.abs(U_t.T @ U_0).max(axis=1)  # (k,): best match of each tuned direction
    idx = [int(i) for i in np.nonzero(sims < threshold)[0]]
    return IntruderResult(len(idx), len(S_t), threshold, sims, idx, S_t)


#: the Gram route of :func:`base_left_vectors` needs s_min / s_max above this (a left vector
#: W v / s carries a relative error of about eps * s_max / s); below it, the SVD
GRAM_MIN_RCOND = 1e-6


def base_left_vectors(W_base: torch.Tensor | np.ndarray) -> np.ndarray:
    """Every left singular vector of the base (those of the economy SVD), as columns;
    reusable across adapters of the same base.

    Through the smaller Gram matrix, 1.7-3.7x faster than the SVD on SmolLM2's shapes (the
    base's vectors are most of an intruder count's time): out <= in, the eigenvectors of
    W W^T (a complete basis, as the SVD's U); out > in, W v / s from the eigenpairs of W^T W,
    or the SVD where W is too ill-conditioned for that. The intruder test only reads
    max |cos| against these columns: equal to the SVD's to 1e-13 on random matrices (tested).
    """
    W0 = _as_matrix(W_base, "the base matrix")
    out, inp = W0.shape
    if out <= inp:
        return np.linalg.eigh(W0 @ W0.T)[1][:, ::-1]
    w, V = np.linalg.eigh(W0.T @ W0)
    s = np.sqrt(np.clip(w[::-1], 0.0, None))
    if s[0] == 0.0 or s[-1] < GRAM_MIN_RCOND * s[0]:
        return np.linalg.svd(W0, full_matrices=False)[0]
    return (W0 @ V[:, ::-1]) / s


def _top_left(W: Any, k: int, dense: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` left singular vectors and values of ``W`` (a matrix, or a
    ``LinearOperator`` with ``dense()`` forming it), largest first: Lanczos (``svds``, about 2x
    faster than the whole SVD for k = 10 on SmolLM2's shapes) where it applies (k below the
    smaller side, which is above 64), else the SVD."""
    m = min(W.shape)
    if k >= m - 1 or m <= 64:
        U, S, _ = np.linalg.svd(W if dense is None else dense(), full_matrices=False)
        return U[:, :k], S[:k]
    v0 = np.random.default_rng(0).standard_normal(m)
    U, S, _ = svds(W, k=k, tol=0, v0=v0)
    order = np.argsort(S)[::-1]
    return U[:, order], S[order]


def intruder_dimensions(
    W_base: torch.Tensor | np.ndarray,
    W_tuned: torch.Tensor | np.ndarray,
    *,
    top_k: int = DEFAULT_TOP_K,
    threshold: float = DEFAULT_THRESHOLD,
    U_base: np.ndarray | None = None,
) -> IntruderResult:
    """Intruder dimensions of a tuned matrix (full or sparse fine-tune) against its base.

    Args:
        W_base: the base weight, (out, in).
        W_tuned: the tuned weight, same shape.
        top_k: how many of the tuned matrix's top singular vectors are examined.
        threshold: a tuned direction whose best |cosine| with the base's singular vectors is
            below this is an intruder.
        U_base: precomputed :func:`base_left_vectors` of ``W_base``.

    Returns:
        An :class:`IntruderResult`.

    Raises:
        ValueError: shapes differ, non-finite values, bad ``top_k`` / ``threshold``.
    """
    _check(top_k, threshold)
    W0 = _as_matrix(W_base, "the base matrix")
    Wt = _as_matrix(W_tuned, "the tuned matrix")
    if W0.shape != Wt.shape:
        raise ValueError(f"the tuned matrix has shape {Wt.shape} but the base has {W0.shape}")
    U0 = base_left_vectors(W0) if U_base is None else U_base
    U_t, S_t = _top_left(Wt, min(top_k, min(Wt.shape)))
    return _result(U_t, S_t, U0, threshold)


def lora_intruder_dimensions(
    W_base: torch.Tensor | np.ndarray,
    B: torch.Tensor | np.ndarray,
    A: torch.Tensor | np.ndarray,
    scaling: float = 1.0,
    *,
    top_k: int = DEFAULT_TOP_K,
    threshold: float = DEFAULT_THRESHOLD,
    U_base: np.ndarray | None = None,
) -> IntruderResult:
    """Intruder dimensions of W_0 + scaling * B A, without forming B A.

    Args:
        W_base: the base weight W_0, (out, in).
        B: LoRA's B, (out, r).
        A: LoRA's A, (r, in).
        scaling: LoRA's scaling (lora_alpha / r, or / sqrt(r) for rsLoRA).
        top_k, threshold, U_base: as for :func:`intruder_dimensions`.

    Returns:
        An :class:`IntruderResult` (the same numbers as :func:`intruder_dimensions` on the
        merged matrix, to Lanczos accuracy).
    """
    _check(top_k, threshold)
    W0 = _as_matrix(W_base, "the base matrix")
    Bm = _as_matrix(B, "lora_B") * float(scaling)
    Am = _as_matrix(A, "lora_A")
    if Bm.shape[0] != W0.shape[0] or Am.shape[1] != W0.shape[1] or Bm.shape[1] != Am.shape[0]:
        raise ValueError(
            f"LoRA shapes B {Bm.shape} and A {Am.shape} do not fit the base matrix {W0.shape}"
        )
    U0 = base_left_vectors(W0) if U_base is None else U_base
    op = LinearOperator(
        W0.shape,
        matvec=lambda x: W0 @ x + Bm @ (Am @ x),
        rmatvec=lambda y: W0.T @ y + Am.T @ (Bm.T @ y),
        matmat=lambda X: W0 @ X + Bm @ (Am @ X),
        rmatmat=lambda Y: W0.T @ Y + Am.T @ (Bm.T @ Y),
        dtype=np.float64,
    )
    U_t, S_t = _top_left(op, min(top_k, min(W0.shape)), dense=lambda: W0 + Bm @ Am)
    return _result(U_t, S_t, U0, threshold)


__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP_K",
    "IntruderResult",
    "base_left_vectors",
    "intruder_dimensions",
    "lora_intruder_dimensions",
]
