"""Training step time of LoRA on the embedded model (SmolLM2-135M-Instruct) with the base in
float32 against bfloat16 (``model_dtype``), on this CPU, and why.

Builds the LoRA model the way ``spectune tune`` does (adapters float32 on all linear layers,
r=8) once per dtype, then times ``--steps`` optimizer steps (forward, backward, AdamW on the
adapters) on one fixed random batch, in ``--rounds`` rounds that alternate the dtypes (a shared
machine's load falls on both alike); the first step of each round is a warm-up and not timed.
Prints the median step time per dtype and their ratio, a bare GEMM of a layer's shape in both
dtypes, the CPU's bf16 features (``/proc/cpuinfo``: avx512_bf16, amx_bf16) that decide
whether bf16 has native instructions here, and the kernel oneDNN runs a bf16 matmul with
(``ONEDNN_VERBOSE``).

Run: nice -n 19 .venv/bin/python bench/dtype_step.py [--steps 3] [--rounds 3] [--batch 4]
     [--seq 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


#: one bf16 matrix product with oneDNN's verbose log on: which kernel (and ISA) it ran
_KERNEL = """
import torch
a = torch.randn(64, 64).to(torch.bfloat16)
a @ a
"""


def onednn_kernel() -> str:
    """The implementation oneDNN picked for a bf16 matmul, e.g. ``brg_matmul:avx512_core_bf16``
    (``brg_matmul:avx512_core_amx`` on AMX), or "" where torch does not go through oneDNN."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", _KERNEL], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    for line in out.splitlines():
        fields = line.split(",")
        if fields[:3] == ["onednn_verbose", "v1", "primitive"] and "exec" in fields:
            return fields[fields.index("exec") + 3]  # exec, cpu, matmul, IMPLEMENTATION
    return ""


def build(dtype: str, tmp: Path):
    from spectune.models.loading import default_model_dir
    from spectune.tuning import recipe
    from spectune.tuning.config import TuneConfig
    from spectune.tuning.methods import get_method
    from spectune.tuning.methods.base import BuildContext

    config = TuneConfig.from_dict({"model": "default", "method": "lora", "model_dtype": dtype,
                                   "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}})  # fmt: skip
    ctx = BuildContext(config, default_model_dir(), tmp, progress=False)
    return recipe.build_model(get_method("lora"), ctx).model


def step_times(model, opt, batch, steps: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each timed step (CPU: all threads of this process)."""
    out = []
    for i in range(steps + 1):
        start, cpu = time.perf_counter(), time.process_time()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first is a warm-up
            out.append((time.perf_counter() - start, time.process_time() - cpu))
    return out


def gemm_seconds(dtype, m: int, k: int, n: int, repeat: int = 9) -> float:
    """Median CPU seconds of one (m, k) @ (k, n) product (CPU time: a shared machine's load
    changes it less than wall time)."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeat):
        start = time.process_time()
        a @ b
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and dtype")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); 1 makes CPU seconds a measure of "
                    "the work on a loaded machine (no OpenMP thread spins waiting for another)")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (args.batch, args.seq), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    dtypes = ("float32", "bfloat16")
    times: dict[str, list[tuple[float, float]]] = {d: [] for d in dtypes}
    with tempfile.TemporaryDirectory() as tmp:
        models = {d: build(d, Path(tmp)) for d in dtypes}
        opts = {d: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                for d, m in models.items()}  # fmt: skip
        for m in models.values():
            m.train()
        for r in range(args.rounds):
            for d in dtypes if r % 2 == 0 else dtypes[::-1]:
                times[d] += step_times(models[d], opts[d], batch, args.steps)
    wall = {d: [w for w, _ in t] for d, t in times.items()}
    cpu = {d: [c for _, c in t] for d, t in times.items()}
    med = {d: statistics.median(w) for d, w in wall.items()}
    med_cpu = {d: statistics.median(c) for d, c in cpu.items()}
    print(f"LoRA r=8 on SmolLM2-135M, batch {args.batch} x {args.seq} tokens, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps:")  # fmt: skip
    for d in dtypes:
        print(f"  base in {d:>8}: median {med[d]:.2f} s/step (min {min(wall[d]):.2f}, max "
              f"{max(wall[d]):.2f}); CPU {med_cpu[d]:.2f} s/step")  # fmt: skip
    print(
        f"  bfloat16 / float32 step time: {med['bfloat16'] / med['float32']:.2f} "
        f"(CPU time: {med_cpu['bfloat16'] / med_cpu['float32']:.2f})"
    )

    m, k, n = args.batch * args.seq, 576, 1536  # an MLP projection of this batch
    g32, g16 = gemm_seconds(torch.float32, m, k, n), gemm_seconds(torch.bfloat16, m, k, n)
    flops = 2 * m * k * n
    print(f"bare GEMM {m}x{k} @ {k}x{n}: float32 {flops / g32 / 1e9:.1f} GFLOP per CPU s, "
          f"bfloat16 {flops / g16 / 1e9:.1f} (bfloat16 / float32 CPU time {g16 / g32:.2f})")  # fmt: skip

    flags = cpu_flags()
    have = {f: f in flags for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}
    print("CPU bf16 features: " + ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in have.items()))
    kernel = onednn_kernel()
    print(f"oneDNN kernel of a bf16 matmul: {kernel or 'none (torch does not use oneDNN here)'}")
    print("(AMX: bf16 tile products; AVX512-BF16 without AMX: vdpbf16ps, a bf16 pair dot product "
          "into float32, in ordinary vector registers; neither: bf16 emulated in float32)")  # fmt: skip


if __name__ == "__main__":
    main()
