"""FROG's budget on the embedded model with ``overparam='none' | 'away' | 'towards'``.

Reads the power-law alpha of every linear layer of SmolLM2-135M-Instruct (spectune.analyze),
marks the overparameterized ones (alpha > 6) and prints, for plain FROG and the two options
at the same budget G, how many trainable weights land on them (Frobenius importance,
per-matrix largest-remainder allocation, as plan_frog allocates).

Run: .venv/bin/python bench/frog_overparam.py [--budget 0.023] [--factor 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.023)
    parser.add_argument("--factor", type=float, default=0.5)
    args = parser.parse_args()

    from spectune.frog.budget import allocate, overparam_importance, total_trainable
    from spectune.frog.scoring import frobenius_importance
    from spectune.models import default_model_dir
    from spectune.spectral import analyze

    d = analyze(str(default_model_dir()), layers=r"\.layers\.", progress=False)
    d = d[d["layer_type"] == "linear"]
    sizes = (d["N"] * d["M"]).to_numpy(dtype=np.int64)
    norms = np.sqrt(d["norm"].to_numpy(dtype=np.float64))  # WW's norm is ||W||_F^2
    alphas = d["alpha"].to_numpy(dtype=np.float64)
    over = np.isfinite(alphas) & (alphas > 6.0)
    k = total_trainable(args.budget, int(sizes.sum()))
    print(f"{len(d)} linear layers, {over.sum()} with alpha > 6 "
          f"({100 * sizes[over].sum() / sizes.sum():.1f}% of the weights); G={args.budget}: "
          f"{k} trainable weights")  # fmt: skip
    for mode in ("none", "away", "towards"):
        r = overparam_importance(frobenius_importance(norms), alphas, mode=mode, factor=args.factor)
        counts = allocate(k, r, sizes)
        print(f"  overparam={mode:8s}: {counts[over].sum():8d} weights on alpha > 6 layers "
              f"({100 * counts[over].sum() / k:5.1f}% of the budget)")  # fmt: skip
    kinds = d.loc[over, "name"].value_counts().to_dict()
    print("alpha > 6 layers by kind:", kinds)


if __name__ == "__main__":
    main()
