"""Tiny random models of several architectures, for the tests that must not be Llama-only.

Each is built from its transformers config (2 blocks, hidden 64, 4 heads / 2 KV heads, MLP 128,
context 256), carries SmolLM2's tokenizer (byte-level BPE with a ChatML template: the
``smol_tokenizer`` fixture), is saved as a model folder and written as a GGUF file of each type
with spectune's writer (:func:`spectune.models.gguf_export.write_gguf`). Everything is built once
per test session under the session's temporary folder (:func:`arch_root`) and reused: a folder
appears whole or not at all (``spectune._io.publish_dir``).

Settings beside the common ones, and why:

- ``qwen3``: ``head_dim`` is left at Qwen3Config's default (128): transformers' GGUF loader
  reads no head size for qwen3, so a file of any other head size would load as another model
  (the writer refuses it).
- ``gemma3``: Gemma3ForCausalLM (text only), ``head_dim`` 16 (the loader reads
  ``attention.key_length``).
- ``mistral``: ``head_dim`` 16; llama.cpp writes Mistral as ``llama``, so the file loads back
  as a LlamaForCausalLM with the same weights (its 4096-token sliding window is longer than
  the 256-token context, so it never bites).

A GGUF file is written alone in its own folder: ``AutoTokenizer.from_pretrained(folder,
gguf_file=...)`` prefers a ``tokenizer.json`` beside the file to the file's own tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: the architectures, in the order tests run them
ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")

#: what every tiny model shares
COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "initializer_range": 0.2,
}

#: architecture -> (config class, model class, settings beside COMMON)
SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"head_dim": 16}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": None}),
}


def tiny_arch_model(arch: str, vocab: int, *, seed: int = 0) -> Any:
    """A random 2-block model of ``arch`` (:data:`SPECS`), float32, in eval mode; every
    RMSNorm weight is its init plus seeded noise (a real model's are not constant)."""
    import transformers

    config_name, model_name, extra = SPECS[arch]
    config = getattr(transformers, config_name)(vocab_size=vocab, **COMMON, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # norms away from their constant init, so that a wrong one shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def arch_folder(root: Path, arch: str, tokenizer: Any) -> Path:
    """``root/<arch>``: the tiny model of ``arch`` saved with ``tokenizer`` (built once)."""
    from spectune._io import publish_dir

    folder = root / arch
    if not (folder / "config.json").is_file():

        def build(tmp: Path) -> None:
            tiny_arch_model(arch, len(tokenizer)).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        publish_dir(build, folder)
    return folder


def arch_gguf(root: Path, arch: str, tokenizer: Any, qtype: str = "f16") -> Path:
    """``root/<arch>-gguf-<qtype>/model.gguf``: the folder's model written by spectune's GGUF
    writer, alone in its folder (built once)."""
    from transformers import AutoModelForCausalLM

    from spectune.models.gguf_export import write_gguf

    path = root / f"{arch}-gguf-{qtype}" / "model.gguf"
    if not path.is_file():
        folder = arch_folder(root, arch, tokenizer)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        write_gguf(model, tokenizer, path, qtype=qtype, name=f"tiny-{arch}")
    return path


def arch_root(tmp_path_factory: Any) -> Path:
    """The folder the tiny models of every architecture are cached in for the session (a
    test module's fixture calls this: the folders are shared between modules on disk)."""
    root = tmp_path_factory.getbasetemp() / "archs"
    root.mkdir(exist_ok=True)
    return root
