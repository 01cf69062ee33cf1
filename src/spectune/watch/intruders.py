"""Intruder dimensions: singular directions a fine-tune adds that the base model never had.

Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: An Illusion of Equivalence") compare
the left singular vectors of a tuned weight W_t (out x in) with those of its base W_0:

    sim_i = max_j | <u_i(W_t), u_j(W_0)> |,      i = 1..k (the k largest singular values),

and call u_i(W_t) an *intruder dimension* when sim_i < epsilon: a top direction of the tuned
matrix that is nearly orthogonal to every singular direction of the base. LoRA tends to
create them, full fine-tuning much less; they go with forgetting. Defaults as in the paper
and in peft's ``reduce_intruder_dimension``: k = 10, epsilon = 0.5, left singular vectors
(the output side, U of W = U S V^T with W stored as (out, in)).

The top-k singular vectors of W_t (a LoRA update: W_0 + s B A formed, out x r x in
multiply-adds) come from the top-k eigenpairs of its smaller Gram matrix; the base's come from
one decomposition of W_0 (every base direction is compared), computed once per process and
shared by every tuned matrix of that base (:func:`shared_base_left_vectors`). Full and FROG
fine-tunes give W_t directly.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch

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


#: :func:`_top_left`'s Gram route needs s_k / s_1 above this (s_k then to about 1e-10)
TOP_GRAM_MIN_RCOND = 1e-3


def _top_left(W: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` left singular vectors and values of the matrix ``W``, largest first.

    From the smaller Gram matrix's top ``k`` eigenpairs (``scipy.linalg.eigh`` with
    ``subset_by_index``): out <= in, U = the eigenvectors of W W^T; out > in, U = W V / s from
    those of W^T W. Over SmolLM2's 210 matrices with a rank-8 update, 8.1 s against 15.4 s for
    Lanczos (``svds``), the route before (``bench/intruders.py``); the wide and tall shapes
    gain, the square ones about break even. The top singular values are the largest, so the
    Gram's squared condition costs little there: s_k's relative error is about
    eps (s_1 / s_k)^2, so where s_k is below :data:`TOP_GRAM_MIN_RCOND` of s_1 (a rank below
    k), or the matrix is small, the SVD (equal to the SVD's values to 1e-10 and vectors to
    1e-8, tested).
    """
    M = np.asarray(W)
    out, inp = M.shape
    m = min(out, inp)
    if k < m and m > 64:
        G = M @ M.T if out <= inp else M.T @ M
        w, V = scipy.linalg.eigh(G, subset_by_index=[m - k, m - 1])
        w, V = w[::-1], V[:, ::-1]
        s = np.sqrt(np.clip(w, 0.0, None))
        if s[0] > 0.0 and s[-1] >= TOP_GRAM_MIN_RCOND * s[0]:
            return (np.ascontiguousarray(V) if out <= inp else (M @ V) / s), s
    U, S, _ = np.linalg.svd(M, full_matrices=False)
    return U[:, :k], S[:k]


#: at most this many bytes of base vectors are kept per process (:func:`shared_base_left_vectors`)
BASE_VECTORS_BUDGET = 1 << 30
_shared: dict[bytes, np.ndarray] = {}
_shared_lock = threading.Lock()


def shared_base_left_vectors(W_base: np.ndarray) -> np.ndarray:
    """:func:`base_left_vectors` of ``W_base`` (float64), computed once per process: the runs
    of a comparison (the demo's LoRA, QLoRA and FROG against one base) share the base's
    decompositions instead of forming them again for each run.

    Kept by a SHA-256 of the matrix's values (the same matrix from any source, never a stale
    one), up to :data:`BASE_VECTORS_BUDGET` bytes (1 GiB): SmolLM2-135M's 210 target matrices
    take 650 MiB; a larger model's matrices beyond the budget are computed each time, not
    evicting those kept (a scan over a model larger than the budget would evict every entry
    before it is read again). :func:`clear_shared_base_vectors` frees them.
    """
    W0 = np.ascontiguousarray(W_base, dtype=np.float64)
    key = hashlib.sha256(memoryview(W0).cast("B")).digest() + repr(W0.shape).encode()
    with _shared_lock:
        hit = _shared.get(key)
    if hit is not None:
        return hit
    U0 = base_left_vectors(W0)
    U0.setflags(write=False)  # shared: no caller may change it
    with _shared_lock:
        if sum(u.nbytes for u in _shared.values()) + U0.nbytes <= BASE_VECTORS_BUDGET:
            _shared[key] = U0
    return U0


def clear_shared_base_vectors() -> None:
    """Free the base vectors :func:`shared_base_left_vectors` keeps."""
    with _shared_lock:
        _shared.clear()


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
    U0 = shared_base_left_vectors(W0) if U_base is None else U_base
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
    """Intruder dimensions of W_0 + scaling * B A.

    Args:
        W_base: the base weight W_0, (out, in).
        B: LoRA's B, (out, r).
        A: LoRA's A, (r, in).
        scaling: LoRA's scaling (lora_alpha / r, or / sqrt(r) for rsLoRA).
        top_k, threshold, U_base: as for :func:`intruder_dimensions`.

    Returns:
        An :class:`IntruderResult` (the same numbers as :func:`intruder_dimensions` on the
        merged matrix).
    """
    _check(top_k, threshold)
    W0 = _as_matrix(W_base, "the base matrix")
    Bm = _as_matrix(B, "lora_B") * float(scaling)
    Am = _as_matrix(A, "lora_A")
    if Bm.shape[0] != W0.shape[0] or Am.shape[1] != W0.shape[1] or Bm.shape[1] != Am.shape[0]:
        raise ValueError(
            f"LoRA shapes B {Bm.shape} and A {Am.shape} do not fit the base matrix {W0.shape}"
        )
    U0 = shared_base_left_vectors(W0) if U_base is None else U_base
    U_t, S_t = _top_left(W0 + Bm @ Am, min(top_k, min(W0.shape)))
    return _result(U_t, S_t, U0, threshold)


__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP_K",
    "IntruderResult",
    "base_left_vectors",
    "clear_shared_base_vectors",
    "intruder_dimensions",
    "lora_intruder_dimensions",
    "shared_base_left_vectors",
]
