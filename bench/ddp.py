"""DDP on the CPU: 2 processes x 1 thread against 1 process x 2 threads, the same global batch.

Both arms are ``spectune tune`` runs of LoRA (r = 8, all-linear) on the same data with the same
global batch: one process with ``--batch`` sequences per step and 2 torch threads, and
``torchrun --nproc_per_node 2`` with ``--batch / 2`` per process and ``OMP_NUM_THREADS=1``
(gloo). The step time is the difference of consecutive ``elapsed_s`` in ``train_log.csv``
(``logging_steps: 1``; forward, backward, the gradient all-reduce, the optimizer step and the
loss log), median over the steps after the first two (warm-up). The arms alternate
``--repeats`` times, so that both see the same machine load; the figure is the median of the
per-run medians. Judging is cut to the minimum (2 held-out questions, no spectra, no base
judging): only the training steps are timed. Also printed: the loss curves' largest relative
difference (they are the same optimization: see tests/tuning/scale/test_distributed.py).

``--tiny H`` trains a random 4-block Llama of hidden size H with the embedded model's
tokenizer instead (seconds per run where SmolLM2-135M takes minutes on a busy machine).

Run: nice -n 19 .venv/bin/python bench/ddp.py [--model default | --tiny 256] [--steps 12]
     [--batch 8] [--repeats 2] [--max-length 256]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _config(model: str, steps: int, batch: int, max_length: int, per_device: int) -> dict:
    """The run: ``batch`` sequences per step in all, ``per_device`` per process."""
    return {
        "model": model,
        "method": "lora",
        "seed": 0,
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "data": {"train": "tasks", "n_train": 4 * steps * batch, "n_eval": 2,
                 "max_length": max_length},
        "eval": {"before": False, "spectra": False, "max_new_tokens": 2, "batch_size": 2,
                 "ppl_chars": 200, "latency_tokens": 2, "latency_prompts": 1},
        "train": {"max_steps": steps, "per_device_train_batch_size": per_device,
                  "learning_rate": 1e-4, "logging_steps": 1, "save_steps": 10_000,
                  "warmup_steps": 0},
    }  # fmt: skip


def _run(cfg: dict, out: Path, processes: int) -> list[dict[str, float]]:
    import yaml

    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    spectune = str(Path(sys.executable).parent / "spectune")
    env = dict(os.environ)
    if processes == 1:
        env["OMP_NUM_THREADS"] = "2"
        cmd = [spectune, "tune", str(path), "--out", str(out), "--no-progress"]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
               str(processes), "--no-python", spectune, "tune", str(path), "--out", str(out),
               "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    with (out / "train_log.csv").open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _tiny_model(folder: Path, hidden: int) -> str:
    """A random 4-block Llama (hidden ``hidden``, MLP 4x) with the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from spectune.models.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=4 * hidden, num_hidden_layers=4,
                         num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 128), tie_word_embeddings=True,
                         max_position_embeddings=1024)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _step_median(log: list[dict[str, float]]) -> float:
    t = [r["elapsed_s"] for r in log]
    return statistics.median(b - a for a, b in zip(t[2:], t[3:], strict=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tiny", type=int, metavar="H", help="a random Llama of hidden size H")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    a = ap.parse_args()
    if a.batch % 2 or a.steps < 5:
        sys.exit("--batch must be even and --steps at least 5")
    root = Path(tempfile.mkdtemp(prefix="spectune-bench-ddp-"))
    times: dict[str, list[float]] = {"1 x 2 threads": [], "2 x 1 thread (DDP)": []}
    worst = 0.0
    try:
        model = _tiny_model(root / "model", a.tiny) if a.tiny else a.model
        one = _config(model, a.steps, a.batch, a.max_length, a.batch)
        two = _config(model, a.steps, a.batch, a.max_length, a.batch // 2)
        for i in range(a.repeats):
            t0 = time.perf_counter()
            log1 = _run(one, root / f"one-{i}", 1)
            log2 = _run(two, root / f"ddp-{i}", 2)
            times["1 x 2 threads"].append(_step_median(log1))
            times["2 x 1 thread (DDP)"].append(_step_median(log2))
            worst = max([worst] + [abs(x["loss"] - y["loss"]) / abs(y["loss"])
                                   for x, y in zip(log2, log1, strict=True)])  # fmt: skip
            print(f"repeat {i + 1}/{a.repeats}: {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0]
    name = f"random Llama, hidden {a.tiny}, 4 blocks" if a.tiny else a.model
    print(f"\nmodel {name}, LoRA r=8 all-linear, global batch {a.batch} x <= {a.max_length} "
          f"tokens, {a.steps} steps, {a.repeats} repeat(s); {os.cpu_count()} CPUs, load "
          f"average {load:.1f} at the end")  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:<20} step {med[k]:.3f} s (median; per run: "
              f"{', '.join(f'{x:.3f}' for x in v)})")  # fmt: skip
    print(f"  ratio DDP / one process: {med['2 x 1 thread (DDP)'] / med['1 x 2 threads']:.2f}")
    print(f"  loss curves: largest relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
