"""Fixtures that write tiny real artifacts (HF folders, .bin files, PEFT adapters, GGUF files).

Session-scoped where the artifact is read-only, so the whole set is built once per run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def make_tiny_llama(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A tiny random LlamaForCausalLM (2 layers, hidden 32, 4 heads, 2 kv heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides}))
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model() -> torch.nn.Module:
    """The tiny Llama model (do not modify it)."""
    return make_tiny_llama()


@pytest.fixture(scope="session")
def tiny_state(tiny_model) -> dict[str, torch.Tensor]:
    """A detached copy of the tiny model's state dict."""
    return {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}


@pytest.fixture(scope="session")
def hf_single(tmp_path_factory, tiny_model) -> Path:
    """save_pretrained folder with one model.safetensors."""
    out = tmp_path_factory.mktemp("hf_single")
    tiny_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def hf_sharded(tmp_path_factory, tiny_model) -> Path:
    """save_pretrained folder split into several shards plus model.safetensors.index.json."""
    out = tmp_path_factory.mktemp("hf_sharded")
    tiny_model.save_pretrained(out, max_shard_size="20KB")
    assert len(list(out.glob("model-*-of-*.safetensors"))) >= 3
    return out


def write_bin_shards(folder: Path, state: dict[str, torch.Tensor], n_shards: int) -> Path:
    """pytorch_model-0000i-of-0000n.bin shards and pytorch_model.bin.index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    chunks = [names[i::n_shards] for i in range(n_shards)]
    weight_map = {}
    for i, chunk in enumerate(chunks, start=1):
        shard = f"pytorch_model-{i:05d}-of-{n_shards:05d}.bin"
        torch.save({k: state[k] for k in chunk}, folder / shard)
        weight_map.update(dict.fromkeys(chunk, shard))
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="session")
def bin_single(tmp_path_factory, tiny_state) -> Path:
    """A folder with pytorch_model.bin (torch.save of the state dict)."""
    out = tmp_path_factory.mktemp("bin_single")
    torch.save(tiny_state, out / "pytorch_model.bin")
    return out


@pytest.fixture(scope="session")
def bin_sharded(tmp_path_factory, tiny_state) -> Path:
    """Three .bin shards with their index."""
    return write_bin_shards(tmp_path_factory.mktemp("bin_sharded"), tiny_state, 3)


# ---------------------------------------------------------------------------------------------
# PEFT
# ---------------------------------------------------------------------------------------------


def make_peft(model: torch.nn.Module, seed: int = 1, **lora_kwargs: Any):
    """get_peft_model with nonzero random A and B (init_lora_weights=False)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(init_lora_weights=False, **lora_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, config)
    peft_model.eval()
    return peft_model


def save_peft(peft_model, out: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.save_pretrained(out)
    return out


def live_lora_layers(peft_model) -> dict[tuple[str, str], Any]:
    """(normalized module name, adapter) -> live peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.scaling:
                out[(name.removeprefix("base_model.model."), adapter)] = module
    return out


#: LoRA settings exercised by the adapter fixtures: name -> LoraConfig keywords.
ADAPTER_SETTINGS: dict[str, dict[str, Any]] = {
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        # the first matching key wins; regex keys allowed; "layers.1.self_attn.q_proj" only
        # matches layer 1, "v_proj" every v_proj
        rank_pattern={"layers.1.self_attn.q_proj": 2, r"layers\.0\.mlp\..*_proj": 6},
        alpha_pattern={"v_proj": 3, "down_proj": 12.5},
    ),
    "rslora": dict(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "gate_proj"],
        rank_pattern={"gate_proj": 2},
    ),
    "dora": dict(
        r=4,
        lora_alpha=4,
        use_dora=True,
        target_modules=["q_proj", "v_proj", "embed_tokens"],
        alpha_pattern={"layers.0.self_attn.v_proj": 2},
    ),
}


@pytest.fixture(scope="session")
def adapters(tmp_path_factory) -> Callable[[str], tuple[Any, Path]]:
    """``get(name) -> (live PeftModel, saved adapter folder)`` for ADAPTER_SETTINGS, built once."""
    cache: dict[str, tuple[Any, Path]] = {}

    def get(name: str) -> tuple[Any, Path]:
        if name not in cache:
            peft_model = make_peft(make_tiny_llama(), **ADAPTER_SETTINGS[name])
            folder = save_peft(peft_model, tmp_path_factory.mktemp(f"adapter_{name}"))
            cache[name] = (peft_model, folder)
        return cache[name]

    return get


@pytest.fixture(params=sorted(ADAPTER_SETTINGS))
def adapter(request, adapters) -> tuple[Any, Path, str]:
    """(live PeftModel, saved adapter folder, setting name), for every ADAPTER_SETTINGS entry."""
    return (*adapters(request.param), request.param)


@pytest.fixture
def patterns_adapter(adapters) -> tuple[Any, Path]:
    """The "patterns" adapter (live model, folder); do not modify the model."""
    return adapters("patterns")


# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------

HF_TO_GGUF_BLOCK = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def hf_to_gguf(name: str) -> str:
    """Test-side HF -> llama.cpp name map (written independently of the library's)."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in fixed:
        return fixed[name]
    parts = name.split(".")  # model.layers.<i>.<...>.weight
    block, inner = parts[2], ".".join(parts[3:-1])
    return f"blk.{block}.{HF_TO_GGUF_BLOCK[inner]}.{parts[-1]}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Row permutation llama.cpp applies to q/k: per head, halves -> interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(
    path: Path,
    state: dict[str, torch.Tensor],
    qtype_of: Callable[[str], str],
    *,
    n_head: int = TINY["num_attention_heads"],
    n_kv: int = TINY["num_key_value_heads"],
    permute: bool = True,
) -> dict[str, np.ndarray]:
    """Write a llama-arch GGUF of ``state`` and return what each tensor should load as.

    Args:
        qtype_of: HF name -> GGML type name ("F32", "F16", "BF16", "Q8_0", "Q4_1").

    Returns:
        HF name -> the float32 array the GGUF holds in HF row order (after quantization
        round trip, computed with gguf.quants).
    """
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(TINY["num_hidden_layers"])
    writer.add_embedding_length(TINY["hidden_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_context_length(64)
    writer.add_feed_forward_length(TINY["intermediate_size"])
    expected: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        array = tensor.detach().float().numpy()
        stored = array
        if permute and name.endswith("self_attn.q_proj.weight"):
            stored = llama_cpp_permute(array, n_head)
        elif permute and name.endswith("self_attn.k_proj.weight"):
            stored = llama_cpp_permute(array, n_kv)
        qname = qtype_of(name)
        qtype = gguf.GGMLQuantizationType[qname]
        if qname == "F32":
            writer.add_tensor(hf_to_gguf(name), stored.astype(np.float32))
            roundtrip = stored.astype(np.float32)
        elif qname == "F16":
            writer.add_tensor(hf_to_gguf(name), stored.astype(np.float16))
            roundtrip = stored.astype(np.float16).astype(np.float32)
        else:
            data = gguf.quants.quantize(stored.astype(np.float32), qtype)
            writer.add_tensor(hf_to_gguf(name), data, raw_dtype=qtype)
            roundtrip = gguf.quants.dequantize(data, qtype).astype(np.float32)
        # expected in HF row order: undo the permutation with an argsort of the row index
        if stored is not array:
            heads = n_head if "q_proj" in name else n_kv
            order = llama_cpp_permute(np.arange(array.shape[0])[:, None], heads)[:, 0]
            inverse = np.argsort(order)
            roundtrip = roundtrip[inverse]
        expected[name] = roundtrip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def _mixed_qtype(name: str) -> str:
    if name.endswith("norm.weight"):
        return "F32"
    if "mlp.up_proj" in name or "mlp.gate_proj" in name:
        return "Q8_0"
    if "mlp.down_proj" in name:
        return "Q4_1"
    if "o_proj" in name:
        return "F16"
    if "v_proj" in name:
        return "BF16"
    return "F32"


@pytest.fixture(scope="session")
def gguf_file(tmp_path_factory, tiny_state) -> tuple[Path, dict[str, np.ndarray]]:
    """A llama GGUF of the tiny model mixing F32, F16, BF16, Q8_0 and Q4_1 tensors."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_gguf(path, tiny_state, _mixed_qtype)
