"""Bad input: every failure is a SpectuneError that names the file or tensor."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from spectune.errors import SpectuneError
from spectune.weights import open_source


def test_missing_path(tmp_path):
    with pytest.raises(SpectuneError, match="no such file or folder: .*nowhere"):
        open_source(tmp_path / "nowhere")


def test_unknown_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(SpectuneError, match=r"unknown weights format: .*notes\.txt"):
        open_source(path)


def test_unsupported_object():
    with pytest.raises(SpectuneError, match="cannot read weights from a int"):
        open_source(3)


@pytest.fixture
def small_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a.weight": torch.randn(64, 32), "b.weight": torch.randn(32)}, str(path))
    return path


def test_truncated_safetensors_fails_at_open(small_safetensors, tmp_path):
    data = small_safetensors.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-100])
    with pytest.raises(SpectuneError) as err:
        open_source(cut)
    assert "cut.safetensors" in str(err.value) and "truncated" in str(err.value)


def test_safetensors_with_trailing_garbage(small_safetensors, tmp_path):
    longer = tmp_path / "long.safetensors"
    longer.write_bytes(small_safetensors.read_bytes() + b"\0" * 10)
    with pytest.raises(SpectuneError, match="long.safetensors"):
        open_source(longer)


def test_corrupt_safetensors_header(small_safetensors, tmp_path):
    data = bytearray(small_safetensors.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8:12] = b"!!!!"  # break the JSON
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(SpectuneError, match=r"bad\.safetensors.*header"):
        open_source(bad)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**12) + bytes(data[8:]))
    with pytest.raises(SpectuneError, match=r"huge\.safetensors.*does not fit"):
        open_source(huge)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01\x02")
    with pytest.raises(SpectuneError, match=r"tiny\.safetensors.*too short"):
        open_source(tiny)


def test_corrupt_shard_in_a_sharded_folder(hf_sharded, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(hf_sharded, folder)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(SpectuneError, match=shard.name):
        open_source(folder)


def test_missing_shard(hf_sharded, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(hf_sharded, folder)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(SpectuneError, match=f"lists the shard {shard.name}, which is missing"):
        open_source(folder)


def test_index_that_does_not_match_shards(hf_sharded, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(hf_sharded, folder)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"]["model.ghost.weight"] = data["weight_map"][first]
    index.write_text(json.dumps(data))
    with pytest.raises(SpectuneError, match="'model.ghost.weight'.*in no shard"):
        open_source(folder)
    index.write_text("{}")
    with pytest.raises(SpectuneError, match="cannot read the shard index"):
        open_source(folder)


def test_bin_that_is_not_weights_only(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module, not a state dict
    with pytest.raises(SpectuneError) as err:
        open_source(path)
    msg = str(err.value)
    assert str(path) in msg and "weights_only" in msg and "state_dict" in msg


def test_bin_holding_a_tensor_not_a_dict(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(SpectuneError, match=r"t\.pt holds a Tensor, not a dict of tensors"):
        open_source(path)


def test_corrupt_and_truncated_bin(tmp_path, tiny_state):
    good = tmp_path / "good.bin"
    torch.save(tiny_state, good)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SpectuneError, match=r"cut\.bin"):
        open_source(cut)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(SpectuneError, match=r"junk\.bin"):
        open_source(junk)


def test_no_tensors_anywhere(tmp_path):
    with pytest.raises(SpectuneError, match="state dict is empty"):
        open_source({})
    empty_st = tmp_path / "empty.safetensors"
    save_file({}, str(empty_st))
    with pytest.raises(SpectuneError, match=r"empty\.safetensors holds no tensors"):
        open_source(empty_st)
    no_tensor_bin = tmp_path / "meta.bin"
    torch.save({"epoch": 3, "lr": 0.1}, no_tensor_bin)
    with pytest.raises(SpectuneError, match=r"meta\.bin holds no tensors"):
        open_source(no_tensor_bin)
    with pytest.raises(SpectuneError, match="holds no tensors"):
        open_source({"epoch": 3})
    with pytest.raises(SpectuneError, match="holds no tensors"):
        open_source(torch.nn.ReLU())
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(SpectuneError, match=r"no weights found in the folder .*config\.json"):
        open_source(folder)


def test_non_string_keys():
    with pytest.raises(SpectuneError, match="keys must be strings"):
        open_source({1: torch.ones(2)})


def test_gguf_without_tensors(tmp_path):
    import gguf

    path = tmp_path / "empty.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SpectuneError, match=r"empty\.gguf holds no tensors"):
        open_source(path)


def test_every_error_is_one_line(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(SpectuneError) as err:
        open_source(path)
    assert "\n" not in str(err.value)


class _RunsCode:
    """Unpickling this would call os.system: the classic malicious pickle."""

    def __reduce__(self):
        import os

        return (os.system, ("echo executed > spectune-pwned.txt",))


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 4", "pickle protocol 2"])
def test_bin_with_code_says_weights_only_refuses_it_not_truncated(tmp_path, monkeypatch, how):
    import pickle

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pytorch_model.bin"
    payload = {"w": torch.ones(2, 2), "evil": _RunsCode()}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps({"evil": _RunsCode()}, protocol=int(how[-1])))
    with pytest.raises(SpectuneError) as err:
        open_source(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated" not in msg
    assert "system" in msg and "weights_only=True) refuses" in msg
    assert not (tmp_path / "spectune-pwned.txt").exists()
