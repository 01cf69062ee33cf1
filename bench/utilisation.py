"""How much of this machine's GEMM rate spectune's training achieves, on the embedded
SmolLM2-135M-Instruct.

1. The machine: ``torch.mm`` on each of the model's linear shapes (q/o 576x576, k/v 576x192,
   gate/up 576x1536, down 1536x576, the head 576x49152) at the rows of a training batch, float32
   and bf16 where the CPU has it natively (:func:`spectune.models.flops.gemm_rates`), and their
   mix weighted by the model's work (:func:`~spectune.models.flops.combined_rate`).
2. The runs: a short LoRA and a short full fine-tuning run of the demo's settings (batch 8,
   max length 96), each with padded and padding-free batches; each run's metrics hold the
   training FLOPs counted from the products that ran (:mod:`spectune.models.flops`), the
   padded-position share, the achieved FLOP/s and its ratio to the machine's rate.

Run: .venv/bin/python bench/utilisation.py [--steps 15] [--methods lora,full]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def machine(rows: int) -> None:
    import torch

    from spectune.models import hardware
    from spectune.models.flops import combined_rate, gemm_rates

    d, kv, mlp, vocab = 576, 192, 1536, 49152
    layers = 30
    shapes = {(d, d): 2 * layers, (d, kv): 2 * layers, (d, mlp): 2 * layers,
              (mlp, d): layers, (d, vocab): 1}  # fmt: skip
    dtypes = [torch.float32] + ([torch.bfloat16] if hardware.native_bf16() else [])
    for dtype in dtypes:
        rates = gemm_rates(shapes, rows, dtype)
        parts = ", ".join(f"{a}x{b} {r / 1e9:.0f}" for (a, b), r in rates.items())
        print(f"GEMM {dtype} at {rows} rows (GFLOP/s): {parts}; the model's mix "
              f"{combined_rate(rates, shapes) / 1e9:.0f}")  # fmt: skip


def run(method: str, batching: str, steps: int) -> None:
    from spectune.tuning.config import load_config
    from spectune.tuning.recipe import tune

    root = Path(__file__).resolve().parents[1]
    rate = "1e-3" if method != "full" else "3e-4"
    config = load_config(
        root / "configs" / "demo.yaml",
        [f"method={method}", f"data.batching={batching}", f"train.max_steps={steps}",
         f"train.learning_rate={rate}", "data.n_eval=8", "eval.latency_prompts=0",
         "eval.spectra=false", "eval.intruders=false", "eval.compare_base=false"],
        foreign_sections="drop",  # full fine-tuning: the demo's lora section does not apply
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        c = tune(config, out=Path(tmp) / "run", progress=False).metrics.cost
    print(f"{method:5s} {batching:13s}: {c.train_seconds_this_session:6.1f} s, "
          f"{c.tokens} tokens in {c.positions} positions ({100 * c.padded_fraction:.0f}% "
          f"padding), {c.train_flops / 1e12:.2f} TFLOP, {c.flops_per_second / 1e9:.1f} GFLOP/s "
          f"= {100 * c.utilisation:.0f}% of {c.gemm_flops_per_second / 1e9:.0f}", flush=True)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--rows", type=int, default=8 * 40, help="rows of the timed products")
    args = ap.parse_args()
    machine(args.rows)
    for method in args.methods.split(","):
        for batching in ("padded", "padding_free"):
            run(method, batching, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
