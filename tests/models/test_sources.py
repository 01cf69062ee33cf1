"""Where a model comes from: hub ids through a Hugging Face cache laid out as huggingface_hub lays
it out (offline), GGUF files dequantized into spectune's cache keyed on their hash, and the one
line each bad source gets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spectune.cli.main import main
from spectune.errors import SpectuneError
from spectune.models import loading, sources
from spectune.models.sources import HubSnapshot, hub_snapshot, parse_hub_id, snapshot_of
from spectune.tuning import pins
from spectune.tuning.config import TuneConfig, yaml_dump
from spectune.tuning.objectives import get_objective
from tests.conftest import tiny_run_config

REPO = "spectune-test/tiny-llama"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def lay_out_hub_cache(cache: Path, repo: str, folder: Path, commit: str) -> Path:
    """Put the files of ``folder`` into a Hugging Face hub cache as ``huggingface_hub``
    stores a download: each file once in ``blobs/`` under its etag (the SHA-256 of an LFS
    file, the git blob SHA-1 of any other), ``snapshots/<commit>/<file>`` a relative symbolic
    link to it, ``refs/main`` the commit. Returns the snapshot folder."""
    from huggingface_hub.file_download import repo_folder_name

    storage = cache / repo_folder_name(repo_id=repo, repo_type="model")
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".safetensors":  # stored with git LFS: its etag is the SHA-256
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (storage / "blobs" / etag).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", etag), snapshot / path.name)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path, str]:
    """A hub cache holding the tiny Llama (with SmolLM2's tokenizer) as ``REPO``, checked with
    huggingface_hub's own cache reader."""
    from huggingface_hub import scan_cache_dir

    cache = tmp_path_factory.mktemp("hf-hub")
    commit = hashlib.sha1(b"spectune tiny llama").hexdigest()
    snapshot = lay_out_hub_cache(cache, REPO, tiny_model_dir, commit)
    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings  # the hub's reader finds nothing corrupt
    (repo,) = info.repos
    assert repo.repo_id == REPO and repo.repo_type == "model"
    (rev,) = repo.revisions
    assert rev.commit_hash == commit and rev.refs == frozenset({"main"})
    assert sorted(f.file_name for f in rev.files) == sorted(
        p.name for p in tiny_model_dir.iterdir()
    )
    return cache, snapshot, commit


@pytest.fixture
def hub_cache(hub_root, monkeypatch):
    """The hub cache in effect, offline: the environment a new process reads, and the
    constants huggingface_hub (already imported here) read at import."""
    import huggingface_hub.constants as hf

    cache = hub_root[0]
    monkeypatch.setattr(sources, "_RESOLVED", {})  # each test asks the hub afresh
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    return hub_root


# --------------------------------------------------------------------------- hub ids


def test_hub_ids_are_told_from_paths():
    assert parse_hub_id("HuggingFaceTB/SmolLM2-360M-Instruct") == (
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        None,
    )
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    for path in ("/abs/path", "a/b/c", "name", "org/..", "a b/c", "org/name@"):
        assert parse_hub_id(path) is None, path


def test_a_cached_hub_id_resolves_offline_and_loads_the_same_model(hub_cache, tiny_model_dir):
    cache, snapshot, commit = hub_cache
    assert loading.resolve_model_dir(REPO) == snapshot
    assert loading.resolve_model_dir(f"{REPO}@main") == snapshot
    assert loading.resolve_model_dir(f"{REPO}@{commit}") == snapshot
    assert snapshot_of(snapshot) == HubSnapshot(REPO, commit, snapshot)
    assert hub_snapshot(f"{REPO}@main") == HubSnapshot(REPO, commit, snapshot, "main")
    model, tokenizer = loading.load_default_model(REPO)
    reference, _ = loading.load_default_model(tiny_model_dir)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert loading.check_model(snapshot).get_vocab() == tokenizer.get_vocab()
    assert main(["memory", REPO, "--json"]) == 0  # the verbs that take --model / MODEL too


def test_the_hub_environment_is_honoured_in_a_new_process(hub_cache):
    """HF_HUB_CACHE and HF_HUB_OFFLINE as a user sets them, read by huggingface_hub itself."""
    cache, snapshot, _ = hub_cache
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "spectune.cli.main", "model", REPO],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(snapshot)
    env.pop("HF_HUB_CACHE")
    env["HF_HOME"] = str(cache.parent / "no-hf-home")
    done = subprocess.run(
        [sys.executable, "-m", "spectune.cli.main", "model", REPO],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert (
        f"{REPO}: not a local path, and the hub model is not in the Hugging Face cache ({cache.parent}/no-hf-home/hub)"
        in (done.stderr)
    )


def test_an_uncached_hub_id_offline_is_one_line_naming_it_and_how_to_fetch_it(hub_cache, capsys):
    with pytest.raises(SpectuneError) as err:
        loading.resolve_model_dir("spectune-test/absent@v2")
    message = str(err.value)
    assert (
        "model spectune-test/absent@v2: not a local path, and the hub model is not in the Hugging Face cache"
        in message
    )
    assert "HF_HUB_OFFLINE is set" in message and str(hub_cache[0]) in message
    assert "`hf download spectune-test/absent --revision v2`" in message
    assert "HF_HUB_CACHE" in message and "\n" not in message
    for argv in (["memory", "spectune-test/absent"], ["watch", "spectune-test/absent"]):
        assert main(argv) == 2
        err_text = capsys.readouterr().err
        assert err_text.count("\n") == 1 and "`hf download spectune-test/absent`" in err_text


def test_an_unreachable_hub_falls_back_to_the_cache(hub_cache, monkeypatch):
    """Online, but the hub's address refuses connections: a cached id resolves from the cache,
    an uncached one says the hub cannot be reached."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    assert loading.resolve_model_dir(REPO) == hub_cache[1]
    with pytest.raises(
        SpectuneError, match=r"org-x/absent: not a local path, .* the hub cannot be reached"
    ):
        loading.resolve_model_dir("org-x/absent")
    asked: list[str] = []
    monkeypatch.setattr(
        "huggingface_hub.snapshot_download", lambda repo, **kw: asked.append(repo) or ""
    )
    assert loading.resolve_model_dir(REPO) == hub_cache[1] and asked == []  # asked once only


def test_a_local_folder_wins_over_a_hub_id_of_the_same_spelling(
    hub_cache, tiny_model_dir, tmp_path, monkeypatch
):
    local = tmp_path / REPO
    shutil.copytree(tiny_model_dir, local)
    monkeypatch.chdir(tmp_path)
    assert loading.resolve_model_dir(REPO) == Path(REPO)


def test_sources_that_are_none_of_the_forms_are_named(tmp_path, hub_cache):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(SpectuneError, match=r"notes\.txt: is a file but not a GGUF model"):
        loading.resolve_model_dir(text)
    with pytest.raises(SpectuneError, match=r"x\.gguf: does not exist"):
        loading.resolve_model_dir(tmp_path / "x.gguf")
    for given in ("./nope", "a b", str(tmp_path / "nope")):
        with pytest.raises(SpectuneError, match=r"is neither 'default' nor an existing folder"):
            loading.resolve_model_dir(given)
    with pytest.raises(SpectuneError, match=r"distill.teacher 'a b' is neither"):
        loading.resolve_model_dir("a b", "distill.teacher")


def test_a_gguf_only_hub_repository_says_to_give_one_of_its_files(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    files = tmp_path / "files"
    files.mkdir()
    write_gguf(files / "toy-Q4_0.gguf", "llama")
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "org/toy-GGUF", files, "1" * 40)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(sources, "_RESOLVED", {})
    with pytest.raises(SpectuneError, match=r"holds no config\.json .*`hf download org/toy-GGUF"):
        loading.resolve_model_dir("org/toy-GGUF@main")


def test_a_hub_id_is_pinned_by_its_commit(hub_cache, tiny_model_dir, tmp_path):
    cache, snapshot, commit = hub_cache
    config = TuneConfig.from_dict({**tiny_run_config(tiny_model_dir), "model": REPO})
    record = pins.pin(config, get_objective("sft"), loading.resolve_model_dir(REPO))
    model = record["inputs"]["model"]
    assert model == {
        "given": REPO,
        "path": str(snapshot.resolve()),
        "fingerprint": {"kind": "hub", "repo": REPO, "commit": commit},
    }
    assert pins.pinned_config(config, record).model == str(snapshot.resolve())
    pins.check_unchanged(tmp_path, record)
    model["path"] = str(snapshot.parent / ("0" * 40))  # a snapshot the cache no longer holds
    with pytest.raises(SpectuneError, match=rf"fetch it again \(`hf download {REPO} --revision"):
        pins.check_unchanged(tmp_path, record)


def test_a_hub_teacher_resolves_and_is_pinned(hub_cache, tiny_model_dir):
    from spectune.tuning.objectives.distill.section import DistillSection
    from spectune.tuning.objectives.distill.teacher import resolve_teacher

    cache, snapshot, commit = hub_cache
    source = resolve_teacher(DistillSection(teacher=REPO), tiny_model_dir)
    assert source.kind == "model" and source.path == snapshot
    assert source.describe() == f"model {REPO} ({snapshot})"
    config = TuneConfig.from_dict(
        tiny_run_config(tiny_model_dir, objective="distill", distill={"teacher": REPO})
    )
    record = pins.pin(config, get_objective("distill"), tiny_model_dir)
    assert record["inputs"]["distill.teacher"]["fingerprint"] == {
        "kind": "hub",
        "repo": REPO,
        "commit": commit,
    }
    with pytest.raises(SpectuneError, match=r"distill.teacher spectune-test/absent: not a local"):
        resolve_teacher(DistillSection(teacher="spectune-test/absent"), tiny_model_dir)


def test_watch_reads_a_hub_id(hub_cache, tiny_model_dir, tmp_path, capsys):
    out_hub, out_dir = tmp_path / "hub", tmp_path / "dir"
    assert main(["watch", REPO, "--out", str(out_hub), "--no-progress"]) == 0
    assert main(["watch", str(tiny_model_dir), "--out", str(out_dir), "--no-progress"]) == 0
    hub = json.loads((out_hub / "details.json").read_text())
    local = json.loads((out_dir / "details.json").read_text())
    assert len(hub) == len(local) == 15  # the embedding and 2 blocks x 7 linear layers
    assert [r["alpha"] for r in hub] == [r["alpha"] for r in local]


def test_tune_on_a_hub_id_end_to_end(hub_cache, tiny_model_dir, tmp_path, capsys):
    cache, snapshot, commit = hub_cache
    data = tiny_run_config(tiny_model_dir)
    data["model"] = REPO
    data["train"]["max_steps"] = 2
    data["eval"]["latency_prompts"] = 0
    config = tmp_path / "hub.yaml"
    config.write_text(yaml_dump(data))
    out = tmp_path / "run"
    assert main(["tune", str(config), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == REPO and metrics["training"]["global_step"] == 2
    pinned = json.loads((out / pins.PINS).read_text())["inputs"]["model"]
    assert pinned["fingerprint"] == {"kind": "hub", "repo": REPO, "commit": commit}
    # the adapter's base is the hub model: peft reads it back onto the snapshot's weights
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(snapshot)
    tuned = PeftModel.from_pretrained(base, out / "adapter")
    assert sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n) > 0
    assert main(["tune", str(config), "--out", str(out), "--resume", "--no-progress"]) == 0


# --------------------------------------------------------------------------- GGUF files


def write_gguf(path: Path, arch: str) -> Path:
    """A small GGUF file of architecture ``arch`` (one float32 tensor), written by gguf's own
    writer."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("toy")
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "spectune-cache"
    monkeypatch.setenv("SPECTUNE_CACHE", str(cache))
    return cache


def test_a_gguf_of_an_unknown_architecture_names_it_and_the_supported_ones(
    tmp_path, own_cache, capsys
):
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = write_gguf(tmp_path / "toy.gguf", "rwkv6")
    with pytest.raises(SpectuneError) as err:
        loading.resolve_model_dir(path)
    message = str(err.value)
    assert message.startswith(f"GGUF file {path} holds a 'rwkv6' model, an architecture")
    listed = message.split("it reads GGUF files of: ")[1].split(", ")
    assert listed == sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
    assert "llama" in listed and "qwen3" in listed and "gemma3" in listed
    assert [p.name for p in (own_cache / "models").iterdir()] == [".build.lock"]  # nothing built
    assert main(["memory", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_corrupt_gguf_is_one_line(tmp_path, own_cache):
    good = write_gguf(tmp_path / "good.gguf", "llama").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[:-20])
    with pytest.raises(SpectuneError, match=r"cut\.gguf is not a readable GGUF file: .*truncated"):
        loading.resolve_model_dir(cut)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all, " * 4)
    with pytest.raises(SpectuneError, match=r"junk\.gguf is not a readable GGUF file: .*magic"):
        loading.resolve_model_dir(junk)
    magic = tmp_path / "model.bin"  # no .gguf suffix, but the GGUF magic: read as a GGUF
    magic.write_bytes(good[:-20])
    with pytest.raises(SpectuneError, match=r"model\.bin is not a readable GGUF file"):
        loading.resolve_model_dir(magic)


def test_the_gguf_cache_is_keyed_on_the_files_hash_and_reused(tmp_path, own_cache, monkeypatch):
    """A fake build (milliseconds) stands in for the dequantization: the first resolve builds,
    the second reuses, a changed file builds another folder; the hash is remembered."""
    path = write_gguf(tmp_path / "toy.gguf", "llama")
    builds: list[tuple[Path, str]] = []

    def fake_build(gguf: Path, out: Path, name: str) -> None:
        builds.append((gguf, name))
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        files = {"config.json": (out / "config.json").stat().st_size}
        loading.write_json(out / loading.MANIFEST, {"format": loading.CACHE_FORMAT, "files": files})

    monkeypatch.setattr(loading, "_build_from_gguf", fake_build)
    first = loading.resolve_model_dir(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert first == own_cache / "models" / f"toy-{sha[:12]}"
    assert loading.resolve_model_dir(path) == first and builds == [(path, "toy")]
    memo = json.loads((own_cache / loading.GGUF_HASHES).read_text())
    assert memo[str(path.resolve())]["sha256"] == sha
    with open(path, "ab") as fh:  # the same file, changed
        fh.write(b"\0" * 32)
    second = loading.resolve_model_dir(path)
    assert second != first and second.name == (
        f"toy-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    )
    assert len(builds) == 2 and first.is_dir()  # the old folder is another file's


def test_a_gguf_model_is_pinned_by_its_file(tmp_path, own_cache, tiny_model_dir):
    path = write_gguf(tmp_path / "toy.gguf", "llama")
    config = TuneConfig.from_dict({**tiny_run_config(tiny_model_dir), "model": str(path)})
    record = pins.pin(config, get_objective("sft"), tiny_model_dir)
    model = record["inputs"]["model"]
    assert model["path"] == str(path.resolve())
    assert model["fingerprint"] == {
        "kind": "gguf",
        "size": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    pins.check_unchanged(tmp_path, record)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, other content
    path.write_bytes(bytes(data))
    with pytest.raises(SpectuneError, match=r"model .*toy\.gguf changed .*its content changed"):
        pins.check_unchanged(tmp_path, record)


def test_tune_on_a_gguf_file_pins_the_file_and_resumes_from_it(
    tiny_model_dir, tmp_path, own_cache, monkeypatch, capsys
):
    """A run whose model is a .gguf file (its dequantization faked by a copy of the tiny model,
    the real one is the slow test's): it pins the file, refuses to resume once the file
    changed, and resumes from it, through its cache folder, once it is back."""
    from transformers import TrainerCallback

    from spectune.tuning import recipe

    def fake_build(gguf: Path, out: Path, name: str) -> None:
        for file in tiny_model_dir.iterdir():
            shutil.copyfile(file, out / file.name)
        files = {p.name: p.stat().st_size for p in out.iterdir()}
        loading.write_json(out / loading.MANIFEST, {"format": loading.CACHE_FORMAT, "files": files})

    monkeypatch.setattr(loading, "_build_from_gguf", fake_build)
    gguf = write_gguf(tmp_path / "toy.gguf", "llama")
    data = tiny_run_config(tiny_model_dir)
    data["model"] = str(gguf)
    data["eval"].update(latency_prompts=0)
    config = tmp_path / "gguf.yaml"
    config.write_text(yaml_dump(data))
    out = tmp_path / "run"

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    real = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", lambda run: [*real(run), Interrupt()])
    assert main(["tune", str(config), "--out", str(out), "--no-progress"]) == 130
    monkeypatch.setattr(recipe, "callbacks", real)
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    pinned = json.loads((out / pins.PINS).read_text())["inputs"]["model"]
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert pinned["path"] == str(gguf.resolve())
    assert pinned["fingerprint"] == {"kind": "gguf", "size": gguf.stat().st_size, "sha256": sha}

    saved = gguf.read_bytes()
    gguf.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    capsys.readouterr()
    assert main(["tune", str(config), "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"model {gguf} changed" in err and "content changed" in err
    gguf.write_bytes(saved)
    assert main(["tune", str(config), "--out", str(out), "--resume", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == str(gguf) and metrics["training"]["global_step"] == 4
    assert [p.name for p in (own_cache / "models").iterdir() if not p.name.startswith(".")] == [
        f"toy-{sha[:12]}"
    ]
    # the run's base model, as a teacher run or a judge reads it: the GGUF's cache folder
    assert pins.run_base_model(out, "run") == (str(gguf), own_cache / "models" / f"toy-{sha[:12]}")


@pytest.mark.slow
@pytest.mark.real_weights
def test_a_real_gguf_file_is_dequantized_once_into_the_cache(tmp_path, monkeypatch):
    """The embedded SmolLM2 GGUF, copied elsewhere, given as a model: dequantized into the
    (test's own) cache under its file's name and hash, the same weights as the default
    model's folder, reused on the second resolve."""
    default = loading.default_model_dir()  # (in the shared cache, before SPECTUNE_CACHE is set)
    own_cache = tmp_path / "spectune-cache"
    monkeypatch.setenv("SPECTUNE_CACHE", str(own_cache))
    copy = tmp_path / "SmolLM2 copy.gguf"
    shutil.copyfile(loading.default_gguf_path(), copy)
    folder = loading.resolve_model_dir(copy)
    sha = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert folder == own_cache / "models" / f"SmolLM2-copy-{sha[:12]}"
    assert loading.cache_problem(folder) is None
    manifest = json.loads((folder / loading.MANIFEST).read_text())
    assert manifest["source_sha256"] == sha and manifest["model"] == "SmolLM2 copy"

    def no_build(*args, **kwargs):
        raise AssertionError("the second resolve must reuse the cache")

    monkeypatch.setattr(loading, "_build_from_gguf", no_build)
    assert loading.resolve_model_dir(copy) == folder
    from safetensors.torch import load_file

    ours, theirs = load_file(folder / "model.safetensors"), load_file(default / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
