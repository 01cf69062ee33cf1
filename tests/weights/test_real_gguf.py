"""Slow: the embedded SmolLM2-135M GGUF against its cached Hugging Face folder."""

from __future__ import annotations

import pytest
import torch

from spectune.weights import open_source

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

#: SmolLM2-135M: 30 layers, hidden 576, q/o 576x576, k/v 192x576, gate/up 1536x576.
SHAPES = {
    "self_attn.q_proj": (576, 576),
    "self_attn.k_proj": (192, 576),
    "self_attn.v_proj": (192, 576),
    "self_attn.o_proj": (576, 576),
    "mlp.gate_proj": (1536, 576),
    "mlp.up_proj": (1536, 576),
    "mlp.down_proj": (576, 1536),
}


@pytest.fixture(scope="module")
def real_sources():
    from spectune.models.loading import default_gguf_path, default_model_dir

    gguf, hf = open_source(default_gguf_path()), open_source(default_model_dir())
    yield gguf, hf
    gguf.close()
    hf.close()


def test_real_gguf_lists_the_model(real_sources):
    gguf, hf = real_sources
    assert gguf.arch == "llama" and len(gguf) == 272 == len(hf)
    quants = {i.quant for i in gguf.tensors()}
    assert quants == {"Q4_1", "Q8_0", "F32"}
    for layer in (0, 29):
        for part, shape in SHAPES.items():
            info = gguf.find_weight(f"model.layers.{layer}.{part}")
            assert info is not None and info.shape == shape and info.layer_type == "linear"
    emb = gguf.info("token_embd.weight")
    assert emb.shape == (49152, 576) and emb.layer_type == "embedding" and emb.quant == "Q8_0"
    # every HF tensor has its GGUF twin under the same key, with the same shape
    twins = {i.key: i.shape for i in gguf.tensors()}
    assert {i.key: i.shape for i in hf.tensors()} == twins


@pytest.mark.parametrize("layer", [0, 14, 29])
def test_real_gguf_matches_hf_folder(real_sources, layer):
    gguf, hf = real_sources
    for part in ("self_attn.v_proj", "mlp.up_proj", "mlp.down_proj", "self_attn.o_proj"):
        name = f"model.layers.{layer}.{part}.weight"
        assert torch.equal(gguf.load(name), hf.load(name)), name
    for proj in ("q", "k"):
        name = f"model.layers.{layer}.self_attn.{proj}_proj.weight"
        raw = gguf.load(f"blk.{layer}.attn_{proj}.weight")  # llama.cpp row order
        ref = hf.load(name)
        assert not torch.equal(raw, ref)  # the rows really are permuted...
        sv_raw = torch.linalg.svdvals(raw.double())
        sv_ref = torch.linalg.svdvals(ref.double())
        torch.testing.assert_close(sv_raw, sv_ref, rtol=1e-10, atol=1e-10)  # ...same spectrum
        assert torch.equal(gguf.load(name), ref)  # and un-permuted by HF name


def test_real_gguf_embedding_and_norms(real_sources):
    gguf, hf = real_sources
    assert torch.equal(gguf.load("model.embed_tokens.weight"), hf.load("model.embed_tokens.weight"))
    assert torch.equal(gguf.load("output_norm.weight"), hf.load("model.norm.weight"))


def test_real_gguf_header_agrees_with_gguf_reader():
    from spectune.models.loading import default_gguf_path

    from .test_gguf import assert_header_matches_reader

    assert_header_matches_reader(default_gguf_path())
