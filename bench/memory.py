"""Time and peak memory of analyze() on a generated ~1.2B-parameter sharded safetensors folder,
and a projection to Llama-2-7B and Llama-2-70B from the measured cost of one matrix per shape.

Writes a sharded folder (Llama-3.2-1B shapes: hidden 2048, MLP 8192, 16 layers, 8 KV heads,
vocabulary 128256; random weights, seeded) in ``--source-dtype`` (bfloat16: 2.5 GB, float32:
4.9 GB) unless it exists, then analyzes it in a child process and prints that process's time
and peak RSS against the budget of the issue: 1.5 GB + 4 x (largest analyzed matrix in
float64).

``--project`` then times one random matrix of every distinct shape of the 1.24B folder, of
Llama-2-7B and of Llama-2-70B, each alone in a fresh child process on one thread (as each of
analyze()'s workers runs), and projects:

- time = sum over the model's matrices of its shape's single-thread CPU seconds / workers
  (the time on that many otherwise idle cores: the workers share the matrices; reading is
  sequential and small beside the arithmetic). CPU seconds, not wall seconds: a shared machine's
  load changes them far less (it still slows memory and caches: measure on an idle machine);
- peak RSS = the child's RSS before any matrix + the workers + 1 largest source matrices (at
  most workers + 1 matrices are in flight) + workers x the largest working memory of one
  matrix's analysis (its Gram matrix, blocks and eigensolver work) beyond the matrix itself.

The same projection of the 1.24B folder's own shapes is printed beside its measured figures,
as a check of the method.

Run: nice -n 19 .venv/bin/python bench/memory.py [--source-dtype float32] [--precision float64]
     [--dir /tmp/spectune-1b] [--project [--fit 28672x8192,32000x8192]] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, MLP, LAYERS, KV, VOCAB = 2048, 8192, 16, 512, 128256
GIB = 2**30

#: (hidden, MLP width, layers, KV width, vocabulary, tied head) of the projected models
#: (their config.json files are in tests/fixtures/model_configs)
PROJECTED = {
    "Llama-2-7B": (4096, 11008, 32, 4096, 32000, False),
    "Llama-2-70B": (8192, 28672, 80, 1024, 32000, False),
}


def shapes() -> dict[str, tuple[int, ...]]:
    """The generated folder's tensors: Llama-3.2-1B shapes (tied head: no lm_head)."""
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV, HIDDEN),
            p + "self_attn.v_proj.weight": (KV, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (MLP, HIDDEN),
            p + "mlp.up_proj.weight": (MLP, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, MLP),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    out["model.norm.weight"] = (HIDDEN,)
    return out


def matrix_counts(hidden: int, mlp: int, layers: int, kv: int, vocab: int,
                  tied: bool) -> dict[tuple[int, int], int]:  # fmt: skip
    """(N, M) with N >= M -> how many matrices of a Llama-shaped model have that shape (the
    spectrum of W and of W^T is the same: the Gram matrix is taken on the smaller side)."""
    counts: dict[tuple[int, int], int] = {}

    def add(a: int, b: int, n: int) -> None:
        key = (max(a, b), min(a, b))
        counts[key] = counts.get(key, 0) + n

    add(hidden, hidden, 2 * layers)  # q, o
    add(kv, hidden, 2 * layers)  # k, v
    add(mlp, hidden, 3 * layers)  # gate, up, down
    add(vocab, hidden, 1 if tied else 2)  # embedding (and an untied head)
    return counts


def generate(folder: Path, dtype_name: str, shard_bytes: int = 1 << 29) -> None:
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    size_of = torch.empty(0, dtype=dtype).element_size()
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, size, n = {}, {}, 0, 0
    total = len(shapes())

    def flush():
        nonlocal shard, size, n
        if not shard:
            return
        n += 1
        name = f"model-{n:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for i, (name, shape) in enumerate(shapes().items()):
        t = torch.randn(shape, generator=gen).mul_(0.02).to(dtype)
        shard[name] = t
        size += t.numel() * size_of
        if size >= shard_bytes:
            flush()
        print(f"\rgenerating {i + 1}/{total}", end="", file=sys.stderr)
    flush()
    print(file=sys.stderr)
    params = sum(math.prod(s) for s in shapes().values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": params * size_of}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN}))


#: the children's peak is VmHWM, their own high-water mark: ru_maxrss survives exec on Linux and
#: would carry this (generating) process's peak into theirs
HWM = """
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""

CHILD = (
    HWM
    + """
import sys, time, json, resource
from spectune.watch import analyze
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t, c = time.perf_counter(), cpu()
d = analyze(sys.argv[1], precision=sys.argv[2], max_N=int(sys.argv[3]), progress=False,
            workers=int(sys.argv[4]))
ok = d[d.status == "success"]
big = ok.assign(size=ok.N * ok.M).sort_values("size").iloc[-1]
print(json.dumps({"seconds": time.perf_counter() - t, "cpu_seconds": cpu() - c,
                  "rows": len(d), "analyzed": len(ok),
                  "largest": [int(big.N), int(big.M)],
                  "peak_rss": hwm()}))
"""
)

#: one N x M matrix (made block by block: no float32 copy of it ever exists) analyzed alone on
#: one thread; RSS before the matrix, with it, and the peak of its analysis
CHILD_SHAPE = (
    HWM
    + """
import sys, time, json, os
import torch
from threadpoolctl import threadpool_limits
from spectune.watch import analyze
N, M, dtype, precision = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
analyze({"warm.weight": torch.randn(64, 32)}, progress=False, workers=1)  # imports, first call
before = rss()
gen = torch.Generator().manual_seed(0)
w = torch.empty(N, M, dtype=dtype)
for i in range(0, N, 1024):
    w[i:i + 1024] = torch.randn(min(1024, N - i), M, generator=gen).mul_(0.02).to(dtype)
with_matrix = rss()
with threadpool_limits(limits=1, user_api="blas"):
    t, c = time.perf_counter(), time.process_time()
    d = analyze({"m.weight": w}, precision=precision, max_N=10**6, max_evals=10**6,
                progress=False, workers=1)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - c
assert d.status.iloc[0] == "success", d.iloc[0].to_dict()
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "before": before,
                  "with_matrix": with_matrix, "peak": hwm()}))
"""
)


def measure_shape(N: int, M: int, dtype: str, precision: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD_SHAPE, str(N), str(M), dtype, precision],
                         capture_output=True, text=True, check=True)  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["work"] = max(res["peak"] - res["with_matrix"], 0)  # analysis beyond the matrix
    return res


def fit_cost(cost: dict[tuple[int, int], dict], missing: list[tuple[int, int]]) -> None:
    """Fill in shapes that were not measured (``--fit``) from the measured ones, and
    print how well that model fits them: CPU seconds = a N M^2 + b M^3 (the Gram matrix's
    syrk and the eigensolver's flops), working memory = c M^2 + d (the Gram matrix)."""
    import numpy as np

    shapes = sorted(cost, key=lambda s: s[0] * s[1])
    nm2 = np.array([[n * m * m, m**3] for n, m in shapes], dtype=float)
    cpu = np.array([cost[s]["cpu_seconds"] for s in shapes])
    (a, b), *_ = np.linalg.lstsq(nm2 / cpu[:, None], np.ones(len(shapes)), rcond=None)  # relative
    (c, d), *_ = np.linalg.lstsq(np.array([[m * m, 1.0] for _, m in shapes]),
                                 np.array([cost[s]["work"] for s in shapes], dtype=float),
                                 rcond=None)  # fmt: skip
    model = {s: a * s[0] * s[1] ** 2 + b * s[1] ** 3 for s in shapes}
    worst = max(abs(model[s] / cost[s]["cpu_seconds"] - 1) for s in shapes if s[1] >= 1024)
    print(f"  model CPU s = {a:.3g} N M^2 + {b:.3g} M^3: within {100 * worst:.0f}% of the "
          "measured shapes with M >= 1024")  # fmt: skip
    base = min(cost[s]["before"] for s in shapes)
    for n, m in missing:
        seconds = a * n * m * m + b * m**3
        cost[(n, m)] = {"cpu_seconds": seconds, "seconds": float("nan"), "before": base,
                        "work": c * m * m + d}  # fmt: skip
        print(f"  {n:>6} x {m:<5} {seconds:8.2f} CPU s (from the model, not measured), "
              f"working memory {(c * m * m + d) / GIB:.2f} GiB", flush=True)  # fmt: skip


def project(name: str, counts: dict[tuple[int, int], int], cost: dict, bytes_per: int,
            workers: int) -> tuple[float, float]:  # fmt: skip
    """(seconds, peak RSS bytes) of analyzing a model with these matrix counts, on ``workers``
    otherwise idle cores (from each shape's CPU seconds: what a shared machine's load does
    not change)."""
    seconds = sum(n * cost[s]["cpu_seconds"] for s, n in counts.items()) / workers
    by_size = sorted(counts, key=lambda s: s[0] * s[1], reverse=True)
    largest = by_size[0]
    in_flight = [s for s in by_size for _ in range(counts[s])][: workers + 1]
    work = max(cost[s]["work"] for s in counts)
    base = min(cost[s]["before"] for s in counts)
    peak = base + sum(a * b * bytes_per for a, b in in_flight) + workers * work
    n = sum(counts.values())
    params = sum(a * b * k for (a, b), k in counts.items())
    print(f"  {name}: {n} matrices, {params / 1e9:.2f}B matrix parameters -> about "
          f"{seconds / 60:.1f} min ({seconds / 3600:.2f} h), peak RSS about {peak / GIB:.2f} GiB "
          f"(largest {largest[0]}x{largest[1]}: {largest[0] * largest[1] * bytes_per / GIB:.2f} "
          f"GiB as stored)")  # fmt: skip
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None,
                    help="folder (default /tmp/spectune-1b, or /tmp/spectune-1b-f32 for float32)")  # fmt: skip
    ap.add_argument("--source-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--precision", default="float64", choices=["float64", "float32"])
    ap.add_argument("--workers", type=int, default=2, help="analyze()'s workers (2: this CPU)")
    ap.add_argument("--project", action="store_true",
                    help="also time one matrix per shape and project Llama-2-7B and -70B")  # fmt: skip
    ap.add_argument("--costs", default=None,
                    help="JSON file of measured per-shape costs (kept across runs)")  # fmt: skip
    ap.add_argument("--fit", default="",
                    help="shapes NxM (comma-separated) taken from a fit of the measured ones "
                    "instead of measured, e.g. 28672x8192,32000x8192 (Llama-2-70B's largest)")  # fmt: skip
    ap.add_argument("--skip-folder", action="store_true",
                    help="with --project: do not analyze the generated folder")  # fmt: skip
    ap.add_argument(
        "--max-n",
        type=int,
        default=200000,
        help="analyze the 128256 x 2048 embedding too (WW's default 50000 skips it)",
    )
    args = ap.parse_args()
    suffix = "" if args.source_dtype == "bfloat16" else "-f32"
    folder = Path(args.dir or f"/tmp/spectune-1b{suffix}")
    bytes_per = 2 if args.source_dtype == "bfloat16" else 4
    params = sum(math.prod(s) for s in shapes().values())
    measured = None
    saved = Path(f"/tmp/spectune-folder-{args.source_dtype}-{args.precision}-"
                 f"{args.workers}.json")  # fmt: skip
    if not args.skip_folder:
        if not (folder / "model.safetensors.index.json").exists():
            t = time.perf_counter()
            generate(folder, args.source_dtype)
            print(f"generated {folder} in {time.perf_counter() - t:.0f} s")
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder), args.precision,
                              str(args.max_n), str(args.workers)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        res = json.loads(out.stdout.strip().splitlines()[-1])
        peak_gb = res["peak_rss"] / GIB
        N, M = res["largest"]
        budget = 1.5 + 4 * N * M * 8 / 2**30
        folder_gb = params * bytes_per / GIB
        print(
            f"{params / 1e9:.2f}B parameters ({args.source_dtype}, {folder_gb:.2f} GiB on disk), "
            f"{res['analyzed']}/{res['rows']} matrices at {args.precision} with "
            f"{args.workers} workers in {res['seconds']:.0f} s ({res['cpu_seconds']:.0f} CPU s); "
            f"largest analyzed {N}x{M}"
        )
        print(
            f"peak RSS {peak_gb:.2f} GiB ({peak_gb / folder_gb:.2f} of the folder); budget "
            f"1.5 + 4 x {N * M * 8 / 2**30:.2f} = {budget:.2f} GiB -> "
            f"{'OK' if peak_gb <= budget else 'OVER'} ({peak_gb / budget:.2f} of budget)"
        )
        measured = (res["cpu_seconds"] / args.workers, res["peak_rss"])
        saved.write_text(json.dumps({"cpu_per_worker": measured[0], "peak_rss": measured[1]}))
    elif saved.exists():  # the folder's figures from an earlier run, for the check below
        last = json.loads(saved.read_text())
        measured = (last["cpu_per_worker"], last["peak_rss"])
    if not args.project:
        return
    models = {"1.24B folder": matrix_counts(HIDDEN, MLP, LAYERS, KV, VOCAB, True)}
    models |= {name: matrix_counts(*dims) for name, dims in PROJECTED.items()}
    cache = Path(args.costs or f"/tmp/spectune-shape-costs-{args.source_dtype}-"
                 f"{args.precision}.json")  # fmt: skip
    done = json.loads(cache.read_text()) if cache.exists() else {}
    cost: dict[tuple[int, int], dict] = {}
    print(f"one matrix per shape, {args.source_dtype} source, {args.precision}, one thread "
          f"(measured once, kept in {cache}):")  # fmt: skip
    shapes_all = sorted({s for c in models.values() for s in c}, key=lambda s: s[0] * s[1])
    for shape in shapes_all:
        key = f"{shape[0]}x{shape[1]}"
        if key in args.fit.split(","):
            continue  # from the model below
        if key not in done:
            done[key] = measure_shape(*shape, args.source_dtype, args.precision)
            cache.write_text(json.dumps(done, indent=1))
        cost[shape] = c = done[key]
        print(f"  {shape[0]:>6} x {shape[1]:<5} {c['cpu_seconds']:8.2f} CPU s "
              f"({c['seconds']:.0f} s wall), working memory {c['work'] / GIB:.2f} GiB beyond "
              "the matrix", flush=True)  # fmt: skip
    fit_cost(cost, [s for s in shapes_all if s not in cost])
    print(f"projection ({args.workers} workers):")
    for name, counts in models.items():
        seconds, peak = project(name, counts, cost, bytes_per, args.workers)
        if name == "1.24B folder" and measured is not None:
            print(f"    (measured, folder run: {measured[0]:.0f} s = CPU seconds / workers, "
                  f"{measured[1] / GIB:.2f} GiB: projection / measured = "
                  f"{seconds / measured[0]:.2f} in time, {peak / measured[1]:.2f} in peak RSS)")  # fmt: skip


if __name__ == "__main__":
    main()
