"""Intruder dimensions of a LoRA update on the embedded SmolLM2-135M-Instruct: where the time
goes, and the two routes to the tuned matrix's top-k singular vectors.

For each of the model's 210 target matrices W_0 and a random rank-r update s B A (seeded):

1. the base's left singular vectors (:func:`~spectune.watch.intruders.base_left_vectors`),
   then the same through :func:`~spectune.watch.intruders.shared_base_left_vectors` a second
   time (what a second adapter of the same base pays: a SHA-256 of W_0 and a lookup);
2. the top-k of W_0 + s B A by Lanczos (``scipy.sparse.linalg.svds`` on the operator, the
   route before) against the top-k eigenpairs of the smaller Gram matrix (the route now), and
   the largest difference of their similarities sim_i = max_j |<u_i, u_j(W_0)>|.

Prints the totals over the 210 matrices, their ratio and whether the intruder counts agree.

Run: .venv/bin/python bench/intruders.py [--r 8] [--top-k 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()

    from scipy.sparse.linalg import LinearOperator, svds

    from spectune.models.loading import resolve_model_dir
    from spectune.watch.intruders import (
        _top_left,
        base_left_vectors,
        clear_shared_base_vectors,
        shared_base_left_vectors,
    )
    from spectune.weights import open_source

    rng = np.random.default_rng(0)
    k = args.top_k
    t = {"base": 0.0, "shared": 0.0, "lanczos": 0.0, "gram": 0.0}
    worst, agree, n = 0.0, 0, 0
    clear_shared_base_vectors()
    with open_source(resolve_model_dir("default")) as src:
        names = [i.name for i in src.tensors() if ".layers." in i.name and i.ndim == 2]
        for name in names:
            W0 = src.load(name).double().numpy()
            B = rng.standard_normal((W0.shape[0], args.r)) * 0.02
            A = rng.standard_normal((args.r, W0.shape[1])) / np.sqrt(W0.shape[1])
            start = time.perf_counter()
            U0 = base_left_vectors(W0)
            t["base"] += time.perf_counter() - start
            shared_base_left_vectors(W0)  # the first adapter's call fills the cache
            start = time.perf_counter()
            shared_base_left_vectors(W0)
            t["shared"] += time.perf_counter() - start
            op = LinearOperator(W0.shape, matvec=lambda x, W0=W0, B=B, A=A: W0 @ x + B @ (A @ x),
                                rmatvec=lambda y, W0=W0, B=B, A=A: W0.T @ y + A.T @ (B.T @ y),
                                dtype=np.float64)  # fmt: skip
            start = time.perf_counter()
            U, S, _ = svds(op, k=k, tol=0, v0=np.random.default_rng(0).standard_normal(
                min(W0.shape)))  # fmt: skip
            t["lanczos"] += time.perf_counter() - start
            U = U[:, np.argsort(S)[::-1]]
            start = time.perf_counter()
            U_g, _ = _top_left(W0 + B @ A, k)
            t["gram"] += time.perf_counter() - start
            sim_l = np.abs(U.T @ U0).max(axis=1)
            sim_g = np.abs(U_g.T @ U0).max(axis=1)
            worst = max(worst, float(np.abs(sim_l - sim_g).max()))
            agree += int((sim_l < 0.5).sum() == (sim_g < 0.5).sum())
            n += 1
    clear_shared_base_vectors()
    print(f"SmolLM2-135M, {n} matrices, a random LoRA r={args.r}, top_k={k} (seconds, totals):")
    print(f"  base vectors: {t['base']:.2f} s computed, {t['shared']:.2f} s shared "
          f"({t['base'] / max(t['shared'], 1e-9):.0f}x)")  # fmt: skip
    print(f"  tuned top-{k}: Lanczos {t['lanczos']:.2f} s, Gram {t['gram']:.2f} s "
          f"({t['lanczos'] / t['gram']:.1f}x); max |d sim| {worst:.1e}; counts agree on "
          f"{agree} of {n}")  # fmt: skip


if __name__ == "__main__":
    main()
