"""Peak memory of analyze() on a generated ~1.2B-parameter safetensors folder (Llama shapes, bf16).

Writes a sharded folder (Llama-3.2-1B shapes: hidden 2048, MLP 8192, 16 layers, 8 KV heads,
vocabulary 128256; random bf16 weights, seeded) unless it exists, then analyzes it in a child
process and prints that process's peak RSS against the budget of the issue:
1.5 GB + 4 x (largest analyzed matrix in float64).

Run: .venv/bin/python bench/memory.py [--dir /tmp/spectune-1b] [--precision float64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, MLP, LAYERS, KV, VOCAB = 2048, 8192, 16, 512, 128256


def shapes() -> dict[str, tuple[int, ...]]:
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


def generate(folder: Path, shard_bytes: int = 1 << 29) -> None:
    import torch
    from safetensors.torch import save_file

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
        t = torch.randn(shape, generator=gen).mul_(0.02).to(torch.bfloat16)
        shard[name] = t
        size += t.numel() * 2
        if size >= shard_bytes:
            flush()
        print(f"\rgenerating {i + 1}/{total}", end="", file=sys.stderr)
    flush()
    print(file=sys.stderr)
    params = sum(int(__import__("math").prod(s)) for s in shapes().values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": params * 2}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN}))


CHILD = """
import sys, time, resource, json
from spectune.spectral import analyze
t = time.perf_counter()
d = analyze(sys.argv[1], precision=sys.argv[2], max_N=int(sys.argv[3]), progress=False)
ok = d[d.status == "success"]
big = ok.assign(size=ok.N * ok.M).sort_values("size").iloc[-1]
print(json.dumps({"seconds": time.perf_counter() - t, "rows": len(d), "analyzed": len(ok),
                  "largest": [int(big.N), int(big.M)],
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/spectune-1b")
    ap.add_argument("--precision", default="float64", choices=["float64", "float32"])
    ap.add_argument(
        "--max-n",
        type=int,
        default=200000,
        help="analyze the 128256 x 2048 embedding too (WW's default 50000 skips it)",
    )
    args = ap.parse_args()
    folder = Path(args.dir)
    if not (folder / "model.safetensors.index.json").exists():
        t = time.perf_counter()
        generate(folder)
        print(f"generated {folder} in {time.perf_counter() - t:.0f} s")
    params = sum(int(__import__("math").prod(s)) for s in shapes().values())
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), args.precision, str(args.max_n)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    peak_gb = res["peak_rss_kb"] / 2**20
    N, M = res["largest"]
    budget = 1.5 + 4 * N * M * 8 / 2**30
    print(
        f"{params / 1e9:.2f}B parameters (bf16), {res['analyzed']}/{res['rows']} matrices at "
        f"{args.precision} in {res['seconds']:.0f} s; largest analyzed {N}x{M}"
    )
    print(
        f"peak RSS {peak_gb:.2f} GiB; budget 1.5 + 4 x {N * M * 8 / 2**30:.2f} = {budget:.2f} GiB "
        f"-> {'OK' if peak_gb <= budget else 'OVER'} ({peak_gb / budget:.2f} of budget)"
    )


if __name__ == "__main__":
    main()
