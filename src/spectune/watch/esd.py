"""Empirical spectral densities (ESDs): the eigenvalues of W^T W, computed fast.

Conventions (WeightWatcher's): for an N x M matrix with N = max dim and M = min dim, the ESD is
the M eigenvalues of the M x M Gram matrix X = W^T W (or W W^T), i.e. the squared singular
values of W, without any 1/N normalization. Eigenvalues are returned sorted ascending as
float64 numpy arrays.

WeightWatcher computes them with a full float64 SciPy SVD per matrix. We form the M x M Gram
matrix once (BLAS syrk: half of one GEMM, O(N M^2 / 2)) and run LAPACK's symmetric
eigensolver (sytrd + sterf, O(M^3), a fraction of an SVD's cost) on it. In float64 the
eigenvalues agree with the SVD's squared singular values to about 1e-13 * lambda_max
(absolute), which changes no power-law fit: the tail eigenvalues that the fit uses are
large. ``precision="float32"`` does both steps in float32 (about twice as fast again;
relative error ~1e-6 on the tail, alphas within ~1e-3). ``method="svd"`` uses
``torch.linalg.svdvals`` instead (slower, most accurate for the smallest eigenvalues).

A LoRA update Delta W = s * B A (B: N x r, A: r x M) has at most r nonzero eigenvalues; they
come exactly from QR factorizations of B and A^T and the singular values of an r x r product,
in O((N + M) r^2) time, never forming the N x M product.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from spectune.watch._lapack import eigvalsh_upper, gram_upper

Precision = Literal["float64", "float32"]
Method = Literal["gram", "svd"]

#: WeightWatcher multiplies Conv2D kernel slices by sqrt(conv2d_count / 2) with conv2d_count = 1.
CONV2D_NORM = float(np.sqrt(0.5))

#: Relative floor for the numerical rank of a float64 Gram-route ESD. An exactly zero singular
#: value comes out of W^T W + eigvalsh as rounding noise of about eps * lambda_max (measured
#: <= 3e-16 lambda_max), i.e. a "singular value" of ~1e-8 s_max, far above numpy's rank tolerance
#: s_max * N * eps, so without a floor a rank-deficient matrix would look full rank. Singular
#: values below GRAM_RANK_FLOOR * s_max = 10 sqrt(eps) * s_max (1.5e-7 s_max, 100x that noise in
#: eigenvalue terms) count as zero. Real weights sit far above it (SmolLM2-135M's smallest is
#: 1.3e-6 s_max), where the rank equals WeightWatcher's SVD-based one. In float32 the noise
#: (~3e-4 s_max) overlaps real small singular values, so no floor is applied and the rank
#: columns cannot see exact rank deficiency; use float64 for them.
GRAM_RANK_FLOOR = float(10 * np.sqrt(np.finfo(np.float64).eps))


def gram_rank_floor(precision: str) -> float:
    """The rank floor (relative to s_max) for a Gram-route ESD at this precision."""
    return GRAM_RANK_FLOOR if precision == "float64" else 0.0


def _dtype(precision: str) -> torch.dtype:
    if precision == "float64":
        return torch.float64
    if precision == "float32":
        return torch.float32
    raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")


def eigenvalues(
    W: torch.Tensor | np.ndarray,
    precision: Precision = "float64",
    method: Method = "gram",
) -> np.ndarray:
    """Eigenvalues of W^T W for one 2-D matrix, sorted ascending.

    Args:
        W: a matrix of shape (N, M) or (M, N), any float dtype (bf16/fp16 are upcast).
        precision: arithmetic precision, "float64" (default) or "float32".
        method: "gram" (Gram matrix + symmetric eigensolver, default) or "svd".

    Returns:
        float64 array of shape (min(N, M),), ascending, clipped at 0 from below.

    Raises:
        ValueError: W is not 2-D or holds NaN/Inf.
    """
    t = torch.as_tensor(W).detach()
    if t.ndim != 2:
        raise ValueError(f"eigenvalues() needs a 2-D matrix, got shape {tuple(t.shape)}")
    dtype = _dtype(precision)
    with torch.no_grad():
        if method == "svd":
            if not math.isfinite(float(t.sum(dtype=torch.float64))):
                raise ValueError("matrix holds NaN or Inf values")
            x = t if t.shape[0] >= t.shape[1] else t.T
            sv = torch.linalg.svdvals(x.to(device="cpu", dtype=dtype))
            ev = (sv.double() ** 2).numpy()
        elif method == "gram":
            gram = gram_matrix(t, dtype)
            # every entry of W is squared into some diagonal entry, so NaN/Inf anywhere in W
            # shows there (in float32 also an overflow, |w| > ~1e19)
            if not np.isfinite(np.diagonal(gram)).all():
                raise ValueError(
                    "matrix holds NaN or Inf values"
                    + (" (or values too large for float32)" if precision == "float32" else "")
                )
            ev = eigvalsh_upper(gram).astype(np.float64)
        else:
            raise ValueError(f"method must be 'gram' or 'svd', got {method!r}")
    ev = np.sort(np.clip(ev, 0.0, None))
    return ev


#: elements per block when accumulating a Gram matrix (bounds the upcast copy to 64 MB)
_GRAM_BLOCK_ELEMS = 1 << 23


def gram_matrix(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """The min(N, M) x min(N, M) Gram matrix of ``t`` (t^T t if N >= M, else t t^T) in ``dtype``.

    Computed with BLAS ``syrk`` (only the upper triangle: half a GEMM's flops), one block of
    rows (or columns) at a time, so a bf16 4096 x 128256 embedding never exists in float64 as
    a whole: peak extra memory is one block plus the result.

    Args:
        t: a 2-D tensor (N, M), any float dtype, on any device (blocks are moved to the CPU).
        dtype: ``torch.float64`` or ``torch.float32``.

    Returns:
        Fortran-ordered numpy array whose upper triangle holds the Gram matrix (the strict
        lower triangle is zero); pass ``lower=False`` to LAPACK.
    """
    N, M = t.shape
    tall = N >= M
    k = min(N, M)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    gram = np.zeros((k, k), dtype=np_dtype, order="F")
    step = max(1, _GRAM_BLOCK_ELEMS // max(k, 1))
    for start in range(0, max(N, M), step):
        part = t[start : start + step] if tall else t[:, start : start + step]
        x = np.ascontiguousarray(part.to(device="cpu", dtype=dtype).numpy())
        gram_upper(x, gram, tall=tall)
    return gram


def conv2d_matrices(W: torch.Tensor) -> list[torch.Tensor]:
    """Split a Conv2D kernel (out, in, kh, kw) into its kh*kw per-position (out, in) matrices."""
    if W.ndim != 4:
        raise ValueError(f"a Conv2D kernel has 4 dims, got shape {tuple(W.shape)}")
    return [W[:, :, i, j] for i in range(W.shape[2]) for j in range(W.shape[3])]


def pooled_eigenvalues(
    mats: list[torch.Tensor], scale: float = 1.0, precision: Precision = "float64"
) -> np.ndarray:
    """Eigenvalues of several matrices pooled into one ESD (Conv2D kernels), ascending.

    Args:
        mats: matrices of equal shape.
        scale: multiply every matrix by this before the eigenvalues (e.g. :data:`CONV2D_NORM`).
        precision: "float64" or "float32".
    """
    evs = [eigenvalues(m, precision=precision) for m in mats]
    return np.sort(np.concatenate(evs)) * (scale * scale)


def lora_eigenvalues(
    A: torch.Tensor,
    B: torch.Tensor,
    scaling: float = 1.0,
) -> np.ndarray:
    """The nonzero-rank eigenvalues of (s B A)^T (s B A) without forming B A.

    With B = Q_B R_B and A^T = Q_A R_A (thin QR, Q with orthonormal columns),
    s B A = Q_B (s R_B R_A^T) Q_A^T, so the singular values of s B A are those of the
    r x r matrix s R_B R_A^T. Cost O((N + M) r^2) instead of O(N M min(N, M)).

    Args:
        A: lora_A weight, shape (r, M).
        B: lora_B weight, shape (N, r).
        scaling: the LoRA scaling s (lora_alpha / r, or lora_alpha / sqrt(r) for rsLoRA).

    Returns:
        float64 array of shape (r,), ascending (zeros where B A has lower rank).
    """
    a = torch.as_tensor(A).detach().to("cpu", torch.float64)
    b = torch.as_tensor(B).detach().to("cpu", torch.float64)
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(
            f"LoRA shapes do not chain: B {tuple(b.shape)} @ A {tuple(a.shape)} needs "
            "B of shape (out, r) and A of shape (r, in)"
        )
    # one reduction each: the sum of finite float64 entries of a weight cannot overflow
    if not (math.isfinite(float(a.sum())) and math.isfinite(float(b.sum()))):
        raise ValueError("LoRA matrices hold NaN or Inf values")
    with torch.no_grad():
        _, r_b = torch.linalg.qr(b)  # (r, r) when N >= r
        _, r_a = torch.linalg.qr(a.T)  # (r, r) when M >= r
        core = (r_b @ r_a.T) * float(scaling)
        sv = torch.linalg.svdvals(core)
    return np.sort(sv.numpy() ** 2)


__all__ = [
    "CONV2D_NORM",
    "GRAM_RANK_FLOOR",
    "conv2d_matrices",
    "eigenvalues",
    "gram_rank_floor",
    "lora_eigenvalues",
    "pooled_eigenvalues",
]
