"""``spectune memory``'s estimate against the measured peak RSS of training on the embedded model.

Trains SmolLM2-135M-Instruct for ``--steps`` steps, each configuration in a fresh process,
and prints the training phase's peak RSS (``metrics.json``'s ``cost.peak_rss_bytes``: the
kernel's high-water mark, reset when training starts) beside :func:`estimate_memory`'s estimate
for the same settings, and the error. Configurations (float32, AdamW, sequences filled to
``max_length``):

- LoRA r=16 on every linear layer, dropout 0.05, batch 8 x 128;
- the same with gradient checkpointing;
- full fine-tuning, batch 4 x 64;
- and the tests' tiny model (a random 2-block Llama, hidden 64, SmolLM2's tokenizer), LoRA r=4
  without dropout, batch 8 x 128 (on which the process overhead is calibrated) and 4 x 64.

The runs fix glibc's mmap threshold at its initial 128 KiB (``MALLOC_MMAP_THRESHOLD_=131072``
in their environment), which keeps the peak RSS at the live memory the plan estimates.
``--default-malloc`` also runs each with glibc's default, growing threshold (what a plain
``spectune tune`` gets) and prints both peaks, training times and the training phase's user
and system CPU seconds: the fixed threshold's page faults cost time. Timings on a shared
machine are only comparable within one run: ``--rounds N`` repeats both runs in alternating
order and compares medians.
The slow tests in ``tests/tuning/scale/test_memory.py`` hold the tiny model (4 x 64) and the LoRA
run to tolerances.

Run: nice -n 19 .venv/bin/python bench/plan_rss.py [--steps 3] [--default-malloc [--rounds 3]]
     [--threads 1]
     [--only lora,lora-ckpt,full,tiny-8x128,tiny-4x64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GIB = 2**30

#: one training phase in a fresh process; argv: config JSON, run folder, torch threads (0: torch's
#: default). glibc's mmap threshold comes from the environment (MALLOC_MMAP_THRESHOLD_).
CHILD = """
import json, resource, sys
import spectune._memory as mem
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig
from spectune.tuning.scale.memory import estimate_memory

if int(sys.argv[3]):
    import torch
    torch.set_num_threads(int(sys.argv[3]))
phase = {}
Peak = mem.PeakRSS

class Timed(Peak):  # the training phase's CPU seconds beside its peak
    def __enter__(self):
        phase["start"] = resource.getrusage(resource.RUSAGE_SELF)
        return super().__enter__()

    def __exit__(self, *exc):
        end = resource.getrusage(resource.RUSAGE_SELF)
        phase["user"] = end.ru_utime - phase["start"].ru_utime
        phase["sys"] = end.ru_stime - phase["start"].ru_stime
        return super().__exit__(*exc)

mem.PeakRSS = Timed
config = TuneConfig.from_dict(json.loads(sys.argv[1]))
m = recipe.tune(config, out=sys.argv[2], progress=False).metrics
plan = estimate_memory(config.model, config, batch=config.train["per_device_train_batch_size"],
                   seq=config.data.max_length, checkpointing=config.checkpointing())
print(json.dumps({"measured": m.cost.peak_rss_bytes, "exact": m.cost.peak_rss_exact,
                  "estimate": plan.peak, "user": phase["user"], "sys": phase["sys"],
                  "seconds": m.cost.train_seconds}))
"""

#: glibc's initial mmap threshold (128 KiB); set, it stays fixed
FIXED = {"MALLOC_MMAP_THRESHOLD_": "131072"}

NAMES = ("lora", "lora-ckpt", "full", "tiny-8x128", "tiny-4x64")
QUICK_EVAL = {"before": False, "spectra": False, "latency_prompts": 0, "max_new_tokens": 2,
              "ppl_chars": 200, "ppl_window": 32, "ppl_stride": 16}  # fmt: skip


def tiny_model(folder: Path) -> Path:
    """The tests' tiny Llama (``tests/conftest.py``) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from spectune.models.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, initializer_range=0.2,
                         tie_word_embeddings=True)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def configs(data: Path, tiny: Path, steps: int) -> dict[str, dict]:
    def run(method: str, batch: int, seq: int, model: str = "default", **train) -> dict:
        out = {"model": model, "method": method, "eval": QUICK_EVAL,
               "data": {"train": str(data), "max_length": seq, "n_eval": 2},
               "train": {"max_steps": steps, "per_device_train_batch_size": batch,
                         "logging_steps": 1, "save_steps": 1000, **train}}  # fmt: skip
        if method == "lora":
            out["lora"] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
        return out

    tiny_lora = {"lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}}
    return {
        "lora": run("lora", 8, 128),
        "lora-ckpt": run("lora", 8, 128, gradient_checkpointing=True),
        "full": run("full", 4, 64),
        "tiny-8x128": run("lora", 8, 128, str(tiny)) | tiny_lora,
        "tiny-4x64": run("lora", 4, 64, str(tiny)) | tiny_lora,
    }


def long_data(folder: Path) -> Path:
    """32 examples longer than any max_length here (every batch is full length)."""
    words = " ".join(["the cat sat on the mat"] * 60)
    path = folder / "long.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"story {i}", "response": words}) + "\n"
                            for i in range(32)))  # fmt: skip
    return path


def measure(config: dict, out: Path, malloc: str, threads: int = 0) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env |= FIXED if malloc == "fixed" else {}
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config), str(out),
                          str(threads)], capture_output=True, text=True, env=env)  # fmt: skip
    if res.returncode:
        sys.exit(f"the {malloc} run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--default-malloc", action="store_true",
                    help="also run with glibc's default mmap threshold")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --default-malloc: rounds of both runs, in alternating order "
                    "(medians of the CPU seconds)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); 1 keeps OpenMP threads from "
                    "spinning for each other, which inflates CPU seconds on a loaded machine")  # fmt: skip
    ap.add_argument("--only", default="", help="comma-separated: " + ", ".join(NAMES))
    args = ap.parse_args()
    modes = ["fixed", "default"] if args.default_malloc else ["fixed"]
    rounds = args.rounds if args.default_malloc else 1
    with tempfile.TemporaryDirectory() as tmp:
        chosen = [n for n in NAMES if not args.only or n in args.only.split(",")]
        tiny = tiny_model(Path(tmp) / "tiny") if any(n.startswith("tiny") for n in chosen) else ""
        runs = configs(long_data(Path(tmp)), Path(tiny), args.steps)
        print(f"{args.steps} steps, float32, AdamW (lora, full: SmolLM2-135M-Instruct); "
              "training-phase peak RSS against spectune memory's estimate:")  # fmt: skip
        for name in chosen:
            got: dict[str, list[dict]] = {m: [] for m in modes}
            for i in range(rounds):
                for mode in modes if i % 2 == 0 else modes[::-1]:
                    r = measure(runs[name], Path(tmp) / f"{name}-{mode}-{i}", mode, args.threads)
                    got[mode].append(r)
                    err = r["estimate"] / r["measured"] - 1
                    print(f"  {name:<10} {mode:>7} mmap threshold: measured "
                          f"{r['measured'] / GIB:.2f} GiB{'' if r['exact'] else ' (lifetime peak)'}"
                          f", estimated {r['estimate'] / GIB:.2f} GiB ({100 * err:+.1f}%); "
                          f"training {r['seconds']:.0f} s, CPU {r['user']:.0f} s user + "
                          f"{r['sys']:.0f} s system", flush=True)  # fmt: skip
            if len(modes) == 2:
                keys = ("measured", "seconds", "user", "sys")
                med = {m: {k: statistics.median(r[k] for r in rs) for k in keys}
                       for m, rs in got.items()}  # fmt: skip
                f, d = med["fixed"], med["default"]
                cpu_f, cpu_d = f["user"] + f["sys"], d["user"] + d["sys"]
                print(f"    fixed / default{' (medians)' if rounds > 1 else ''}: peak "
                      f"{f['measured'] / d['measured']:.2f}, training time "
                      f"{f['seconds'] / d['seconds']:.2f}, CPU time {cpu_f / cpu_d:.2f} (user "
                      f"{f['user'] / d['user']:.2f}), system time "
                      f"{f['sys'] / max(d['sys'], 1e-9):.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
