"""FROG's budget: how many trainable weights in total, and how many in each matrix.

Paper section 3.5: T_trainable = G * T and matrix i gets round(T_trainable * R_i) weights.
Rounding each share on its own does not add up to T_trainable (and a share can exceed the
matrix), so we use the largest-remainder method with caps:

1. every matrix whose exact share T_left * w_i / sum(w) reaches its size is capped at its
   size, and the rest of the budget is shared again among the others, until no share
   exceeds its matrix;
2. each remaining matrix gets floor(share) and the leftover units go one each to the largest
   fractional parts (ties: the earlier matrix).

The counts then sum exactly to T_trainable, each is within one of its (capped) exact share,
and none exceeds its matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from spectune.errors import SpectuneError


def total_trainable(budget: float, total: int) -> int:
    """T_trainable = round(G * T), rounding halves up.

    Args:
        budget: G in (0, 1].
        total: T, the number of target weights (> 0).

    Returns:
        The number of trainable weights, in [1, T].

    Raises:
        SpectuneError: G out of range, or G so small that no weight would train.
    """
    if not (0.0 < budget <= 1.0):
        raise SpectuneError(f"budget must be in (0, 1], got {budget!r}")
    if total <= 0:
        raise SpectuneError(f"the target matrices hold no weights (T = {total})")
    count = min(total, math.floor(budget * total + 0.5))
    if count < 1:
        raise SpectuneError(
            f"budget {budget!r} of {total} target weights rounds to 0 trainable weights; "
            f"use budget >= {0.5 / total:.3g}"
        )
    return count


def overparam_importance(
    importance: Sequence[float] | np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    *,
    mode: str,
    factor: float = 0.5,
    threshold: float = 6.0,
) -> np.ndarray:
    """Move budget away from (or towards) overparameterized matrices.

    The FROG paper's WeightWatcher section reads alpha > 6 as an overparameterized (under-
    trained, close to random) layer. ``mode='away'`` multiplies those matrices' importance
    by ``factor`` and ``'towards'`` divides it by ``factor``; the result is renormalized to
    sum 1, so the total budget is unchanged and only its split moves. NaN alphas (failed
    fits) are left as they are.

    Args:
        importance: R_i, one per matrix (e.g. Frobenius importance).
        alphas: power-law alpha of each matrix.
        mode: "none", "away" or "towards".
        factor: in (0, 1).
        threshold: alpha above which a matrix is overparameterized.

    Returns:
        float64 importance summing to 1.

    Raises:
        SpectuneError: mismatched lengths, a bad mode or factor.
    """
    r = np.asarray(importance, dtype=np.float64)
    a = np.asarray(alphas, dtype=np.float64)
    if r.shape != a.shape or r.ndim != 1:
        raise SpectuneError(f"overparam_importance: got {a.size} alphas for {r.size} matrices")
    if mode not in ("none", "away", "towards"):
        raise SpectuneError(f"overparam mode must be 'none', 'away' or 'towards', got {mode!r}")
    if not 0.0 < factor < 1.0:
        raise SpectuneError(f"overparam factor must be in (0, 1), got {factor!r}")
    if mode == "none" or r.sum() <= 0:
        return r / r.sum() if r.sum() > 0 else r
    over = np.isfinite(a) & (a > threshold)
    tilt = np.where(over, factor if mode == "away" else 1.0 / factor, 1.0)
    w = r * tilt
    return w / w.sum()


def allocate(total: int, weights: Sequence[float] | np.ndarray, caps: Sequence[int]) -> np.ndarray:
    """Split ``total`` units over matrices in proportion to ``weights``, capped at ``caps``.

    Args:
        total: units to hand out (T_trainable), 0 <= total <= sum(caps).
        weights: non-negative importances, one per matrix (need not sum to 1). If the
            matrices that still have room all weigh zero, the rest is split in proportion
            to their free room.
        caps: the most each matrix can take (its size), >= 0.

    Returns:
        int64 array of counts, 0 <= counts <= caps, summing exactly to ``total``.

    Raises:
        SpectuneError: mismatched lengths, negative or non-finite weights, or
            total > sum(caps).
    """
    w = np.asarray(weights, dtype=np.float64)
    cap = np.asarray(caps, dtype=np.int64)
    if w.ndim != 1 or w.shape != cap.shape:
        raise SpectuneError(f"allocate: got {w.size} weights for {cap.size} caps")
    if not np.isfinite(w).all() or (w < 0).any():
        raise SpectuneError("allocate: weights must be finite and >= 0")
    if (cap < 0).any():
        raise SpectuneError("allocate: caps must be >= 0")
    total = int(total)
    if total < 0 or total > int(cap.sum()):
        raise SpectuneError(f"allocate: cannot place {total} units in matrices of {cap.sum()}")
    counts = np.zeros_like(cap)
    active = cap > 0
    remaining = total
    while remaining > 0:
        act = np.flatnonzero(active)
        share = w[act]
        if share.sum() <= 0:  # nothing left with weight: spread over the free room
            share = cap[act].astype(np.float64)
        quota = remaining * share / share.sum()
        full = quota >= cap[act]
        if full.any():  # cap these and share the rest again
            counts[act[full]] = cap[act[full]]
            remaining -= int(cap[act[full]].sum())
            active[act[full]] = False
            continue
        floor = np.minimum(np.floor(quota).astype(np.int64), cap[act])
        left = remaining - int(floor.sum())
        frac = quota - floor
        order = np.lexsort((act, -frac))  # largest fraction first, then the earlier matrix
        for k in order:
            if left == 0:
                break
            if floor[k] < cap[act[k]]:
                floor[k] += 1
                left -= 1
        if left != 0:  # pragma: no cover - impossible: each unit of `left` has a slot
            raise RuntimeError("allocate: largest-remainder rounding failed")
        counts[act] = floor
        remaining = 0
    return counts
