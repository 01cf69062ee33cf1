"""Tensor names: natural order, module names, layer types, PEFT parts and GGUF <-> HF names.

Everything here is pure string work (no torch import), so it is cheap to call for every tensor
of a large checkpoint.

Name forms handled:

- Hugging Face: ``model.layers.0.self_attn.q_proj.weight``.
- PEFT, saved adapter file: ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``,
  ``...embed_tokens.lora_embedding_A`` and, with DoRA, ``...q_proj.lora_magnitude_vector``.
- PEFT, live ``PeftModel.state_dict()``: the same with the adapter name inserted
  (``...q_proj.lora_A.default.weight``, ``...lora_magnitude_vector.default.weight``) and the
  wrapped base weight as ``...q_proj.base_layer.weight``.
- llama.cpp GGUF: ``blk.0.attn_q.weight``, ``token_embd.weight``, ``output.weight``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

#: Layer types a :class:`~spectune.weights.TensorInfo` can carry.
LAYER_TYPES = ("linear", "conv2d", "conv1d", "embedding", "norm", "bias", "other")

#: Prefixes PEFT (and ``torch.compile``) put in front of the base model's names.
PEFT_PREFIXES = ("base_model.model.", "_orig_mod.")

#: The tensor-name tokens of a LoRA layer, mapped to the part they hold.
LORA_PARTS = {
    "lora_A": "A",
    "lora_B": "B",
    "lora_embedding_A": "A",
    "lora_embedding_B": "B",
    "lora_magnitude_vector": "magnitude",
}

_DIGITS = re.compile(r"(\d+)")
_EMBEDDING = re.compile(
    r"^(wte|wpe|token_embd|tok_embeddings|shared)$"
    r"|(^|_)(embed|embeds|embedding|embeddings|emb)(_tokens|_positions)?$"
)
_FLOAT_DTYPES = {
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
}


def natural_key(name: str) -> list[str | int]:
    """Sort key that orders embedded numbers by value (``layers.2`` before ``layers.10``).

    ``re.split`` with a capturing group alternates text and digits, so two keys always
    compare text with text and numbers with numbers.
    """
    parts: list[str | int] = _DIGITS.split(name)
    for i in range(1, len(parts), 2):
        parts[i] = int(parts[i])
    return parts


def strip_param_suffix(name: str) -> str:
    """``name`` without a trailing ``.weight`` / ``.bias`` (the owning module's name)."""
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class LoraName(NamedTuple):
    """A tensor name split into the LoRA layer it belongs to and the part it holds."""

    module: str
    """Raw name of the LoRA-wrapped module, with any PEFT prefix still on."""
    part: str
    """``"A"``, ``"B"`` or ``"magnitude"``."""
    token: str
    """The token found, e.g. ``"lora_A"`` or ``"lora_embedding_B"``."""
    adapter: str | None
    """Adapter name when the name carries one (live models), else ``None`` (saved files)."""


def parse_lora_name(name: str) -> LoraName | None:
    """Recognise a LoRA factor or DoRA magnitude tensor by its name.

    Args:
        name: a tensor name, saved-file or live-model form.

    Returns:
        The parsed name, or ``None`` when ``name`` is not a LoRA A/B/magnitude weight (a
        ``lora_B.bias`` from ``lora_bias=True`` also gives ``None``: it is no factor).
    """
    pieces = name.split(".")
    for i in range(len(pieces) - 1, 0, -1):
        token = pieces[i]
        if token not in LORA_PARTS:
            continue
        rest = pieces[i + 1 :]
        if rest and rest[-1] == "bias":
            return None
        if rest and rest[-1] == "weight":
            rest = rest[:-1]
        if len(rest) > 1:
            return None
        adapter = rest[0] if rest else None
        return LoraName(".".join(pieces[:i]), LORA_PARTS[token], token, adapter)
    return None


def normalize_module_name(name: str, adapter_names: Iterable[str] = ("default",)) -> str:
    """The base model's module name a (PEFT or plain) tensor name refers to.

    Strips the PEFT prefix ``base_model.model.`` (and ``_orig_mod.`` from ``torch.compile``),
    everything from a LoRA token on (``.lora_A.default.weight``), PEFT's wrapper levels
    (``.base_layer``, ``.original_module``, ``.modules_to_save.<adapter>``), a trailing adapter
    name from ``adapter_names`` and a trailing ``.weight`` / ``.bias``.

    Examples:
        ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`` and
        ``base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` and
        ``model.layers.0.self_attn.q_proj.weight`` all give
        ``model.layers.0.self_attn.q_proj``.

    Args:
        name: a tensor or module name.
        adapter_names: adapter names to strip when they end the name.

    Returns:
        The normalized module name.
    """
    for prefix in PEFT_PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix) :]
    lora = parse_lora_name(name)
    if lora is not None:
        return lora.module
    pieces = name.split(".")
    for i, piece in enumerate(pieces):
        if piece in LORA_PARTS or piece in ("lora_dropout", "lora_bias"):
            pieces = pieces[:i]
            break
    if pieces and pieces[-1] in ("weight", "bias"):
        pieces = pieces[:-1]
    adapters = set(adapter_names)
    out: list[str] = []
    skip_next = False
    for i, piece in enumerate(pieces):
        if skip_next:
            skip_next = False
            continue
        if piece in ("base_layer", "original_module"):
            continue
        if piece == "modules_to_save":
            skip_next = i + 1 < len(pieces)  # the adapter name that follows
            continue
        out.append(piece)
    if out and len(out) > 1 and out[-1] in adapters:
        out.pop()
    return ".".join(out)


def is_float_dtype(dtype: str) -> bool:
    """Whether a dtype name (``"bfloat16"``, ``"int64"``...) is a floating-point type."""
    return dtype in _FLOAT_DTYPES


def infer_layer_type(name: str, shape: tuple[int, ...], dtype: str, lora: str | None = None) -> str:
    """Guess a tensor's layer type from its name, shape and dtype (for files, no modules).

    Rules, in order: non-float or 0-d -> ``"other"``; a LoRA factor -> by its number of
    dimensions (a DoRA magnitude -> ``"other"``); 1-d -> ``"bias"`` when the name ends in
    ``bias``, else ``"norm"``; 2-d -> ``"embedding"`` for embedding names (``embed_tokens``,
    ``wte``, ``token_embd``...), else ``"linear"``; 3-d -> ``"conv1d"``; 4-d -> ``"conv2d"``;
    more -> ``"other"``.

    Args:
        name: the tensor name.
        shape: its shape in torch order.
        dtype: its dtype name (``"float32"``...).
        lora: ``"A"`` / ``"B"`` / ``"magnitude"`` for PEFT tensors, else ``None``.

    Returns:
        One of :data:`LAYER_TYPES`.
    """
    ndim = len(shape)
    if not is_float_dtype(dtype) or ndim == 0:
        return "other"
    if lora == "magnitude":
        return "other"
    if ndim == 1:
        return "bias" if name.split(".")[-1].endswith("bias") else "norm"
    if ndim == 2:
        if lora is None:
            last = strip_param_suffix(name).split(".")[-1]
            if _EMBEDDING.search(last):
                return "embedding"
        return "linear"
    if ndim == 3:
        return "conv1d"
    if ndim == 4:
        return "conv2d"
    return "other"


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp) names
# ---------------------------------------------------------------------------------------------

#: Architectures whose llama.cpp tensor names map onto Hugging Face Llama-style names.
GGUF_LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2", "qwen3", "granite", "olmo", "olmo2"})

#: Architectures whose q/k rows llama.cpp's converter permutes (interleaved -> halves RoPE).
GGUF_PERMUTED_QK = frozenset({"llama"})

_GGUF_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_GGUF_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z0-9_]+)\.(weight|bias)$")
_GGUF_GLOBAL_RE = re.compile(r"^([a-z0-9_]+)\.(weight|bias)$")


def gguf_to_hf_name(name: str, arch: str = "llama") -> str | None:
    """Best-effort Hugging Face name of a llama.cpp tensor, for Llama-style architectures.

    ``blk.0.attn_q.weight`` -> ``model.layers.0.self_attn.q_proj.weight``,
    ``token_embd.weight`` -> ``model.embed_tokens.weight``, ``output.weight`` ->
    ``lm_head.weight``. The rows of ``attn_q`` / ``attn_k`` are permuted in llama-arch GGUF
    files (see :func:`unpermute_qk`); singular values are unchanged by that.

    Args:
        name: the GGUF tensor name.
        arch: the file's ``general.architecture``.

    Returns:
        The Hugging Face name, or ``None`` when the architecture is not Llama-like or the
        tensor has no Hugging Face counterpart (e.g. ``rope_freqs.weight``).
    """
    if arch not in GGUF_LLAMA_LIKE:
        return None
    match = _GGUF_BLOCK_RE.match(name)
    if match:
        block, part, suffix = match.groups()
        hf = _GGUF_BLOCK.get(part)
        return f"model.layers.{block}.{hf}.{suffix}" if hf else None
    match = _GGUF_GLOBAL_RE.match(name)
    if match:
        hf = _GGUF_GLOBAL.get(match.group(1))
        return f"{hf}.{match.group(2)}" if hf else None
    return None


def gguf_qk_role(name: str) -> str | None:
    """``"q"`` / ``"k"`` for a GGUF attention query/key weight, else ``None``."""
    match = _GGUF_BLOCK_RE.match(name)
    if match and match.group(3) == "weight":
        return {"attn_q": "q", "attn_k": "k"}.get(match.group(2))
    return None
