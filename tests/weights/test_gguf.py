"""GGUF files written with gguf.GGUFWriter: shapes, dequantization, names, q/k layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectune.errors import SpectuneError
from spectune.weights import open_source
from spectune.weights.gguf import unpermute_qk

from .conftest import TINY, hf_to_gguf, llama_cpp_permute, write_gguf


def test_lists_tensors_in_torch_order_with_hf_names(gguf_file, tiny_state):
    path, _ = gguf_file
    with open_source(path) as src:
        assert src.kind == "gguf" and src.path == path and src.arch == "llama"
        assert src.metadata["llama.attention.head_count"] == TINY["num_attention_heads"]
        infos = {i.name: i for i in src.tensors()}
        assert set(infos) == {hf_to_gguf(n) for n in tiny_state}
        for hf, tensor in tiny_state.items():
            info = infos[hf_to_gguf(hf)]
            assert info.shape == tuple(tensor.shape)  # GGUF stores dims reversed
            assert info.hf_name == hf
            assert info.key == hf.removesuffix(".weight")
        assert infos["token_embd.weight"].layer_type == "embedding"
        assert infos["output.weight"].layer_type == "linear"
        assert infos["blk.0.ffn_down.weight"].layer_type == "linear"
        assert infos["blk.0.attn_norm.weight"].layer_type == "norm"
        assert infos["blk.1.ffn_up.weight"].quant == "Q8_0"
        assert infos["blk.1.ffn_up.weight"].dtype == "float32"
        assert infos["blk.0.attn_output.weight"].dtype == "float16"
        assert infos["blk.0.attn_v.weight"].dtype == "bfloat16"
        names = [i.name for i in src.tensors()]
        assert names.index("blk.1.attn_k.weight") < names.index("blk.1.ffn_up.weight")
        assert names.index("blk.0.ffn_up.weight") < names.index("blk.1.attn_k.weight")


def test_loads_equal_originals_within_quantization(gguf_file, tiny_state):
    path, expected = gguf_file
    with open_source(path) as src:
        for hf, original in tiny_state.items():
            info = src.info(hf)  # by HF name
            got = src.load(hf)
            assert tuple(got.shape) == info.shape and str(got.dtype) == f"torch.{info.dtype}"
            # the exact values the file holds (gguf's own quantize -> dequantize round trip)
            np.testing.assert_array_equal(got.float().numpy(), expected[hf], err_msg=hf)
            scale = original.abs().max().item()
            err = (got.float() - original).abs().max().item()
            if info.quant == "F32":
                assert err == 0.0, hf
            elif info.quant in ("F16", "BF16"):
                assert err <= scale * 2**-7, hf
            elif info.quant == "Q8_0":
                # step d = block absmax / 127 (stored as f16): rounding error <= d / 2 + slack
                assert 0 < err <= 0.6 * scale / 127, hf
            elif info.quant == "Q4_1":
                # step d = (block max - min) / 15 <= 2 * scale / 15; offset stored as f16
                assert 0 < err <= 0.6 * 2 * scale / 15 + scale * 2**-10, hf
            else:  # pragma: no cover
                raise AssertionError(info.quant)


def test_qk_by_gguf_name_are_permuted_rows(gguf_file, tiny_state):
    path, _ = gguf_file
    with open_source(path) as src:
        for i in range(TINY["num_hidden_layers"]):
            for proj, heads in (
                ("q", TINY["num_attention_heads"]),
                ("k", TINY["num_key_value_heads"]),
            ):
                hf = f"model.layers.{i}.self_attn.{proj}_proj.weight"
                raw = src.load(f"blk.{i}.attn_{proj}.weight")
                original = tiny_state[hf].numpy()
                np.testing.assert_array_equal(raw.numpy(), llama_cpp_permute(original, heads))
                assert torch.equal(src.load(hf), tiny_state[hf])  # by HF name: HF rows
                sv_raw = torch.linalg.svdvals(raw.double())
                sv_hf = torch.linalg.svdvals(tiny_state[hf].double())
                torch.testing.assert_close(sv_raw, sv_hf, rtol=1e-12, atol=1e-12)


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    for heads, head_dim in ((1, 2), (3, 4), (9, 64)):
        w = rng.standard_normal((heads * head_dim, 5)).astype(np.float32)
        back = unpermute_qk(torch.from_numpy(llama_cpp_permute(w, heads)), heads)
        assert torch.equal(back, torch.from_numpy(w))
    # hand example: one head of dim 4, rows (x0, x1, y0, y1) stored as (x0, y0, x1, y1)
    stored = torch.tensor([[0.0], [2.0], [1.0], [3.0]])
    assert unpermute_qk(stored, 1).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(SpectuneError, match="cannot un-permute"):
        unpermute_qk(torch.zeros(6, 2), 4)


def test_gguf_matches_hf_base_by_module(gguf_file, hf_single):
    path, _ = gguf_file
    with open_source(path) as gg, open_source(hf_single) as hf:
        for info in hf.tensors():
            if not info.is_weight:
                continue
            twin = gg.find_weight(info.key)
            assert twin is not None and twin.hf_name == info.name
            assert twin.shape == info.shape


def test_unpermuted_only_for_llama_arch(tmp_path, tiny_state):
    import gguf

    small = {k: v for k, v in tiny_state.items() if "layers.0.self_attn" in k}
    path = tmp_path / "q.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_head_count(4)
    for name, t in small.items():
        writer.add_tensor(hf_to_gguf(name), t.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open_source(path) as src:
        assert src.arch == "qwen2"
        q = "model.layers.0.self_attn.q_proj.weight"
        assert torch.equal(src.load(q), small[q])  # qwen2 GGUFs are not permuted


def test_unknown_arch_has_no_hf_names(tmp_path):
    import gguf

    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("blk.0.attn_qkv.weight", np.ones((6, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open_source(path) as src:
        (info,) = src.tensors()
        assert info.hf_name is None and info.key == "blk.0.attn_qkv"
        assert torch.equal(src.load(info.name), torch.ones(6, 4))


def test_loaded_tensor_outlives_close(gguf_file, tiny_state):
    path, _ = gguf_file
    src = open_source(path)
    w = src.load("model.norm.weight")
    src.close()
    w.add_(1.0)  # writable, own memory
    assert torch.equal(w, tiny_state["model.norm.weight"] + 1.0)
    with pytest.raises(SpectuneError, match="closed"):
        src.load("model.norm.weight")


def test_truncated_and_corrupt_gguf(gguf_file, tmp_path):
    path, _ = gguf_file
    data = path.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(SpectuneError) as err:
        open_source(truncated)
    assert str(truncated) in str(err.value) and "truncated" in str(err.value)

    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:200])
    with pytest.raises(SpectuneError, match="header.gguf"):
        open_source(header_only)

    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"NOTGGUF" + bytes(100))
    with pytest.raises(SpectuneError, match="not a GGUF file"):
        open_source(garbage)


def test_q4_1_only_file(tmp_path, tiny_state):
    matrices = {k: v for k, v in tiny_state.items() if k.endswith("proj.weight")}
    path = tmp_path / "q4.gguf"
    expected = write_gguf(path, matrices, lambda name: "Q4_1")
    with open_source(path) as src:
        for name in matrices:
            np.testing.assert_array_equal(src.load(name).numpy(), expected[name])


def reader_table(path):
    """The reference: gguf.GGUFReader's view of a file (name -> type, torch shape, offset, bytes)."""
    import gguf

    reader = gguf.GGUFReader(path)
    table = {
        t.name: (
            t.tensor_type,
            tuple(reversed(t.shape.tolist())),
            int(t.data_offset),
            int(t.n_bytes),
            t.data.shape,
        )
        for t in reader.tensors
    }
    scalars = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or (field.types and field.types[0] == gguf.GGUFValueType.ARRAY):
            continue
        scalars[key] = field.contents()
    return table, scalars


def assert_header_matches_reader(path):
    from spectune.weights.gguf import read_gguf_header

    metadata, tensors = read_gguf_header(path)
    table, scalars = reader_table(path)
    assert [t.name for t in tensors] == list(table)
    for t in tensors:
        qtype, shape, offset, n_bytes, raw_shape = table[t.name]
        assert (t.qtype, t.shape, t.offset, t.n_bytes, t.raw_shape) == (
            qtype,
            shape,
            offset,
            n_bytes,
            raw_shape,
        )
    for key, value in scalars.items():
        assert (
            metadata[key] == pytest.approx(value)
            if isinstance(value, float)
            else metadata[key] == value
        ), key


def test_header_parser_agrees_with_gguf_reader(gguf_file, tmp_path, tiny_state):
    path, _ = gguf_file
    assert_header_matches_reader(path)
    # another alignment and a short array field
    import gguf

    other = tmp_path / "aligned.gguf"
    writer = gguf.GGUFWriter(str(other), "llama")
    writer.add_custom_alignment(64)
    writer.add_array("test.short", [1, 2, 3])
    writer.add_array("test.long", list(range(1000)))
    writer.add_array("test.words", [f"w{i}" for i in range(100)])
    for name in list(tiny_state)[:5]:
        writer.add_tensor(name.replace("model.", "x."), tiny_state[name].numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_header_matches_reader(other)
    with open_source(other) as src:
        assert src.metadata["test.short"] == [1, 2, 3]
        assert "test.long" not in src.metadata and "test.words" not in src.metadata
        for name in list(tiny_state)[:5]:
            assert torch.equal(src.load(name.replace("model.", "x.")), tiny_state[name])


def test_header_version_and_byte_order_errors(gguf_file, tmp_path):
    path, _ = gguf_file
    data = bytearray(path.read_bytes())
    v9 = tmp_path / "v9.gguf"
    v9.write_bytes(bytes(data[:4]) + (9).to_bytes(4, "little") + bytes(data[8:]))
    with pytest.raises(SpectuneError, match="GGUF version 9"):
        open_source(v9)
    big = tmp_path / "big.gguf"
    big.write_bytes(bytes(data[:4]) + (3).to_bytes(4, "big") + bytes(data[8:]))
    with pytest.raises(SpectuneError, match="big-endian"):
        open_source(big)
