"""Sources: modules, state dicts, safetensors (single/sharded), .bin (single/sharded/legacy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spectune.errors import SpectuneError
from spectune.weights import TensorInfo, WeightSource, natural_key, open_source, torchfile
from spectune.weights import sources as sources_mod

from .conftest import make_tiny_llama, write_bin_shards


def _assert_same_tensors(src: WeightSource, state: dict[str, torch.Tensor]) -> None:
    names = src.names()
    assert sorted(names) == sorted(state)
    for name in names:
        got = src.load(name)
        assert got.dtype == state[name].dtype
        assert torch.equal(got, state[name]), name


@pytest.mark.parametrize("fixture", ["hf_single", "hf_sharded", "bin_single", "bin_sharded"])
def test_file_sources_round_trip(request, fixture, tiny_state):
    folder = request.getfixturevalue(fixture)
    with open_source(folder) as src:
        assert src.kind == ("safetensors" if fixture.startswith("hf") else "bin")
        assert src.path == folder
        _assert_same_tensors(src, tiny_state)
        infos = src.tensors()
        assert [i.name for i in infos] == sorted(tiny_state, key=natural_key)
        for info in infos:
            assert info.shape == tuple(tiny_state[info.name].shape)
            assert info.file is not None and Path(info.file).parent == folder
    assert src.closed


def test_same_order_and_infos_for_every_source(
    tiny_model, tiny_state, hf_single, hf_sharded, bin_sharded
):
    """Module, state dict and files list the same tensors with the same types, in one order."""
    sources = [
        open_source(tiny_model),
        open_source(tiny_state),
        open_source(hf_single),
        open_source(hf_sharded),
        open_source(bin_sharded),
    ]
    ref = [(i.name, i.shape, i.dtype, i.module, i.layer_type) for i in sources[0].tensors()]
    for src in sources[1:]:
        assert [(i.name, i.shape, i.dtype, i.module, i.layer_type) for i in src.tensors()] == ref
    types = {i.name: i.layer_type for i in sources[0].tensors()}
    assert types["model.embed_tokens.weight"] == "embedding"
    assert types["model.layers.0.self_attn.q_proj.weight"] == "linear"
    assert types["model.layers.0.input_layernorm.weight"] == "norm"
    assert types["model.norm.weight"] == "norm"
    assert types["lm_head.weight"] == "linear"
    assert ref[0][0] == "lm_head.weight" and ref[1][0] == "model.embed_tokens.weight"
    layer_names = [n for n, *_ in ref if n.startswith("model.layers.")]
    assert layer_names.index("model.layers.0.mlp.down_proj.weight") < layer_names.index(
        "model.layers.1.input_layernorm.weight"
    )
    for src in sources:
        src.close()


def test_tensor_info_fields(hf_single):
    with open_source(hf_single) as src:
        info = src.info("model.layers.1.mlp.down_proj.weight")
    assert info == TensorInfo(
        name="model.layers.1.mlp.down_proj.weight",
        shape=(32, 64),
        dtype="float32",
        file=str(hf_single / "model.safetensors"),
        module="model.layers.1.mlp.down_proj",
        layer_type="linear",
    )
    assert info.ndim == 2 and info.numel == 2048
    assert info.key == "model.layers.1.mlp.down_proj"
    assert info.is_weight


def test_module_source_reads_live_parameters(tiny_model, tiny_state):
    src = open_source(tiny_model)
    assert src.kind == "module" and src.path is None and not src.peft
    _assert_same_tensors(src, tiny_state)
    assert all(i.file is None for i in src.tensors())
    w = src.load("model.layers.0.self_attn.v_proj.weight")
    assert not w.requires_grad
    assert w.data_ptr() == tiny_model.model.layers[0].self_attn.v_proj.weight.data_ptr()


def test_tied_weights_listed_once():
    model = make_tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    src = open_source(model)
    assert "lm_head.weight" not in src.names()
    assert src.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" in src
    assert torch.equal(src.load("lm_head.weight"), model.lm_head.weight)
    state = model.state_dict()
    assert set(open_source(state).aliases) == {"lm_head.weight"}


def test_tied_weights_in_bin_file_listed_once(tmp_path):
    w = torch.randn(6, 4)
    torch.save(
        {"emb.weight": w, "head.weight": w, "other.weight": torch.randn(6, 4)}, tmp_path / "t.bin"
    )
    src = open_source(tmp_path / "t.bin")
    assert src.names() == ["emb.weight", "other.weight"]
    assert src.aliases == {"head.weight": "emb.weight"}
    assert torch.equal(src.load("head.weight"), w)


def test_layer_types_from_modules_keep_conv_shapes():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6)
            self.conv = torch.nn.Conv2d(3, 5, kernel_size=(3, 2))
            self.conv1 = torch.nn.Conv1d(4, 7, kernel_size=5)
            self.ln = torch.nn.LayerNorm(6)
            self.fc = torch.nn.Linear(6, 2)
            self.register_buffer("steps", torch.zeros(3, dtype=torch.long))
            self.register_buffer("scratch", torch.zeros(3), persistent=False)

    net = Net()
    src = open_source(net)
    got = {i.name: (i.layer_type, i.shape) for i in src.tensors()}
    assert got == {
        "emb.weight": ("embedding", (10, 6)),
        "conv.weight": ("conv2d", (5, 3, 3, 2)),
        "conv.bias": ("bias", (5,)),
        "conv1.weight": ("conv1d", (7, 4, 5)),
        "conv1.bias": ("bias", (7,)),
        "ln.weight": ("norm", (6,)),
        "ln.bias": ("bias", (6,)),
        "fc.weight": ("linear", (2, 6)),
        "fc.bias": ("bias", (2,)),
        "steps": ("other", (3,)),
    }
    assert list(got) == sorted(got, key=natural_key)
    # the same from the state dict saved to a file (name/shape rules instead of classes)
    file_types = {i.name: (i.layer_type, i.shape) for i in open_source(net.state_dict()).tensors()}
    file_types["emb.weight"] = ("embedding", (10, 6))  # "emb" is an embedding name: same
    assert file_types == got


def test_state_dict_source_and_nested_checkpoint(tmp_path, tiny_state):
    src = open_source(tiny_state)
    assert src.kind == "state_dict"
    _assert_same_tensors(src, tiny_state)

    ckpt = {"epoch": 3, "state_dict": tiny_state, "optimizer": {"lr": 0.1}}
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    with open_source(path) as from_file:
        assert from_file.kind == "bin" and from_file.path == path
        _assert_same_tensors(from_file, tiny_state)

    nested = {"enc": {"w": torch.ones(2, 3)}, "dec": {"w": torch.zeros(3, 2)}, "note": "x"}
    assert open_source(nested).names() == ["dec.w", "enc.w"]


def test_single_files_by_suffix_and_by_content(tmp_path, tiny_state):
    small = {k: v for k, v in tiny_state.items() if "layers.0" in k}
    save_file(small, str(tmp_path / "w.safetensors"))
    torch.save(small, tmp_path / "w.pth")
    (tmp_path / "w.weights").write_bytes((tmp_path / "w.safetensors").read_bytes())
    (tmp_path / "w.data").write_bytes((tmp_path / "w.pth").read_bytes())
    for name, kind in [
        ("w.safetensors", "safetensors"),
        ("w.pth", "bin"),
        ("w.weights", "safetensors"),
        ("w.data", "bin"),
    ]:
        with open_source(tmp_path / name) as src:
            assert src.kind == kind, name
            _assert_same_tensors(src, small)


def test_bf16_keeps_its_dtype(tmp_path):
    w = torch.randn(8, 4).to(torch.bfloat16)
    save_file({"w": w}, str(tmp_path / "b.safetensors"))
    src = open_source(tmp_path / "b.safetensors")
    assert src.info("w").dtype == "bfloat16"
    got = src.load("w")
    assert got.dtype == torch.bfloat16 and torch.equal(got, w)


def test_sharded_safetensors_opens_only_the_needed_shard(hf_sharded, monkeypatch):
    import safetensors

    calls: list[str] = []
    real = safetensors.safe_open

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", counting)
    index = json.loads((hf_sharded / "model.safetensors.index.json").read_text())["weight_map"]
    with open_source(hf_sharded) as src:
        assert calls == [] and src.opened_files == []  # listing reads headers only
        assert len(src.tensors()) == len(index)
        name = "model.layers.1.mlp.up_proj.weight"
        src.load(name)
        assert calls == [index[name]]
        same_shard = [n for n, s in index.items() if s == index[name] and n != name]
        for n in same_shard:
            src.load(n)
        assert set(calls) == {index[name]} and len(calls) == 1 + len(same_shard)
        other = next(n for n, s in index.items() if s != index[name])
        src.load(other)
        assert calls[-1] == index[other] and set(calls) == {index[name], index[other]}
        assert [p.name for p in src.opened_files] == [index[name], index[other]]
    with pytest.raises(SpectuneError, match="closed"):
        src.load(name)


def test_sharded_bin_maps_only_the_needed_shard(bin_sharded):
    index = json.loads((bin_sharded / "pytorch_model.bin.index.json").read_text())["weight_map"]
    with open_source(bin_sharded) as src:
        assert src.opened_files == []
        name = "model.layers.0.self_attn.k_proj.weight"
        src.load(name)
        assert [p.name for p in src.opened_files] == [index[name]]


def test_bin_mapping_is_dropped_after_the_byte_budget(tmp_path, monkeypatch):
    state = {f"w{i}": torch.full((32, 32), float(i)) for i in range(6)}  # 4 KiB each
    torch.save(state, tmp_path / "six.bin")
    loads: list[bool] = []
    real = torchfile.load_weights_only

    def counting(path, *, map_location="cpu", mmap=False):
        if map_location != "meta":
            loads.append(mmap)
        return real(path, map_location=map_location, mmap=mmap)

    monkeypatch.setattr(torchfile, "load_weights_only", counting)
    monkeypatch.setattr(torchfile, "MAPPED_BYTES_BUDGET", 10 * 1024)  # 2.5 tensors
    with open_source(tmp_path / "six.bin") as src:
        assert loads == []
        for i in range(6):
            assert torch.equal(src.load(f"w{i}"), state[f"w{i}"])
        assert loads == [True, True, True]  # mapped, then re-mapped after every 2 tensors
    monkeypatch.setattr(torchfile, "MAPPED_BYTES_BUDGET", 1024)  # smaller than a tensor
    loads.clear()
    with open_source(tmp_path / "six.bin") as src:
        for i in range(3):
            assert torch.equal(src.load(f"w{i}"), state[f"w{i}"])
        assert loads == [True, True, True]


def test_legacy_bin_is_loaded_fully_one_file_at_a_time(tmp_path, tiny_state):
    folder = tmp_path / "legacy"
    folder.mkdir()
    names = list(tiny_state)
    halves = [names[::2], names[1::2]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        shard = f"pytorch_model-{i:05d}-of-00002.bin"
        torch.save(
            {k: tiny_state[k] for k in part}, folder / shard, _use_new_zipfile_serialization=False
        )
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with open_source(folder) as src:
        _assert_same_tensors(src, tiny_state)
        assert src._current is not None and src._current[0] == src.opened_files[-1]
        assert len(src.opened_files) == 2


def test_open_source_returns_an_open_source_unchanged(tiny_state):
    src = open_source(tiny_state)
    assert open_source(src) is src
    assert open_source(src, peft=True).peft


def test_unknown_name_is_a_clear_error(hf_single):
    with (
        open_source(hf_single) as src,
        pytest.raises(SpectuneError, match="no tensor 'model.layers.0.q_proj.weight'"),
    ):
        src.load("model.layers.0.q_proj.weight")


def test_folder_fallbacks(tmp_path, tiny_state):
    small = {k: v for k, v in tiny_state.items() if "layers.1" in k}
    odd = tmp_path / "odd"
    odd.mkdir()
    save_file(dict(list(small.items())[:4]), str(odd / "part-a.safetensors"))
    save_file(dict(list(small.items())[4:]), str(odd / "part-b.safetensors"))
    with open_source(odd) as src:
        assert src.kind == "safetensors"
        _assert_same_tensors(src, small)
    index_file = write_bin_shards(tmp_path / "idx", small, 2) / "pytorch_model.bin.index.json"
    with open_source(index_file) as src:  # an index file given directly
        _assert_same_tensors(src, small)


def test_find_weight_matches_modules(hf_single):
    with open_source(hf_single) as src:
        info = src.find_weight("model.layers.1.self_attn.o_proj")
        assert info is not None and info.name == "model.layers.1.self_attn.o_proj.weight"
        assert src.find_weight("base_model.model.model.layers.1.self_attn.o_proj") == info
        assert src.find_weight("model.layers.1.input_layernorm") is None  # 1-d: not a weight
        assert src.find_weight("model.layers.7.self_attn.o_proj") is None


def test_bitsandbytes_4bit_module_is_dequantized():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    lin = bnb.nn.Linear4bit(64, 16, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    lin.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")
    lin = lin.to("cpu")  # quantizes
    net = torch.nn.Sequential(lin)
    src = open_source(net)
    (info,) = src.tensors()
    assert info.name == "0.weight" and info.shape == (16, 64) and info.quant == "nf4"
    assert info.layer_type == "linear" and info.dtype == "float32"
    got = src.load("0.weight")
    expected = bnb.functional.dequantize_4bit(lin.weight.data, lin.weight.quant_state)
    assert got.shape == (16, 64) and torch.equal(got, expected)
    # NF4 keeps the matrix to within its 4-bit resolution
    assert (got - w).abs().max() < 0.2 * w.abs().max()


def test_bitsandbytes_8bit_module_is_dequantized():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    lin = bnb.nn.Linear8bitLt(32, 8, bias=False, has_fp16_weights=False)
    lin.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    lin = lin.to("cpu")  # quantizes: int8 rows and their absmax scales (SCB)
    assert lin.weight.dtype == torch.int8
    src = open_source(torch.nn.Sequential(lin))
    info = src.info("0.weight")
    assert info.quant == "int8" and info.dtype == "float32" and info.layer_type == "linear"
    got = src.load("0.weight")
    scale = w.abs().amax(dim=1, keepdim=True)
    # half a step per row, plus the rounding of the scales (stored as float16)
    assert torch.all((got - w).abs() <= scale / 127 * 0.6)
    by_hand = lin.weight.data.float() * lin.weight.SCB[:, None].float() / 127
    torch.testing.assert_close(got, by_hand, rtol=1e-6, atol=0)


def test_sources_module_does_not_import_torch_at_import():
    import subprocess
    import sys

    code = "import sys, spectune.weights; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_repr_mentions_kind_and_count(hf_single):
    with open_source(hf_single) as src:
        text = repr(src)
    assert "safetensors" in text and f"{len(src)} tensors" in text
    assert sources_mod.dtype_name(torch.bfloat16) == "bfloat16"
