"""Writing a Hugging Face causal language model and its tokenizer as one GGUF file.

GGUF is the file llama.cpp and Ollama run. :func:`write_gguf` writes the model's weights
(``f32``, ``f16`` or ``q8_0``), its shape (``{arch}.block_count``, head counts, rotary base...)
and its tokenizer (``tokenizer.ggml.*``: tokens, token types, BPE merges, the special ids and
the chat template) through the ``gguf`` package's ``GGUFWriter``; the tensor names come from
that package's own name table (``gguf.get_tensor_name_map``), which is also what transformers'
GGUF loader inverts.

What the file must hold so that both llama.cpp and transformers (``from_pretrained(folder,
gguf_file=...)``) read the same model back:

- **llama, mistral** (written as ``llama``, as llama.cpp does): the rows of ``q_proj`` and
  ``k_proj`` in llama.cpp's rotary order. Per head, transformers rotates the two halves of the
  head (``[x_0..x_{d/2-1}]`` with ``[x_{d/2}..x_{d-1}]``), llama.cpp rotates neighbours
  (``x_{2i}`` with ``x_{2i+1}``): row ``h*d + 2i + j`` of the file is row ``h*d + j*d/2 + i``
  of the model (``j`` in 0, 1). The loader undoes exactly this.
- **gemma3** (text only): every RMSNorm weight as ``1 + w`` (Gemma's norms multiply by
  ``1 + w``; llama.cpp's by the stored weight).
- **qwen2, qwen3, phi3**: the weights as they are (phi3's fused ``qkv_proj`` and
  ``gate_up_proj`` are llama.cpp's ``attn_qkv`` and ``ffn_up``).

Before the file is written its shape metadata is read back with transformers' own config
reader (:func:`check_readback`), and every shape setting that would come back different (a ``head_dim`` the loader cannot read for this
architecture, a sliding window it sets by default...) refuses the export, naming the setting:
a file that would load as another model is never left behind.

Tensor types: ``f32`` everything in float32; ``f16`` matrices in float16, vectors (norms,
biases) in float32, as llama.cpp writes them; ``q8_0`` matrices whose rows are a multiple of
32 long in llama.cpp's 8-bit blocks (32 weights and one float16 scale), the others in float16,
vectors in float32.

The tokenizer must be a byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen and others); it is
written as ``tokenizer.ggml.model = gpt2``, with ``tokenizer.ggml.pre`` naming its split
pattern where transformers' loader knows it (llama3, qwen2...; otherwise ``default``, GPT-2's
pattern). A SentencePiece vocabulary (Llama 2, Mistral 7B v0.1, Gemma's own) is refused,
naming it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectune._io import atomic_path
from spectune.errors import SpectuneError

#: the tensor types :func:`write_gguf` writes
GGUF_TYPES = ("f32", "f16", "q8_0")
#: the metadata key that marks a file spectune wrote (its value names the source)
MARKER_KEY = "spectune.exported_from"
#: a Q8_0 block: 32 weights
_Q8_BLOCK = 32


@dataclass(frozen=True)
class GgufArch:
    """How one transformers ``model_type`` is written.

    Attributes:
        gguf: ``general.architecture`` in the file (a ``gguf.MODEL_ARCH_NAMES`` value).
        rotary_rows: q/k rows reordered into llama.cpp's rotary order.
        norm_plus_one: RMSNorm weights stored as ``1 + w``.
        sliding_window: ``{arch}.attention.sliding_window`` is written.
    """

    gguf: str
    rotary_rows: bool = False
    norm_plus_one: bool = False
    sliding_window: bool = False


#: transformers ``model_type`` -> how it is written
ARCHITECTURES: dict[str, GgufArch] = {
    "llama": GgufArch("llama", rotary_rows=True),
    "mistral": GgufArch("llama", rotary_rows=True),
    "qwen2": GgufArch("qwen2"),
    "qwen3": GgufArch("qwen3"),
    "phi3": GgufArch("phi3"),
    "gemma3_text": GgufArch("gemma3", norm_plus_one=True, sliding_window=True),
}

#: config settings compared with what transformers' GGUF loader reads back
_READBACK = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "vocab_size",
    "tie_word_embeddings",
    "hidden_act",
    "hidden_activation",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "layer_types",
    "query_pre_attn_scalar",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "rope_parameters",
)


def gguf_architecture(config: Any) -> GgufArch:
    """How a model of this config is written.

    Raises:
        SpectuneError: an architecture the writer does not know, naming the supported ones.
    """
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        hint = (
            " (Gemma 3 with vision: load its text model, Gemma3ForCausalLM, and export that)"
            if model_type == "gemma3"
            else ""
        )
        raise SpectuneError(
            f"GGUF export does not know the architecture {model_type!r}{hint}; it writes "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return arch


def _qtype(name: str) -> Any:
    import gguf

    if name not in GGUF_TYPES:
        raise SpectuneError(f"--type {name!r} is not a GGUF type spectune writes; use one of "
                            f"{', '.join(GGUF_TYPES)}")  # fmt: skip
    return {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[name]


# --------------------------------------------------------------------------- tensors


def _rotary_rows(weight: Any, heads: int) -> Any:
    """``weight`` (out, in) with each head's rows from transformers' rotary order (halves) to
    llama.cpp's (neighbours)."""
    rows = weight.shape[0]
    half = rows // heads // 2
    # (heads, 2, half, in) -> (heads, half, 2, in): row h*d + j*half + i goes to h*d + 2i + j
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _matrix_type(data: Any, qtype: Any) -> Any:
    """The type a tensor is stored in under the requested ``qtype``."""
    import gguf

    if data.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
        return gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % _Q8_BLOCK != 0:
        return gguf.GGMLQuantizationType.F16
    return qtype


def gguf_tensors(model: Any, qtype: str = "f16") -> Iterator[tuple[str, Any, Any]]:
    """The model's tensors as the file stores them.

    Args:
        model: a transformers causal LM of a supported architecture.
        qtype: ``f32``, ``f16`` or ``q8_0``.

    Yields:
        ``(gguf name, numpy array, gguf.GGMLQuantizationType)``; a quantized array is the
        packed bytes (``gguf.quants.quantize``).

    Raises:
        SpectuneError: an unknown architecture, or a tensor that has no GGUF name (named).
    """
    import gguf
    import numpy as np
    import torch

    config = model.config
    arch = gguf_architecture(config)
    requested = _qtype(qtype)
    names = gguf.get_tensor_name_map(_model_arch(arch.gguf), config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # no output.weight: the loader then ties the head to the embeddings
        stem, _, suffix = hf_name.rpartition(".")
        target = names.get_name(stem)
        if target is None:
            raise SpectuneError(
                f"the model's tensor {hf_name!r} has no name in a {arch.gguf} GGUF file; "
                "only a plain transformers model can be exported (merge the adapter first)"
            )
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch.rotary_rows and stem.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            data = _rotary_rows(data, heads if stem.endswith("q_proj") else kv_heads)
        if arch.norm_plus_one and stem.endswith("norm") and suffix == "weight":
            data = data + 1.0
        data = np.ascontiguousarray(data)
        stored = _matrix_type(data, requested)
        yield f"{target}.{suffix}", gguf.quants.quantize(data, stored), stored


def _model_arch(name: str) -> Any:
    import gguf

    return next(arch for arch, value in gguf.MODEL_ARCH_NAMES.items() if value == name)


# --------------------------------------------------------------------------- metadata


def _rope_theta(config: Any) -> float:
    """The rotary base of the full-attention layers."""
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:
        params = params["full_attention"]
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _head_dim(config: Any) -> int:
    return int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )


def _add_shape(writer: Any, config: Any, arch: GgufArch) -> None:
    """``{arch}.*``: what llama.cpp and transformers' loader build the model from."""
    head_dim = _head_dim(config)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    if arch.sliding_window and getattr(config, "sliding_window", None):
        writer.add_sliding_window(int(config.sliding_window))


def _bpe_model(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's BPE model (vocabulary and merges) from its ``tokenizer.json``.

    Raises:
        SpectuneError: not a fast tokenizer, or not a byte-level BPE.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SpectuneError(
            f"GGUF export needs a fast tokenizer (tokenizer.json); {type(tokenizer).__name__} "
            "is not one: save the model folder with a tokenizer.json"
        )
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise SpectuneError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2 style); this one is a "
            f"{model.get('type')} model without a ByteLevel pre-tokenizer (SentencePiece?), "
            "which it does not write"
        )
    return model


def _pre_tokenizer_name(tokenizer: Any) -> str:
    """``tokenizer.ggml.pre``: the llama.cpp name of the tokenizer's split pattern, looked up
    in transformers' own table of the patterns its GGUF loader rebuilds (llama3, qwen2,
    tekken...); ``default`` (GPT-2's pattern) for a plain ByteLevel pre-tokenizer or a
    pattern the table does not hold."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
        )
    except ImportError:  # another transformers: it splits every file GPT-2's way
        return "default"
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    patterns = [
        step.get("pattern", {}).get("Regex")
        for step in spec.get("pretokenizers", [spec])
        if step.get("type") == "Split"
    ]
    for name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items():
        if patterns == [pattern]:
            return name
    return "default"


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """``tokenizer.ggml.*`` and ``tokenizer.chat_template``."""
    import gguf

    model = _bpe_model(tokenizer)
    vocab = tokenizer.get_vocab()  # the BPE vocabulary and the added tokens
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise SpectuneError(
            f"the tokenizer has {len(vocab)} tokens (highest id {max(vocab.values())}) but the "
            f"model embeds {vocab_size}: resize the embeddings before exporting"
        )
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, index in vocab.items():
        tokens[index], types[index] = token, gguf.TokenType.NORMAL
    for index, added in tokenizer.added_tokens_decoder.items():
        types[index] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("pad_token_id", writer.add_pad_token_id),
        ("unk_token_id", writer.add_unk_token_id),
    ):
        index = getattr(tokenizer, name, None)
        if isinstance(index, int):
            add(index)
    for name, add in (
        ("add_bos_token", writer.add_add_bos_token),
        ("add_eos_token", writer.add_add_eos_token),
    ):
        flag = getattr(tokenizer, name, None)
        if isinstance(flag, bool):
            add(flag)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


# --------------------------------------------------------------------------- the file


def _file_type(qtype: str) -> int:
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[qtype]


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to float32 precision (the file stores them so), dicts and lists alike."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check_readback(config: Any) -> None:
    """Refuse a model that transformers' GGUF loader would read back with another shape.

    The shape metadata (:func:`_add_shape`, and ``output.weight`` when the head is not tied)
    is written to a small file of its own and read with transformers' config reader
    (``AutoConfig.from_pretrained(..., gguf_file=...)``); the full file's token list would
    take seconds to parse and says nothing about the shape.

    Raises:
        SpectuneError: a setting (:data:`_READBACK`) that would come back different, named.
    """
    import tempfile

    import gguf
    import numpy as np
    from transformers import AutoConfig

    arch = gguf_architecture(config)
    with tempfile.TemporaryDirectory(prefix="spectune-gguf-") as tmp:
        probe = Path(tmp) / "shape.gguf"
        writer = gguf.GGUFWriter(probe, arch.gguf)
        writer.add_name("shape")
        _add_shape(writer, config, arch)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        writer.add_tensor("token_embd.weight", np.zeros((1, 1), dtype=np.float32))
        if not tied:
            writer.add_tensor("output.weight", np.zeros((1, 1), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        back = AutoConfig.from_pretrained(tmp, gguf_file=probe.name)
    for key in _READBACK:
        if not hasattr(config, key):
            continue
        want, got = getattr(config, key), getattr(back, key, None)
        if key == "sliding_window" and want and want >= config.max_position_embeddings:
            want = got if not got else want  # a window as long as the context never bites
        if not _same(want, got):
            raise SpectuneError(
                f"transformers' GGUF loader would read {key}={got!r} back from a "
                f"{config.model_type} GGUF file where this model has {want!r}: the file would "
                "load as another model, so it is not written"
            )


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: str | os.PathLike[str],
    *,
    qtype: str = "f16",
    name: str | None = None,
    source: str = "",
) -> Path:
    """Write ``model`` and ``tokenizer`` as one GGUF file, atomically.

    Args:
        model: a transformers causal LM of a supported architecture (:data:`ARCHITECTURES`),
            with any adapter merged into its weights.
        tokenizer: its tokenizer (a byte-level BPE, fast).
        path: the file to write (replaced if it exists: the caller decides whether it may be).
        qtype: ``f32``, ``f16`` or ``q8_0`` (:data:`GGUF_TYPES`).
        name: ``general.name`` (default: the model folder's name).
        source: what the file was made from, recorded under :data:`MARKER_KEY`.

    Returns:
        The path written.

    Raises:
        SpectuneError: an unknown architecture or tensor type, a tokenizer that is not a
            byte-level BPE or is larger than the embeddings, a model that transformers'
            loader would read back with another shape (nothing is written).
    """
    import gguf

    config = model.config
    arch = gguf_architecture(config)
    _qtype(qtype)
    _bpe_model(tokenizer)
    check_readback(config)
    path = Path(path)
    label = name or Path(str(getattr(config, "_name_or_path", "") or "model")).name or "model"
    if label.lower() == "mistral":  # the loader reads a llama file named so as a Mistral class
        label = "mistral-model"
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch.gguf)
        writer.add_name(label)
        writer.add_file_type(_file_type(qtype))
        if qtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string(MARKER_KEY, source or label)
        _add_shape(writer, config, arch)
        _add_tokenizer(writer, tokenizer, int(config.vocab_size))
        for tensor_name, data, stored in gguf_tensors(model, qtype):
            writer.add_tensor(tensor_name, data, raw_dtype=stored)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def written_by_spectune(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a GGUF file that :func:`write_gguf` wrote (it carries
    :data:`MARKER_KEY`); False for any other file, readable or not."""
    try:
        import gguf

        return MARKER_KEY in gguf.GGUFReader(str(path)).fields
    except Exception:  # not a GGUF file at all, or a damaged one: not ours
        return False


def export_folder(
    folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    qtype: str = "f16",
) -> Path:
    """Write the model folder ``folder`` (weights and tokenizer) as the GGUF file ``path``.

    Raises:
        SpectuneError: as :func:`write_gguf`; a folder transformers cannot load.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise SpectuneError(
            f"{folder}: not a model folder transformers can load "
            f"({' '.join(str(exc).split())[:200]})"
        ) from None
    return write_gguf(model, tokenizer, path, qtype=qtype, name=folder.name, source=str(folder))


__all__ = [
    "ARCHITECTURES",
    "GGUF_TYPES",
    "MARKER_KEY",
    "GgufArch",
    "check_readback",
    "export_folder",
    "gguf_architecture",
    "gguf_tensors",
    "write_gguf",
    "written_by_spectune",
]
