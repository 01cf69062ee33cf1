"""spectune's truncated power-law fits vs WeightWatcher 0.7.7 (+ powerlaw 1.5), one layer at a time.

WeightWatcher fits ``fit='TPL'`` / ``fit='E_TPL'`` through the ``powerlaw`` package
(``pl_package='powerlaw'``), a Nelder-Mead maximum-likelihood fit and an mpmath KS distance
for every candidate xmin: tens of seconds per layer. A whole-model run is impractical (and
with powerlaw 2.0 every layer fails), so this bench times a few layers of the embedded
SmolLM2-135M-Instruct, each analyzed alone by both tools in one run, and prints the time of
each, the ratio and the largest |d alpha| / |d Lambda|.

Run: .venv/bin/python bench/tpl_vs_weightwatcher.py [--fit TPL E_TPL] [--layers NAME ...]
     [--safetensors FILE --layers NAME ...]   # another model's layers, e.g. all-MiniLM-L6-v2

Default layers: model.layers.0.self_attn.k_proj (576 x 192), model.layers.0.self_attn.q_proj
(576 x 576) and model.layers.0.mlp.down_proj (576 x 1536).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import time
import warnings

import torch

DEFAULT_LAYERS = [
    "model.layers.0.self_attn.k_proj",
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.down_proj",
]


def layer_module(source: str, name: str) -> torch.nn.Module:
    """The named weight as a one-layer module (what both tools analyze)."""
    from spectune.weights import open_source

    with open_source(source) as src:
        W = src.load(f"{name}.weight" if not name.endswith(".weight") else name).float()
    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    lin.weight.data = W
    return torch.nn.Sequential(lin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", nargs="+", default=["TPL", "E_TPL"], choices=["TPL", "E_TPL"])
    parser.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS)
    parser.add_argument(
        "--safetensors", default=None, help="a model file or folder (default: the embedded model)"
    )
    args = parser.parse_args()

    import weightwatcher as ww

    from spectune.models.loading import default_model_dir
    from spectune.watch import analyze

    source = args.safetensors or str(default_model_dir())
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    print(f"{'layer':40s} {'fit':6s} {'M':>5s} {'WW s':>8s} {'ours s':>8s} {'ratio':>7s} "
          f"{'|d alpha|':>10s} {'|d Lambda|/L':>12s}  warning")  # fmt: skip
    tot_ww = tot_ours = 0.0
    for name in args.layers:
        module = layer_module(source, name)
        M = min(module[0].weight.shape)
        for fit in args.fit:
            t0 = time.perf_counter()
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                theirs = ww.WeightWatcher(model=module).analyze(fit=fit, pl_package="powerlaw")
            t1 = time.perf_counter()
            ours = analyze(module, fit=fit, progress=False)
            t2 = time.perf_counter()
            a, b = ours.iloc[0], theirs.iloc[0]
            d_alpha = abs(a["alpha"] - b["alpha"])
            d_lam = abs(a["Lambda"] - b["Lambda"]) / abs(b["Lambda"])
            tot_ww += t1 - t0
            tot_ours += t2 - t1
            print(f"{name:40s} {fit:6s} {M:5d} {t1 - t0:8.2f} {t2 - t1:8.2f} "
                  f"{(t1 - t0) / (t2 - t1):6.1f}x {d_alpha:10.1e} {d_lam:12.1e}  "
                  f"alpha={a['alpha']:.4f} {a['warning']}")  # fmt: skip
    print(
        f"total: WeightWatcher {tot_ww:.1f} s, spectune {tot_ours:.1f} s, "
        f"ratio {tot_ww / tot_ours:.1f}x"
    )


if __name__ == "__main__":
    main()
