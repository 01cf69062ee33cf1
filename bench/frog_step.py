"""One training step on the embedded SmolLM2-135M: FROG (G = 1%) vs full fine-tuning vs LoRA.

Methods, all with AdamW on the same batch (4 sequences x 128 tokens, labels = inputs):

- full: every parameter trains (135M, embeddings included);
- frog: FROG at G = 1% of the all-linear weights (per-matrix selection, exact SVD);
- lora: peft LoRA on all-linear with the rank r whose trainable count is closest to FROG's.

Memory: each method runs in its own subprocess (so that peak RSS is its own): build, one
warm-up step (creates the optimizer state) and one more step; it reports trainable
parameters, optimizer-state bytes (all tensors in optimizer.state) and peak RSS. The FROG
process also times its one-off planning and saves the adapter.

Time: one more process holds all three models (FROG loaded from that adapter, no second
planning) and runs their steps round-robin, so that every method sees the same machine load;
the figure is the median over --steps steps (forward + backward + optimizer step +
zero_grad) after one warm-up step each.

Then the ratios and two checks: FROG's optimizer state <= 1.1 x G x full's, and FROG's step
time <= full's. Exit code 1 if a check fails.

Run: .venv/bin/python bench/frog_step.py [--steps 7] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

BUDGET = 0.01
BATCH, SEQ = 4, 128
TEXT = (
    "The Seine flows through Paris, the capital of France, before reaching the English "
    "Channel at Le Havre. Its basin covers much of northern France, and its tributaries "
    "include the Marne, the Oise and the Yonne. "
)


def _batch(tokenizer, seed: int):
    import torch

    ids = tokenizer(TEXT * 40, return_tensors="pt")["input_ids"][0]
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - SEQ, (BATCH,), generator=gen)
    input_ids = torch.stack([ids[s : s + SEQ] for s in starts.tolist()])  # (B, T)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def _lora_rank(model, target: int) -> tuple[int, int]:
    """The LoRA rank on all-linear (lm_head excluded) whose parameter count is nearest."""
    from torch import nn

    head = model.get_output_embeddings()
    per_rank = sum(
        m.in_features + m.out_features
        for m in model.modules()
        if isinstance(m, nn.Linear) and m is not head
    )
    r = max(1, round(target / per_rank))
    return r, r * per_rank


def build(method: str, seed: int, frog_dir: str, frog_trainable: int | None):
    """(model, optimizer, batch, info) for one method, model in train mode."""
    import torch

    from spectune.models.loading import load_default_model

    torch.manual_seed(seed)
    model, tokenizer = load_default_model()
    batch = _batch(tokenizer, seed)
    info: dict = {"method": method}
    if method == "frog":
        from spectune.tuning.methods.frog import FrogConfig, apply_frog, load_frog, plan_frog

        if frog_trainable is None:  # memory run: plan from scratch
            start = time.perf_counter()
            plan = plan_frog(model, FrogConfig(budget=BUDGET, seed=seed))
            info["plan_seconds"] = time.perf_counter() - start
            model = apply_frog(model, plan)
        else:  # timing run: the adapter the memory run saved
            model = load_frog(model, frog_dir, is_trainable=True)
    elif method == "lora":
        from peft import LoraConfig, get_peft_model

        r, _ = _lora_rank(model, frog_trainable)
        info["lora_r"] = r
        config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear")
        model = get_peft_model(model, config)
    elif method != "full":
        raise ValueError(method)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    info["trainable"] = sum(p.numel() for p in params)
    return model, opt, batch, info


def step(model, opt, batch) -> float:
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def memory_worker(method: str, seed: int, frog_dir: str, frog_trainable: int | None) -> dict:
    import torch

    model, opt, batch, info = build(
        method, seed, frog_dir, None if method == "frog" else frog_trainable
    )
    step(model, opt, batch)  # warm-up: creates the optimizer state
    step(model, opt, batch)
    if method == "frog":
        from spectune.tuning.methods.frog import save_frog

        save_frog(model, frog_dir)
    info.update(
        optimizer_state_bytes=sum(
            t.numel() * t.element_size()
            for state in opt.state.values()
            for t in state.values()
            if torch.is_tensor(t)
        ),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    return info


def timing_worker(steps: int, seed: int, frog_dir: str, frog_trainable: int) -> dict:
    import torch

    runs = {m: build(m, seed, frog_dir, frog_trainable) for m in ("full", "frog", "lora")}
    for model, opt, batch, _ in runs.values():
        step(model, opt, batch)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in runs}
    methods = list(runs)
    for i in range(steps):
        for m in methods[i % 3 :] + methods[: i % 3]:  # rotate who goes first
            model, opt, batch, _ = runs[m]
            times[m].append(step(model, opt, batch))
    return {
        "threads": torch.get_num_threads(),
        "step_seconds": {m: statistics.median(t) for m, t in times.items()},
        "step_times": times,
    }


def _run(*args: str) -> dict:
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per method (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--worker", choices=("full", "frog", "lora", "time"), help=argparse.SUPPRESS
    )
    parser.add_argument("--frog-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--frog-trainable", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "time":
        out = timing_worker(args.steps, args.seed, args.frog_dir, args.frog_trainable)
        print(json.dumps(out))
        return 0
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.seed, args.frog_dir, args.frog_trainable)))
        return 0

    import tempfile

    print(
        f"one training step, SmolLM2-135M-Instruct, batch {BATCH}x{SEQ} tokens, AdamW, "
        f"seed {args.seed}; memory: one process per method; time: median of {args.steps} "
        "round-robin steps in one process"
    )
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--seed", str(args.seed), "--frog-dir", tmp]
        frog = _run("--worker", "frog", *common)
        k = str(frog["trainable"])
        full = _run("--worker", "full", *common)
        lora = _run("--worker", "lora", *common, "--frog-trainable", k)
        timing = _run(
            "--worker", "time", *common, "--frog-trainable", k, "--steps", str(args.steps)
        )
    for name, r in (("full", full), ("frog", frog), ("lora", lora)):
        r["step_seconds"] = timing["step_seconds"][name]
    rows = [("full", full), ("frog G=1%", frog), (f"lora r={lora['lora_r']}", lora)]
    mib = 1024**2
    print(f"torch threads: {timing['threads']}")
    print(
        f"\n{'method':<12}{'step (s)':>10}{'trainable':>14}{'optim state (MiB)':>19}"
        f"{'peak RSS (MiB)':>16}"
    )
    for name, r in rows:
        print(
            f"{name:<12}{r['step_seconds']:>10.3f}{r['trainable']:>14,}"
            f"{r['optimizer_state_bytes'] / mib:>19.2f}{r['peak_rss_bytes'] / mib:>16.0f}"
        )
    for m, t in timing["step_times"].items():
        print(f"  {m} step times (s): {', '.join(f'{v:.2f}' for v in t)}; min {min(t):.2f}")
    print(f"\nFROG planning (one-off, 210 exact SVDs): {frog['plan_seconds']:.1f} s")
    print("\nratios to full fine-tuning:")
    for name, r in rows[1:]:
        print(
            f"  {name:<12} step time {r['step_seconds'] / full['step_seconds']:.3f}, "
            f"trainable {r['trainable'] / full['trainable']:.5f}, "
            f"optimizer state {r['optimizer_state_bytes'] / full['optimizer_state_bytes']:.5f}, "
            f"peak RSS {r['peak_rss_bytes'] / full['peak_rss_bytes']:.3f}"
        )
    print(
        f"  frog / lora: step time {frog['step_seconds'] / lora['step_seconds']:.3f}, "
        f"trainable {frog['trainable'] / lora['trainable']:.3f}, peak RSS "
        f"{frog['peak_rss_bytes'] / lora['peak_rss_bytes']:.3f}"
    )
    state_ratio = frog["optimizer_state_bytes"] / full["optimizer_state_bytes"]
    checks = [
        (
            f"FROG optimizer state / full = {state_ratio:.5f} <= 1.1 x G = {1.1 * BUDGET:.5f}",
            state_ratio <= 1.1 * BUDGET,
        ),
        (
            f"FROG step {frog['step_seconds']:.3f} s <= full step {full['step_seconds']:.3f} s",
            frog["step_seconds"] <= full["step_seconds"],
        ),
    ]
    print()
    for text, ok in checks:
        print(f"[{'PASS' if ok else 'FAIL'}] {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
