"""FROG scores: weight relevance S_ij and matrix importance R_i.

Relevance. For a weight matrix W (N x M) with thin SVD W = U diag(sigma) V^T (U: N x r,
V: M x r, r = min(N, M)), the relevance of weight (i, j) is::

    S_ij = sum_k sigma_k |u_ik| |v_jk|        i.e.   S = |U| diag(sigma) |V|^T    (N x M)

one matrix product. By the triangle inequality S_ij >= |W_ij|, with equality for every entry
when W has rank one. The sign ambiguity of singular vectors does not matter (absolute values);
repeated singular values make S basis-dependent, as any SVD-based score.

``svd="exact"`` is ``torch.linalg.svd`` in float32 (float64 for float64 weights). (Forming
S from the eigenvectors of the Gram matrix, S = |W V| |V|^T, is faster but squares the
condition number: in float32 it moved 5% of the top-1% set on a heavy-tailed 1536 x 1536
matrix, so we do not.)

With ``svd="randomized"`` the sum runs over the top ``rank`` triplets of a randomized
truncated SVD (``torch.svd_lowrank`` with 10 extra oversampling columns, then truncated),
O(N M rank) instead of the O(N M min(N, M)) of the exact SVD. It is a different, low-rank
relevance rather than a close approximation: S sums positive terms over *all* components, so
the many small singular values (the bulk) make up much of every S_ij and of its variation,
and truncation drops them. In bench/frog_relevance.py the top-1% set of the randomized S
shares 30% (k = 64 and 256) of the exact one on a heavy-tailed 4096 x 4096 matrix, 2-3% on a
Gaussian one, 39% / 86% (k = 64 / 256) on SmolLM2's 576 x 576 q_proj and 57% / 74% on its
1536 x 576 up_proj, for a 10-70x speed-up at 4096. Use it knowingly, for speed on very large
matrices.

Matrix importance (paper section 3.4): R_i = ||W_i||_F / sum_j ||W_j||_F. ||W||_F equals
sqrt(sum_k sigma_k^2); we compute it directly from the entries in float64 (the same number,
and it needs no SVD, so the budget can be fixed before any SVD is run).

Selection over all matrices together (``selection="global"``): :class:`RunningTopK` keeps the
exact top T_trainable of the stream of score matrices in O(T_trainable) memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from spectune.errors import SpectuneError

#: Oversampling columns of the randomized SVD (Halko, Martinsson & Tropp's p = 10).
OVERSAMPLE = 10
#: Default rank of the randomized SVD.
DEFAULT_RANDOMIZED_RANK = 256


def check_matrix(W: torch.Tensor, name: str = "W") -> None:
    """Raise a clear error unless ``W`` is a finite 2-D floating-point matrix.

    Raises:
        SpectuneError: naming ``name`` when W is not 2-D, not floating point, or has NaN/Inf.
    """
    if not isinstance(W, torch.Tensor):
        raise SpectuneError(f"tensor {name} must be a torch.Tensor, got {type(W).__name__}")
    if W.ndim != 2:
        raise SpectuneError(f"tensor {name} must be 2-D, got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise SpectuneError(
            f"tensor {name} has dtype {W.dtype}; FROG needs floating-point weights "
            "(quantized layers are not supported: dequantize first)"
        )
    if W.numel() == 0:
        raise SpectuneError(f"tensor {name} is empty (shape {tuple(W.shape)})")
    if not bool(torch.isfinite(W).all()):
        bad = int((~torch.isfinite(W)).sum())
        raise SpectuneError(
            f"tensor {name} holds {bad} NaN/Inf value(s); FROG scores need finite weights "
            "(check the checkpoint or the training that produced it)"
        )


def _compute_dtype(W: torch.Tensor) -> torch.dtype:
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def svd_factors(
    W: torch.Tensor,
    svd: str = "exact",
    rank: int | None = None,
    *,
    niter: int = 2,
    seed: int = 0,
    name: str = "W",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Singular triplets of W used by :func:`relevance`.

    Args:
        W: matrix (N, M), any float dtype (half precision is upcast to float32).
        svd: "exact" (``torch.linalg.svd``) or "randomized" (``torch.svd_lowrank``).
        rank: number of triplets kept; None = all (exact) or 256 (randomized); at most
            min(N, M).
        niter: power iterations of the randomized SVD.
        seed: seed of the randomized SVD's test matrix (the global RNG is left untouched).
        name: the tensor's name, for error messages.

    Returns:
        ``(U, sigma, V)`` with shapes (N, r), (r,), (M, r), r = the kept rank, in float32
        (float64 when W is float64), sigma descending.

    Raises:
        SpectuneError: bad ``svd``/``rank`` or a matrix that is not finite 2-D float.
    """
    check_matrix(W, name)
    if svd not in ("exact", "randomized"):
        raise SpectuneError(f"svd must be 'exact' or 'randomized', got {svd!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise SpectuneError(f"rank must be a positive integer or None, got {rank!r}")
    full = min(W.shape)
    A = W.detach().to(_compute_dtype(W))
    with torch.no_grad():
        if svd == "exact":
            U, sigma, Vh = torch.linalg.svd(A, full_matrices=False)  # (N,r) (r,) (r,M)
            V = Vh.mT
            keep = full if rank is None else min(rank, full)
        else:
            keep = min(DEFAULT_RANDOMIZED_RANK if rank is None else rank, full)
            q = min(keep + OVERSAMPLE, full)
            cuda = [A.device.index or 0] if A.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(seed)
                U, sigma, V = torch.svd_lowrank(A, q=q, niter=niter)  # (N,q) (q,) (M,q)
    return U[:, :keep], sigma[:keep], V[:, :keep]


def relevance_from_factors(U: torch.Tensor, sigma: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """S = |U| diag(sigma) |V|^T.

    Args:
        U: (N, r) left singular vectors.
        sigma: (r,) singular values.
        V: (M, r) right singular vectors.

    Returns:
        S, shape (N, M), non-negative.
    """
    return (U.abs() * sigma) @ V.abs().mT  # (N, r) @ (r, M) -> (N, M)


def relevance(
    W: torch.Tensor,
    svd: str = "exact",
    rank: int | None = None,
    *,
    niter: int = 2,
    seed: int = 0,
    name: str = "W",
) -> torch.Tensor:
    """Relevance scores S_ij = sum_k sigma_k |u_ik| |v_jk| of every weight of W.

    Args:
        W: matrix (N, M).
        svd: "exact" or "randomized" (truncated, see the module docstring).
        rank: number of singular triplets summed (None: all for exact, 256 for randomized).
        niter: power iterations of the randomized SVD.
        seed: seed of the randomized SVD.
        name: the tensor's name, for error messages.

    Returns:
        S, shape (N, M) like W, float32 (float64 when W is float64), on W's device.

    Raises:
        SpectuneError: W is not a finite 2-D float matrix, or bad ``svd``/``rank``.
    """
    U, sigma, V = svd_factors(W, svd, rank, niter=niter, seed=seed, name=name)
    with torch.no_grad():
        return relevance_from_factors(U, sigma, V)


def frobenius_norm(W: torch.Tensor) -> float:
    """||W||_F in float64 (= sqrt of the sum of squared singular values)."""
    return float(torch.linalg.vector_norm(W.detach().to(torch.float64)))


def frobenius_importance(norms: Sequence[float] | np.ndarray) -> np.ndarray:
    """R_i = ||W_i||_F / sum_j ||W_j||_F.

    Args:
        norms: Frobenius norms, one per matrix, >= 0.

    Returns:
        float64 array summing to 1 (all zeros when every norm is zero).
    """
    x = np.asarray(norms, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise SpectuneError("frobenius_importance needs a non-empty 1-D list of norms")
    if (x < 0).any() or not np.isfinite(x).all():
        raise SpectuneError("Frobenius norms must be finite and >= 0")
    total = x.sum()
    return x / total if total > 0 else np.zeros_like(x)


def alpha_importance(
    norms: Sequence[float] | np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    *,
    power: float = 1.0,
    alpha_range: tuple[float, float] = (2.0, 6.0),
) -> np.ndarray:
    """EXPERIMENTAL alpha-aware matrix importance (from "Enhancing FROG with WeightWatcher").

    Formula::

        a_i  = clip(alpha_i, low, high)            (non-finite alpha_i -> a_bar, see below)
        w_i  = ||W_i||_F * (a_i / a_bar) ** power    a_bar = geometric mean of the finite a_i
        R_i  = w_i / sum_j w_j

    Why this form:

    * Heavy-tailed self-regularization reads the power-law exponent alpha of a layer's
      eigenvalue spectrum as how well trained the layer is: alpha ~ 2-4 is well trained
      (strongly correlated, it carries much of the pretrained knowledge), alpha > 6 is
      under-trained / close to random. Methods that act on this (TempBalance's per-layer
      learning rates, AlphaLoRA's per-layer expert counts) give *more* training capacity to
      layers with *larger* alpha: they have the most room to learn, and moving the
      well-trained low-alpha layers less also protects against forgetting. We do the same
      with the trainable-weight budget, so the tilt increases with alpha.
    * It is a multiplicative tilt of FROG's own R_i, so ``power = 0`` gives back exactly the
      Frobenius importance, and with all alphas equal nothing changes.
    * Ratios (a_i / a_bar) make it independent of the alpha scale; ``power`` sets how strong
      the tilt is (power = 1: a layer with alpha = 6 gets 3x the share of an equally large
      alpha = 2 layer).
    * Clipping to [low, high] (WeightWatcher's usual 2..6 range by default) bounds the tilt
      to (high/low)**power, so one failed fit (alpha = 30) cannot take the whole budget; a
      failed fit (NaN) is neutral.

    Args:
        norms: Frobenius norms, one per matrix.
        alphas: power-law alphas, one per matrix (NaN allowed: treated as neutral).
        power: exponent of the tilt (gamma); 0 = plain Frobenius importance.
        alpha_range: clip range (low, high).

    Returns:
        float64 array summing to 1.
    """
    x = np.asarray(norms, dtype=np.float64)
    a = np.asarray(alphas, dtype=np.float64)
    if a.shape != x.shape:
        raise SpectuneError(f"got {a.size} alphas for {x.size} matrices; pass one per matrix")
    low, high = alpha_range
    finite = np.isfinite(a)
    if not finite.any():
        return frobenius_importance(x)
    clipped = np.clip(a, low, high)
    a_bar = math.exp(float(np.mean(np.log(clipped[finite]))))
    clipped = np.where(finite, clipped, a_bar)
    return frobenius_importance(x * (clipped / a_bar) ** power)


def matrix_alpha(W: torch.Tensor) -> float:
    """Power-law alpha of W's eigenvalue spectrum through spectune's spectral engine.

    Uses ``spectune.watch.esd.eigenvalues`` (eigenvalues of W^T W) and
    ``spectune.watch.powerlaw.fit_powerlaw`` (WeightWatcher-compatible fit), imported here
    so that FROG does not need them unless the alpha-aware importance is asked for.

    Returns:
        alpha (NaN when the fit fails).

    Raises:
        SpectuneError: the spectral engine is not available in this installation.
    """
    try:
        from spectune.watch.esd import eigenvalues
        from spectune.watch.powerlaw import fit_powerlaw
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise SpectuneError(
            "importance='alpha' needs spectune's spectral engine (spectune.watch.esd and "
            f"spectune.watch.powerlaw), which could not be imported ({exc}); pass "
            "precomputed alphas to plan_frog(alphas={name: alpha}) or use "
            "importance='frobenius'"
        ) from exc
    try:
        return float(fit_powerlaw(eigenvalues(W.detach())).alpha)
    except (ValueError, RuntimeError):
        return float("nan")


class RunningTopK:
    """Exact top-k of a stream of score matrices in O(k) memory.

    Candidates (score, matrix, flat position) are appended; entries not above the current
    threshold (the k-th best score seen at the last prune, a lower bound of the final k-th
    best) are never added, and the buffer is cut back to its top k whenever it exceeds 2k,
    so each prune is amortized over at least k insertions.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.size = 0
        self.threshold: float | None = None

    def add(self, flat: torch.Tensor, matrix: int) -> None:
        """Offer every entry of one matrix's flattened scores ``flat`` (shape (N*M,))."""
        if self.threshold is None:
            pos = torch.topk(flat, min(self.k, flat.numel()), sorted=False).indices
        else:
            pos = torch.nonzero(flat > self.threshold).reshape(-1)
            if pos.numel() > self.k:
                pos = torch.topk(flat, self.k, sorted=False).indices
        if pos.numel():
            self.chunks.append((flat[pos], torch.full_like(pos, matrix), pos))
            self.size += pos.numel()
        if self.size > 2 * self.k:
            self._prune()

    def _prune(self) -> None:
        val = torch.cat([c[0].to(torch.float64) for c in self.chunks])
        mat = torch.cat([c[1] for c in self.chunks])
        pos = torch.cat([c[2] for c in self.chunks])
        if val.numel() > self.k:
            keep = torch.topk(val, self.k, sorted=False).indices
            val, mat, pos = val[keep], mat[keep], pos[keep]
            self.threshold = float(val.min())
        self.chunks = [(val, mat, pos)]
        self.size = val.numel()

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores, matrix ids, flat positions) of the top k, in no particular order."""
        self._prune()
        return (
            self.chunks[0]
            if self.chunks
            else (
                torch.empty(0, dtype=torch.float64),
                torch.empty(0, dtype=torch.int64),
                torch.empty(0, dtype=torch.int64),
            )
        )
