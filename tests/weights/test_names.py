"""Name handling: natural order, module normalization, LoRA name parsing, layer types, GGUF."""

from __future__ import annotations

import pytest

from spectune.weights import gguf_to_hf_name, natural_key, normalize_module_name, pattern_key
from spectune.weights.names import gguf_qk_role, infer_layer_type, parse_lora_name


def test_natural_key_orders_numbers_by_value():
    names = ["layers.10.w", "layers.2.w", "layers.1.w", "embed", "layers.2.a", "norm"]
    assert sorted(names, key=natural_key) == [
        "embed",
        "layers.1.w",
        "layers.2.a",
        "layers.2.w",
        "layers.10.w",
        "norm",
    ]
    # a name starting with a digit compares with names that do not
    assert sorted(["a1", "1a", "b"], key=natural_key) == ["1a", "a1", "b"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj"),
        ("model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.q_proj"),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "model.layers.0.self_attn.q_proj",
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight",
            "model.layers.0.self_attn.q_proj",
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
            "model.layers.0.self_attn.q_proj",
        ),
        (
            "base_model.model.model.embed_tokens.lora_embedding_A.default",
            "model.embed_tokens",
        ),
        ("base_model.model.model.embed_tokens.lora_embedding_B", "model.embed_tokens"),
        (
            "base_model.model.model.layers.1.mlp.up_proj.lora_magnitude_vector.default.weight",
            "model.layers.1.mlp.up_proj",
        ),
        ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head"),
        ("base_model.model.lm_head.original_module.weight", "lm_head"),
        ("_orig_mod.model.norm.weight", "model.norm"),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_dropout.default",
            "model.layers.0.self_attn.q_proj",
        ),
        ("weight", ""),
    ],
)
def test_normalize_module_name(name, expected):
    assert normalize_module_name(name) == expected


def test_normalize_strips_named_adapter_only_when_asked():
    name = "base_model.model.lm_head.modules_to_save.mine.weight"
    assert normalize_module_name(name) == "lm_head"
    assert normalize_module_name("x.q_proj.mine", adapter_names=["mine"]) == "x.q_proj"
    assert normalize_module_name("x.q_proj.mine") == "x.q_proj.mine"


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("m.q.lora_A.weight", ("m.q", "A", "lora_A", None)),
        ("m.q.lora_B.default.weight", ("m.q", "B", "lora_B", "default")),
        ("m.e.lora_embedding_A", ("m.e", "A", "lora_embedding_A", None)),
        ("m.e.lora_embedding_B.second", ("m.e", "B", "lora_embedding_B", "second")),
        ("m.q.lora_magnitude_vector", ("m.q", "magnitude", "lora_magnitude_vector", None)),
        (
            "m.q.lora_magnitude_vector.default.weight",
            ("m.q", "magnitude", "lora_magnitude_vector", "default"),
        ),
        ("m.q.lora_B.bias", None),
        ("m.q.lora_B.default.bias", None),
        ("m.q.weight", None),
        ("lora_A.weight", None),
    ],
)
def test_parse_lora_name(name, parsed):
    result = parse_lora_name(name)
    assert (tuple(result) if result else None) == parsed


@pytest.mark.parametrize(
    "name, shape, dtype, lora, expected",
    [
        ("model.embed_tokens.weight", (100, 8), "float32", None, "embedding"),
        ("transformer.wte.weight", (100, 8), "float16", None, "embedding"),
        ("token_embd.weight", (100, 8), "float32", None, "embedding"),
        ("bert.embeddings.word_embeddings.weight", (100, 8), "float32", None, "embedding"),
        ("gpt_neox.embed_out.weight", (100, 8), "float32", None, "linear"),
        ("lm_head.weight", (100, 8), "bfloat16", None, "linear"),
        ("m.q_proj.weight", (8, 8), "float32", None, "linear"),
        ("m.e.lora_embedding_A", (4, 100), "float32", "A", "linear"),
        ("m.q.lora_magnitude_vector", (8,), "float32", "magnitude", "other"),
        ("m.norm.weight", (8,), "float32", None, "norm"),
        ("m.q_proj.bias", (8,), "float32", None, "bias"),
        ("conv.weight", (8, 3, 3, 3), "float32", None, "conv2d"),
        ("conv1.weight", (8, 3, 5), "float32", None, "conv1d"),
        ("conv3.weight", (8, 3, 3, 3, 3), "float32", None, "other"),
        ("position_ids", (1, 64), "int64", None, "other"),
        ("scalar", (), "float32", None, "other"),
    ],
)
def test_infer_layer_type(name, shape, dtype, lora, expected):
    assert infer_layer_type(name, shape, dtype, lora) == expected


@pytest.mark.parametrize(
    "name, hf",
    [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
        ("blk.11.attn_k.weight", "model.layers.11.self_attn.k_proj.weight"),
        ("blk.3.attn_v.bias", "model.layers.3.self_attn.v_proj.bias"),
        ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"),
        ("blk.3.attn_norm.weight", "model.layers.3.input_layernorm.weight"),
        ("blk.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"),
        ("blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight"),
        ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"),
        ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"),
        ("rope_freqs.weight", None),
        ("blk.3.something_new.weight", None),
    ],
)
def test_gguf_to_hf_name(name, hf):
    assert gguf_to_hf_name(name, "llama") == hf


def test_gguf_names_only_for_llama_like_archs():
    assert (
        gguf_to_hf_name("blk.0.attn_q.weight", "qwen2") == "model.layers.0.self_attn.q_proj.weight"
    )
    assert gguf_to_hf_name("blk.0.attn_q.weight", "gpt2") is None
    assert gguf_qk_role("blk.0.attn_q.weight") == "q"
    assert gguf_qk_role("blk.0.attn_k.weight") == "k"
    assert gguf_qk_role("blk.0.attn_k.bias") is None
    assert gguf_qk_role("blk.0.attn_v.weight") is None


PATTERN_CASES = [
    ({"q_proj": 1}, "model.layers.0.self_attn.q_proj"),
    ({"q_proj": 1}, "model.layers.0.self_attn.k_proj"),
    ({"layers.1.self_attn.q_proj": 1, "q_proj": 2}, "model.layers.1.self_attn.q_proj"),
    ({"layers.1.self_attn.q_proj": 1, "q_proj": 2}, "model.layers.11.self_attn.q_proj"),
    ({"q_proj": 2, "layers.1.self_attn.q_proj": 1}, "model.layers.1.self_attn.q_proj"),
    ({r"layers\.0\.mlp\..*_proj": 1}, "model.layers.0.mlp.up_proj"),
    ({r"layers\.0\.mlp\..*_proj": 1}, "model.layers.10.mlp.up_proj"),
    ({"proj": 1}, "model.layers.0.self_attn.q_proj"),  # must match a whole dotted suffix
    ({"^model.layers.0.self_attn.q_proj": 1}, "model.layers.0.self_attn.q_proj"),
    ({}, "model.layers.0.self_attn.q_proj"),
]


@pytest.mark.parametrize("patterns, module", PATTERN_CASES)
def test_pattern_key_agrees_with_peft(patterns, module):
    from peft.utils.other import get_pattern_key

    ours = pattern_key(patterns, module)
    theirs = get_pattern_key(patterns.keys(), module)
    # peft returns the module name itself when nothing matches
    assert (ours if ours is not None else module) == theirs


def test_pattern_key_hand_checked():
    assert pattern_key({"q_proj": 1}, "a.q_proj") == "q_proj"
    assert pattern_key({"proj": 1}, "a.q_proj") is None
    assert pattern_key({"1.q_proj": 1, "q_proj": 2}, "a.11.q_proj") == "q_proj"
    assert pattern_key({"1.q_proj": 1, "q_proj": 2}, "a.1.q_proj") == "1.q_proj"
