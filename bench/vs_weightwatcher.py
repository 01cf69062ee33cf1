"""spectune vs WeightWatcher 0.7.7 on the same inputs, timed in one run.

Prints wall times, the speed-up ratio and the largest |alpha difference| for:

1. the embedded SmolLM2-135M-Instruct, all Linear layers (210 matrices), spectune at float64
   and at float32, WeightWatcher with its defaults (SciPy float64 SVD on CPU);
2. a LoRA adapter with r = 64 on 4096 x 4096 matrices (generated, seeded): WeightWatcher
   forms B A and runs a truncated SVD; spectune uses the exact rank-r route.

Targets (issue 3): >= 5x at float64 with the same alphas, >= 10x at float32 with
max |d alpha| <= 0.01, >= 100x on the adapter.

Run: .venv/bin/python bench/vs_weightwatcher.py [--lora-modules 4] [--repeat 1] [--threads N]

Measure on a quiet machine. For the model, every round runs WeightWatcher, spectune float64
and spectune float32 in turn; the speed-up printed is the median of the rounds' ratios, with
their range.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import time

import numpy as np
import torch


def quiet():
    logging.disable(logging.WARNING)
    return contextlib.redirect_stdout(io.StringIO())


def timed(fn, repeat: int):
    """Median wall time of ``repeat`` runs after one untimed warm-up (imports, caches).

    The LoRA case times each tool in its own block rather than in :func:`rounds`: a 50 ms run
    started right after WeightWatcher's multi-threaded SVD measures 85 ms (the other tool's
    BLAS threads are still winding down), which is not spectune's speed."""
    fn()
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def rounds(fns: dict, repeat: int) -> tuple[dict, dict]:
    """Run every fn once untimed (imports, caches), then ``repeat`` rounds of all of them in
    turn; returns each fn's times (one per round) and its last output. Interleaving puts every
    tool through the same machine states, so the ratios of one round are comparable."""
    out = {name: fn() for name, fn in fns.items()}
    times: dict = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t)
    return times, out


def bench_model(repeat: int) -> None:
    import weightwatcher as ww

    from spectune.models.loading import load_default_model
    from spectune.watch import analyze

    model, _ = load_default_model()
    ids = [i for i, (_, m) in enumerate(model.named_modules()) if isinstance(m, torch.nn.Linear)]
    ids = [i for i, (n, _) in enumerate(model.named_modules()) if i in ids and n != "lm_head"]
    watcher = ww.WeightWatcher(model=model)

    def weightwatcher():
        with quiet():
            return watcher.analyze(layers=ids)

    times, out = rounds(
        {
            "weightwatcher": weightwatcher,
            "float64": lambda: analyze(model, layers=ids, progress=False),
            "float32": lambda: analyze(model, layers=ids, progress=False, precision="float32"),
        },
        repeat,
    )
    ref = out["weightwatcher"].set_index("longname")
    t_ww = times["weightwatcher"]
    for label in ("float64", "float32"):
        d, t = out[label], times[label]
        diff = np.abs(d.set_index("longname")["alpha"] - ref.loc[d["longname"], "alpha"].to_numpy())
        ratios = [a / b for a, b in zip(t_ww, t, strict=True)]
        spread = f" (rounds: {min(ratios):.1f}x to {max(ratios):.1f}x)" if len(ratios) > 1 else ""
        print(
            f"SmolLM2-135M linear ({len(d)} matrices) {label}: weightwatcher "
            f"{statistics.median(t_ww):.1f} s, spectune {statistics.median(t):.2f} s, "
            f"speed-up {statistics.median(ratios):.1f}x{spread}, max |d alpha| {diff.max():.2e}"
        )


class _Pair(torch.nn.Module):
    def __init__(self, dim: int, r: int, gen: torch.Generator) -> None:
        super().__init__()
        self.lora_A = torch.nn.Linear(dim, r, bias=False)
        self.lora_B = torch.nn.Linear(r, dim, bias=False)
        with torch.no_grad():
            self.lora_A.weight.copy_(torch.randn(r, dim, generator=gen) / dim**0.5)
            self.lora_B.weight.copy_(torch.randn(dim, r, generator=gen) * 0.01)


def bench_lora(n_modules: int, repeat: int) -> None:
    import weightwatcher as ww

    from spectune.watch import analyze

    gen = torch.Generator().manual_seed(0)
    dim, r = 4096, 64
    model = torch.nn.Module()
    for i in range(n_modules):
        model.add_module(f"q_proj{i}", _Pair(dim, r, gen))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {
        k.replace("q_proj", "layers.").replace(".lora", ".q_proj.lora"): v for k, v in state.items()
    }
    state = {k.replace(".lora_A.", ".lora_A.").replace("layers.", "base_model.model.layers."): v
             for k, v in state.items()}  # fmt: skip
    cfg = {"r": r, "lora_alpha": r, "peft_type": "LORA", "target_modules": ["q_proj"]}
    with quiet():
        watcher = ww.WeightWatcher(model=model)
        t_ww, ref = timed(lambda: watcher.analyze(peft=True, min_evals=1), repeat)

    from spectune.weights import open_source

    def ours():
        with open_source(state, peft=True, lora_config=cfg) as src:
            return analyze(src, peft=True, lora_scaling=False, progress=False)

    t_st, d = timed(ours, repeat)
    diff = np.abs(np.sort(d["alpha"].to_numpy()) - np.sort(ref["alpha"].to_numpy()))
    print(
        f"LoRA r={r} on {n_modules} x {dim}x{dim}: weightwatcher {t_ww:.2f} s, spectune "
        f"{t_st:.3f} s, speed-up {t_ww / t_st:.0f}x, max |d alpha| {diff.max():.2e} "
        f"({len(ref)} vs {len(d)} rows)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lora-modules", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="runs per timing (median)")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default); on a busy machine OpenMP "
                             "spin-waiting makes 2 threads far slower than 1")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    if not args.skip_model:
        bench_model(args.repeat)
    bench_lora(args.lora_modules, args.repeat)


if __name__ == "__main__":
    main()
