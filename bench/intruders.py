"""Intruder dimensions of a LoRA update: the low-rank route vs the dense computation.

Both need every left singular vector of the base W_0 (one dense SVD, shared by all adapters
of that base: timed separately). The dense route then takes the SVD of W_0 + s B A; the
low-rank route finds the top-k singular vectors of W_0 + s B A by Lanczos without forming
B A. Prints the times, their ratio and whether the intruder counts agree.

Run: .venv/bin/python bench/intruders.py [--n 2048] [--r 16] [--top-k 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()

    from spectune.watch.intruders import (
        base_left_vectors,
        intruder_dimensions,
        lora_intruder_dimensions,
    )

    rng = np.random.default_rng(0)
    n, r = args.n, args.r
    q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    W0 = (q1 * (10.0 / (1.0 + np.arange(n)) ** 0.7)) @ q2.T  # a decaying spectrum
    B = rng.standard_normal((n, r)) * 0.5
    A = rng.standard_normal((r, n)) / np.sqrt(n)
    t = time.perf_counter()
    U0 = base_left_vectors(W0)
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    dense = intruder_dimensions(W0, W0 + 2.0 * B @ A, top_k=args.top_k, U_base=U0)
    t_dense = time.perf_counter() - t
    t = time.perf_counter()
    lora = lora_intruder_dimensions(W0, B, A, 2.0, top_k=args.top_k, U_base=U0)
    t_lora = time.perf_counter() - t
    print(f"{n} x {n} base, LoRA r={r}, top_k={args.top_k}")
    print(f"  base SVD (shared): {t_base:.2f} s")
    print(f"  dense route:       {t_dense:.2f} s  intruders {dense.num_intruders}")
    print(f"  low-rank route:    {t_lora:.2f} s  intruders {lora.num_intruders} "
          f"({t_dense / t_lora:.1f}x; max |d sim| "
          f"{np.max(np.abs(dense.similarities - lora.similarities)):.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
