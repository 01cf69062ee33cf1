"""FROG relevance of a 4096 x 4096 matrix: exact vs randomized (k = 64, 256).

Prints, per matrix kind, the wall time of each way of computing S = |U| diag(sigma) |V|^T
and how much of the exact top-1% set (the weights FROG would train at G = 1% in that matrix)
each approximation recovers. Two synthetic float32 matrices, seeded:

- "power-law": a Gaussian bulk plus a rank-512 part with power-law singular values, the
  heavy-tailed shape of trained layers (the case the randomized option is meant for);
- "gaussian": pure i.i.d. noise, a flat Marchenko-Pastur spectrum (worst case for any
  truncation: no few directions dominate).

Then the same comparison on real matrices of the embedded SmolLM2-135M (layer 14's q_proj
576x576 and up_proj 1536x576), unless --no-real.

Run: .venv/bin/python bench/frog_relevance.py [--size 4096] [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spectune.tuning.methods.frog.scoring import relevance


def make_matrix(kind: str, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=gen) / n**0.5  # bulk, singular values in [0, 2]
    if kind == "power-law":
        r = 512
        scale = 20.0 * torch.arange(1, r + 1, dtype=torch.float32) ** -0.8  # 20 ... 0.14
        left = torch.randn(n, r, generator=gen) / n**0.5
        right = torch.randn(r, n, generator=gen) / n**0.5
        W += (left * scale) @ right
    return W


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def top_set(S: torch.Tensor, fraction: float) -> torch.Tensor:
    k = max(1, round(fraction * S.numel()))
    return torch.topk(S.reshape(-1), k, sorted=False).indices


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|A and B| / |A| for two index sets of equal size."""
    return torch.isin(a, b).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.01, help="top set size (1%%)")
    parser.add_argument("--no-real", action="store_true", help="skip the SmolLM2 matrices")
    args = parser.parse_args()
    n = args.size
    print(
        f"FROG relevance, {n}x{n} float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, seed {args.seed}, top {100 * args.fraction:g}% sets"
    )
    cases = [
        (f"{kind} {n}x{n}", lambda kind=kind: make_matrix(kind, n, args.seed))
        for kind in ("power-law", "gaussian")
    ]
    if not args.no_real:
        cases += [(f"SmolLM2 {name}", lambda name=name: smollm_matrix(name)) for name in REAL]
    for label, build in cases:
        W = build()
        t_exact, S = timed(lambda W=W: relevance(W), 1)
        exact_top = top_set(S, args.fraction)
        print(f"\n[{label}]")
        print(f"  {'method':<18}{'time (s)':>10}{'speed-up':>10}{'top-1% overlap':>16}")
        print(f"  {'exact':<18}{t_exact:>10.2f}{1.0:>10.1f}{1.0:>16.4f}")
        for k in (64, 256):
            t_k, S_k = timed(
                lambda W=W, k=k: relevance(W, "randomized", rank=k, seed=args.seed), args.repeats
            )
            ov = overlap(exact_top, top_set(S_k, args.fraction))
            print(f"  {f'randomized k={k}':<18}{t_k:>10.2f}{t_exact / t_k:>10.1f}{ov:>16.4f}")
            del S_k


REAL = ("model.layers.14.self_attn.q_proj", "model.layers.14.mlp.up_proj")


def smollm_matrix(name: str) -> torch.Tensor:
    from safetensors import safe_open

    from spectune.models.loading import default_model_dir

    with safe_open(str(default_model_dir() / "model.safetensors"), "pt") as fh:
        return fh.get_tensor(name + ".weight").float()


if __name__ == "__main__":
    main()
