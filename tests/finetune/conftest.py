"""Fixtures for the fine-tuning tests: a tiny random Llama saved as a model folder with the
embedded model's tokenizer (so prompts use the real chat template), and run configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch


def tiny_llama(vocab: int, *, hidden: int = 64, mlp: int | None = None, seed: int = 0):
    """A random 2-block Llama (hidden ``hidden``, MLP ``mlp`` or 2x, 4 heads / 2 KV heads, tied
    embeddings), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp or 2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(folder: Path, vocab: int, **kwargs: Any) -> Path:
    """:func:`tiny_llama` saved as a model folder."""
    tiny_llama(vocab, **kwargs).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from spectune.models import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A tiny Llama with SmolLM2's tokenizer (hidden 64: every width packs for bitsandbytes)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_llama(folder, len(smol_tokenizer))
    smol_tokenizer.save_pretrained(folder)
    return folder


def tiny_run_config(model_dir: Path, method: str = "lora", **changes: Any) -> dict[str, Any]:
    """Raw config data of a seconds-long run on the tiny model."""
    data: dict[str, Any] = {
        "model": str(model_dir),
        "method": method,
        "seed": 0,
        # each method gets only the sections it reads (a foreign section is an error)
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "frog": {"budget": 0.05},
        "shira": {"r": 4},
        "data": {"train": "tasks", "n_train": 48, "n_eval": 8, "max_length": 96},
        "eval": {
            "max_new_tokens": 4,
            "batch_size": 8,
            "ppl_chars": 400,
            "ppl_window": 64,
            "ppl_stride": 32,
            "latency_tokens": 3,
            "latency_prompts": 1,
        },  # fmt: skip
        "train": {
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-2,
            "logging_steps": 1,
            "save_steps": 2,
            "warmup_steps": 0,
        },  # fmt: skip
    }
    from spectune.finetune.methods import get_method

    try:
        reads = set(get_method(method).sections)
    except Exception:  # an unknown method: let the config say so
        reads = set()
    for name in ("lora", "frog", "shira"):
        if name not in reads:
            data.pop(name)
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            data.setdefault(section, {})[leaf] = value
        else:
            data[key] = value
    return data


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Judging caches go to a per-session folder; the embedded model's cache stays shared."""
    from spectune.models import cache_root

    root = cache_root()  # resolve the real cache first (the default model lives there)
    judge_dir = tmp_path_factory.getbasetemp() / "judge-cache"
    monkeypatch.setattr("spectune.finetune.recipe._judge_cache_dir", lambda: judge_dir)
    yield root
