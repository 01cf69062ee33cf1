"""spectune against TRL's ``SFTTrainer`` + peft on identical settings: training seconds and loss
curves for LoRA, QLoRA and full fine-tuning on the embedded SmolLM2-135M-Instruct.

Identical: the model (spectune's cached float32 copy of the embedded GGUF), the tokens (the
task set tokenized once by spectune, handed to TRL pre-tokenized with spectune's labels, so
both train on the same prompt-masked examples), the order (the same seed for both Trainers'
samplers), and the settings: LoRA r=8, alpha 16, dropout 0.05 on every linear layer; batch 8;
25 steps; linear schedule with 3 warm-up steps; rate 3e-3 (full fine-tuning 3e-4); float32
(QLoRA: NF4 base with double quantization, spectune's compute dtype for this CPU). What is timed
is each Trainer's own ``train()`` (TRL's ``train_runtime``, spectune's
``train_seconds_this_session``): loading, tokenizing and judging are outside both.

The rounds interleave the two (spectune first in odd rounds, TRL first in even ones), so a
machine that slows down mid-bench slows both; the figure is the median of the per-round ratios
TRL seconds / spectune seconds. The loss curves (every 5 steps) are printed side by side with
their largest relative difference: the same data and optimizer give the same curve shape, not
the same numbers (dropout masks and kernels differ).

spectune trains with its default batches (``data.batching: auto``, padding-free rows here);
``--batching padded`` gives both the same padded batches, TRL's default (``padding_free=False``).

``--trl-data chat`` hands TRL the same examples as conversations instead (``prompt`` /
``completion`` message lists) and leaves the rest to its defaults: TRL renders them with the
model's chat template, which for SmolLM2 adds its default system turn where a conversation has
none, while spectune trains with the demo's empty system turn (``data.system: ""``). That is the
same data as each tool's user would give it, not the same tokens: the bench prints both token
counts, and the ratio then measures the work done as well as the trainer.

Run: .venv/bin/python bench/vs_trl.py [--rounds 3] [--methods lora,qlora,full] [--steps 25]
[--batching auto|padded] [--trl-data tokens|chat]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SETTINGS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "batch": 8, "max_length": 96}
RATE = {"lora": 3e-3, "qlora": 3e-3, "full": 3e-4}


def spectune_config(method: str, steps: int) -> dict[str, Any]:
    lora = {k: SETTINGS[k] for k in ("r", "lora_alpha", "lora_dropout")}
    return {
        **({} if method == "full" else {"lora": lora}),
        "model": "default",
        "method": method,
        "seed": 0,
        "target_modules": "all-linear",
        "data": {
            "train": "tasks",
            "n_train": 2000,
            "n_eval": 8,
            "system": "",
            "max_length": SETTINGS["max_length"],
            "batching": "padded",
        },  # fmt: skip
        "eval": {
            "latency_prompts": 0,
            "spectra": False,
            "intruders": False,
            "compare_base": False,
            "ppl_chars": 500,
            "max_new_tokens": 4,
        },  # fmt: skip
        "train": {
            "max_steps": steps,
            "per_device_train_batch_size": SETTINGS["batch"],
            "learning_rate": RATE[method],
            "lr_scheduler_type": "linear",
            "warmup_steps": 3,
            "logging_steps": 5,
            "save_steps": steps,
        },  # fmt: skip
    }


def run_spectune(method: str, steps: int, batching: str) -> tuple[float, list[float]]:
    from spectune.tuning.config import TuneConfig
    from spectune.tuning.recipe import tune

    data = spectune_config(method, steps)
    data["data"]["batching"] = batching
    with tempfile.TemporaryDirectory() as tmp:
        m = tune(TuneConfig.from_dict(data), out=Path(tmp) / "run", progress=False).metrics
        log = (Path(tmp) / "run" / "train_log.csv").read_text().splitlines()
    header = log[0].split(",")
    losses = [float(r.split(",")[header.index("loss")]) for r in log[1:]]
    return m.cost.train_seconds_this_session, losses


def trl_inputs(method: str, steps: int) -> tuple[Path, list[dict[str, list[int]]], Any]:
    """The model folder, spectune's tokenized training examples and the 4-bit settings."""
    from spectune.tuning.config import TuneConfig
    from spectune.tuning.recipe import prepare, prepare_training

    with tempfile.TemporaryDirectory() as tmp:
        run = prepare(TuneConfig.from_dict(spectune_config(method, steps)), out=Path(tmp) / "x",
                      progress=False)  # fmt: skip
        prepare_training(run)
    feats = [{"input_ids": list(f["input_ids"]), "labels": list(f["labels"])}
             for f in run.train_data.dataset]  # fmt: skip
    return Path(run.model_dir), feats, run


def chat_rows(run: Any) -> list[dict[str, list[dict[str, str]]]]:
    """The run's training examples as TRL's conversational prompt-completion records (no
    system message: TRL applies the chat template, and the template its default)."""
    from spectune.data.examples import user_message

    return [{"prompt": [{"role": "user", "content": user_message(ex)}],
             "completion": [{"role": "assistant", "content": ex.response}]}
            for ex in run.data.train]  # fmt: skip


def run_trl(
    method: str, steps: int, model_dir: Path, feats: list, run: Any
) -> tuple[float, list[float], float]:
    """TRL's training seconds, its loss every 5 steps and its mean tokens per example."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    if method == "qlora":  # the very 4-bit model spectune trains (its skips, its compute dtype)
        from spectune.tuning.methods.qlora import load_4bit_base

        model, _ = load_4bit_base(model_dir, run.config)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_config = None if method == "full" else LoraConfig(
        r=SETTINGS["r"], lora_alpha=SETTINGS["lora_alpha"], lora_dropout=SETTINGS["lora_dropout"],
        target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=SETTINGS["batch"],
            learning_rate=RATE[method], lr_scheduler_type="linear", warmup_steps=3,
            logging_steps=5, save_strategy="no", report_to=[], seed=0, data_seed=0,
            max_length=SETTINGS["max_length"], use_cpu=True, bf16=False,
            gradient_checkpointing=False, packing=False, padding_free=False,
            disable_tqdm=True, dataloader_num_workers=0)  # fmt: skip
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(feats),
                             processing_class=run.tokenizer, peft_config=peft_config)  # fmt: skip
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        out = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return float(out.metrics["train_runtime"]), losses, statistics.mean(lengths)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default="lora,qlora,full")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batching", default="auto",
                    help="spectune's data.batching (auto: its default, padding-free here; "
                         "padded: TRL's default batches)")  # fmt: skip
    ap.add_argument("--trl-data", choices=("tokens", "chat"), default="tokens",
                    help="tokens: TRL trains on spectune's tokenized examples; chat: on the same "
                         "examples as conversations, rendered by TRL")  # fmt: skip
    args = ap.parse_args()
    for method in args.methods.split(","):
        model_dir, feats, run = trl_inputs(method, args.steps)
        spectune_tokens = statistics.mean(len(f["input_ids"]) for f in feats)
        if args.trl_data == "chat":
            feats = chat_rows(run)
        ratios, rows = [], []
        for r in range(args.rounds):
            order = ("spectune", "trl") if r % 2 == 0 else ("trl", "spectune")
            got = {}
            for who in order:
                start = time.perf_counter()
                got[who] = (run_spectune(method, args.steps, args.batching) if who == "spectune"
                            else run_trl(method, args.steps, model_dir, feats, run))  # fmt: skip
                print(f"  [{method} round {r + 1}] {who}: train {got[who][0]:.1f} s "
                      f"(wall {time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
            ratios.append(got["trl"][0] / got["spectune"][0])
            rows.append(got)
        med = statistics.median(ratios)
        print(f"{method}: tokens per training example: spectune {spectune_tokens:.1f}, "
              f"TRL {rows[-1]['trl'][2]:.1f} (--trl-data {args.trl_data})")  # fmt: skip
        print(f"{method}: TRL / spectune training seconds, median of {args.rounds} rounds: "
              f"{med:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
        s_loss, t_loss = rows[-1]["spectune"][1], rows[-1]["trl"][1]
        n = min(len(s_loss), len(t_loss))
        diff = max(
            abs(a - b) / max(abs(b), 1e-9) for a, b in zip(s_loss[:n], t_loss[:n], strict=True)
        )
        print(f"  loss every 5 steps: spectune {[round(x, 3) for x in s_loss[:n]]}")
        print(f"                      TRL      {[round(x, 3) for x in t_loss[:n]]}")
        print(f"  largest relative difference {diff:.1%}" if args.trl_data == "tokens" else
              "  (not comparable with --trl-data chat: the two score other tokens)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
