"""What validation and the spectra watch cost during a LoRA run on the embedded model.

Runs ``configs/lora.yaml`` for a few steps with a validation split evaluated and the adapter's
spectra analyzed every N steps, then prints, from the run's metrics.json, the time of each
validation pass and each spectra analysis (LoRA: the low-rank path, 210 pairs of
SmolLM2-135M-Instruct) against the time of one training step, and their share of the train
time.

The held-out judging after training is cut to 16 questions (it is not what is measured).

Run: .venv/bin/python bench/validation_overhead.py [--steps 20] [--every 10] [--n-validation 64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--n-validation", type=int, default=64)
    args = parser.parse_args()

    from spectune.tuning.config import load_config
    from spectune.tuning.recipe import tune

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "lora.yaml", [
        f"train.max_steps={args.steps}", f"train.eval_steps={args.every}",
        f"data.n_validation={args.n_validation}", f"eval.spectra_every_steps={args.every}",
        "data.n_eval=16", "eval.before=false", "eval.latency_prompts=0", "eval.spectra=false",
    ])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        m = tune(config, out=Path(tmp) / "run", progress=False).metrics
    v, pts = m.validation, m.spectra_curve
    val_s = [p.seconds for p in v.curve]
    spec_s = [p.seconds for p in pts]
    watch = sum(val_s) + sum(spec_s)
    step_s = (m.cost.train_seconds - watch) / m.cost.steps
    print(f"{m.cost.steps} steps of batch {m.config['train']['per_device_train_batch_size']}, "
          f"train time {m.cost.train_seconds:.1f} s, {step_s:.2f} s per training step")  # fmt: skip
    print(f"validation: {len(val_s)} passes over {v.n_examples} examples, "
          f"{sum(val_s) / len(val_s):.2f} s each = {sum(val_s) / len(val_s) / step_s:.2f} "
          "training steps")  # fmt: skip
    print(f"spectra watch: {len(spec_s)} analyses of {pts[-1].n_layers} LoRA pairs, "
          f"{sum(spec_s) / len(spec_s):.2f} s each = {sum(spec_s) / len(spec_s) / step_s:.2f} "
          "training steps")  # fmt: skip
    print(f"share of the train time: validation {100 * sum(val_s) / m.cost.train_seconds:.1f}%, "
          f"spectra {100 * sum(spec_s) / m.cost.train_seconds:.1f}% (every {args.every} steps)")  # fmt: skip
    for p in pts:
        loss = next((c.loss for c in v.curve if c.step == p.step), float("nan"))
        print(f"  step {p.step:4d}: validation loss {loss:.4f}, mean alpha {p.mean_alpha:.3f}, "
              f"alpha < 2 in {100 * p.frac_alpha_below_2:.0f}% of {p.n_fitted} fitted pairs")  # fmt: skip


if __name__ == "__main__":
    main()
