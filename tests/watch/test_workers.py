"""The threaded path of analyze: two workers give exactly what one worker gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from spectune.watch import analyze


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Twelve matrices of mixed shapes: Gaussian (MP bulk) and heavy-tailed (Student t)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (n, m) in enumerate([(96, 64), (64, 96), (128, 48), (80, 80)] * 3):
        w = torch.randn(n, m, generator=g, dtype=torch.float64)
        if i % 2:
            w = torch.from_numpy(np.random.default_rng(i).standard_t(2.5, size=(n, m)))
        out[f"layers.{i}.proj.weight"] = w
    return out


def test_two_workers_give_the_same_rows_as_one():
    weights = _weights()
    one = analyze(weights, workers=1, progress=False, randomize=True, seed=3)
    two = analyze(weights, workers=2, progress=False, randomize=True, seed=3)
    assert len(one) == 12 and (one["status"] == "success").sum() >= 10
    pd.testing.assert_frame_equal(one, two, check_exact=True)
    f32 = [analyze(weights, workers=w, precision="float32", progress=False) for w in (1, 2)]
    pd.testing.assert_frame_equal(f32[0], f32[1], check_exact=True)
