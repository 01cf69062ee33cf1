"""Does ``torch.compile`` (CPU inductor) speed up spectune's training step? LoRA, DoRA and full
fine-tuning on the embedded SmolLM2-135M-Instruct, the demo's batches (batch 8, the task set,
max length 96), spectune's own loss (the head only on labelled positions).

For each method: the same model and batches, eager and with the decoder compiled
(``torch.compile(decoder, dynamic=True)``: the batch length varies); the compile time is the
first compiled steps' time beyond the steady step time, reported apart; the steady step time
is the median over the timed steps, eager and compiled interleaved step by step so that a
machine slowing down slows both. A compile that fails is reported with its error. Each method
runs in a process of its own. The compile time is a cold one when the inductor cache is empty
(``TORCHINDUCTOR_CACHE_DIR`` pointing to a new folder).

Run: .venv/bin/python bench/compile_step.py [--steps 12] [--warmup 3] [--methods lora,dora,full]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


def setup(method: str):
    import torch

    from spectune.models.forward import decoder_and_head, labelled_nll
    from spectune.tuning.config import load_config
    from spectune.tuning.methods import BuildContext
    from spectune.tuning.recipe import build_model, prepare, prepare_training

    root = Path(__file__).resolve().parents[1]
    rate = "3e-4" if method == "full" else "1e-3"
    config = load_config(root / "configs" / "demo.yaml",
                         [f"method={method}", f"train.learning_rate={rate}"],
                         foreign_sections="drop")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare(config, out=Path(tmp) / "x", progress=False)
        prepare_training(run)
        ctx = BuildContext(run.config, run.model_dir, Path(tmp), False, (), run.train_data)
        built = build_model(run.method, ctx, tokenizer=run.tokenizer)
    model = built.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(rate))
    feats = run.train_data.dataset
    collate = run.train_data.collator
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(feats), generator=g).tolist()
    batches = [collate([feats[i] for i in order[k : k + 8]]) for k in range(0, 8 * 64, 8)]
    parts = decoder_and_head(model)

    def step(batch, parts=parts):
        nll, n = labelled_nll(parts, batch["input_ids"], batch["attention_mask"], batch["labels"])
        (nll / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, parts, step, batches


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--methods", default="lora,dora,full")
    args = ap.parse_args()
    methods = args.methods.split(",")
    if len(methods) > 1:  # one process per method: after a compile, eager steps of the next
        # model in the same process ran 3x slower (DoRA: 9.9 s against 3.5 s alone)
        for method in methods:
            subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--warmup",
                            str(args.warmup), "--methods", method], check=False)  # fmt: skip
        return 0
    for method in methods:
        model, (decoder, head), step, batches = setup(method)
        compiled = torch.compile(decoder, dynamic=True)
        it = iter(batches)
        for _ in range(args.warmup):  # eager warm-up
            step(next(it))
        first = []
        try:
            for _ in range(args.warmup):  # compile happens here (and on new shapes)
                start = time.perf_counter()
                step(next(it), parts=(compiled, head))
                first.append(time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - a bench reports whatever breaks compile
            print(f"{method}: torch.compile failed: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3)
            continue
        eager, comp = [], []
        for _ in range(args.steps):
            for which, times in (((decoder, head), eager), ((compiled, head), comp)):
                start = time.perf_counter()
                step(next(it), parts=which)
                times.append(time.perf_counter() - start)
        e, c = statistics.median(eager), statistics.median(comp)
        compile_s = sum(first) - len(first) * c
        print(f"{method}: eager {e:.2f} s/step, compiled {c:.2f} s/step ({e / c:.2f}x), "
              f"compile time {compile_s:.0f} s (first {len(first)} compiled steps "
              f"{', '.join(f'{x:.1f}' for x in first)} s): pays off after "
              f"{compile_s / max(e - c, 1e-9):.0f} steps" if e > c else
              f"{method}: eager {e:.2f} s/step, compiled {c:.2f} s/step ({e / c:.2f}x: slower), "
              f"compile time {compile_s:.0f} s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
