"""What a run reads is pinned when it starts (``inputs.json``): ``--resume`` reads it there
whatever the directory and refuses a moved or changed input, an edited config or a damaged
checkpoint; a run never reads from its own folder; bad teachers and model folders are refused
before the folder exists. Every refusal is one line, exit 2, the files as they were."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from spectune.cli.main import main
from spectune.results.runfolder import MARKER
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig, yaml_dump
from tests.conftest import save_tiny_llama, tiny_run_config


def _fast(model: str | Path, **changes) -> dict:
    data = tiny_run_config(Path(model), "lora", **changes)
    data["model"] = str(model)  # as given: relative paths stay relative
    data["eval"].update(latency_prompts=0)
    return data


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock aside) with the hash of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".spectune.lock"}  # fmt: skip


def _cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["tune", *args, "--no-progress"])
    return code, capsys.readouterr().err


def _refused(capsys, *args: str) -> str:
    code, err = _cli(capsys, *args)
    assert code == 2 and err.startswith("spectune: error: ") and err.count("\n") == 1, err
    return err


def _interrupted(data: dict, out: Path, monkeypatch, at_step: int = 3) -> None:
    """A run stopped after ``at_step`` (checkpoint at step 2), as an interruption leaves it."""
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == at_step:
                raise KeyboardInterrupt

    real = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", lambda run: [*real(run), Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        recipe.tune(TuneConfig.from_dict(data), out=out, progress=False)
    monkeypatch.setattr(recipe, "callbacks", real)
    assert json.loads((out / MARKER).read_text())["status"] == "running"


def _dolly(path: Path, offset: int = 0) -> Path:
    from spectune.data.examples import InstructionExample

    rows = [InstructionExample(f"Say {i + offset}.", str(i + offset), category="say").to_dolly()
            for i in range(40)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Payload:
    """A pickle that creates a file when it is unpickled without weights_only."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture(scope="module")
def teacher_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A complete tiny LoRA run (the teacher of the distillation cases)."""
    out = tmp_path_factory.mktemp("pins") / "teacher"
    data = _fast(tiny_model_dir)
    data["train"].update(max_steps=2)
    recipe.tune(TuneConfig.from_dict(data), out=out, progress=False)
    return out


def _distill_file(tmp_path: Path, model_dir: Path) -> Path:
    path = tmp_path / "distill.yaml"
    data = tiny_run_config(model_dir, "lora", objective="distill", distill={})
    data["train"].update(max_steps=2)
    path.write_text(yaml_dump(data))
    return path


# --------------------------------------------------------------------------- case 1


def test_a_run_never_overwrites_its_own_teacher_base_or_data(
    teacher_run, tiny_model_dir, tmp_path, capsys
):
    """Issue 20, case 1: ``distill.teacher=R --out R --overwrite`` deleted the teacher R."""
    before = _snapshot(teacher_run)
    config = _distill_file(tmp_path, tiny_model_dir)
    err = _refused(capsys, str(config), f"distill.teacher={teacher_run}", "--out",
                   str(teacher_run), "--overwrite")  # fmt: skip
    assert f"distill.teacher {teacher_run.resolve()} is the output folder" in err
    err = _refused(capsys, str(config), f"distill.teacher={teacher_run}", "--out",
                   str(teacher_run), "--resume")  # fmt: skip
    assert "is the output folder" in err or "the config differs" in err
    # the base model inside the output folder, a data file inside it
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml_dump(_fast(tiny_model_dir)))
    data = _dolly(teacher_run / "mine.jsonl")
    err = _refused(capsys, str(plain), f"data.train={data}", "--out", str(teacher_run),
                   "--overwrite")  # fmt: skip
    assert "data.train" in err and "lies inside the output folder" in err
    data.unlink()
    assert _snapshot(teacher_run) == before


# --------------------------------------------------------------------------- case 5


def test_resume_reads_the_inputs_where_the_run_started(
    tiny_model_dir, smol_tokenizer, tmp_path, monkeypatch, capsys
):
    """Issue 20, case 5: a relative ``model:`` and data file were read from the current
    directory on --resume: another base model was trained and judged, exit 0."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    for where, seed in ((start, 0), (elsewhere, 7)):
        (where / "models").mkdir(parents=True)
        save_tiny_llama(where / "models" / "tiny", len(smol_tokenizer), seed=seed)
        smol_tokenizer.save_pretrained(where / "models" / "tiny")
        _dolly(where / "data.jsonl", offset=100 * seed)
    out = tmp_path / "run"
    monkeypatch.chdir(start)
    data = _fast("models/tiny", data={"train": "data.jsonl", "n_eval": 8, "max_length": 96})
    _interrupted(data, out, monkeypatch)

    monkeypatch.chdir(elsewhere)  # models/tiny and data.jsonl here are other files
    code, err = _cli(capsys, "--resume", "--out", str(out))
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["model_dir"] == str((start / "models" / "tiny").resolve())
    assert metrics["training"]["global_step"] == 4
    heldout = [json.loads(line)["instruction"] for line in
               (out / "predictions.jsonl").read_text().splitlines()]  # fmt: skip
    assert all(int(q.split()[1].rstrip(".")) < 100 for q in heldout)  # the start's data
    pins = json.loads((out / "inputs.json").read_text())
    assert pins["inputs"]["model"]["path"] == str((start / "models" / "tiny").resolve())
    assert pins["inputs"]["data.train"]["path"] == str((start / "data.jsonl").resolve())


def test_resume_refuses_a_moved_or_changed_input(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Issue 20, case 5: a moved or changed model or data file is named, before anything in
    the folder changes (the marker stays "running", not stamped "resumed")."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    train = _dolly(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    _interrupted(_fast(model, data={"train": str(train), "n_eval": 8, "max_length": 96}), out,
                 monkeypatch)  # fmt: skip
    before = _snapshot(out)

    original = (model / "config.json").read_bytes()
    config = json.loads(original)
    (model / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-3}))
    err = _refused(capsys, "--resume", "--out", str(out))
    assert f"model {model.resolve()} changed" in err and "config.json changed" in err
    (model / "config.json").write_bytes(original)

    model.rename(tmp_path / "moved")
    err = _refused(capsys, "--resume", "--out", str(out))
    assert f"model {model.resolve()} is gone" in err
    (tmp_path / "moved").rename(model)

    rows = train.read_text().splitlines()
    train.write_text("\n".join(rows[:-1]) + "\n")
    err = _refused(capsys, "--resume", "--out", str(out))
    assert f"data.train {train.resolve()} changed" in err and "its size changed" in err
    assert _snapshot(out) == before
    train.write_text("\n".join(rows) + "\n")
    code, err = _cli(capsys, "--resume", "--out", str(out))
    assert code == 0, err  # restored: the run goes on


def test_a_teacher_and_its_base_are_pinned(teacher_run, tiny_model_dir):
    from spectune.tuning import pins
    from spectune.tuning.objectives import get_objective

    data = tiny_run_config(tiny_model_dir, "lora", objective="distill",
                           distill={"teacher": str(teacher_run)})  # fmt: skip
    record = pins.pin(TuneConfig.from_dict(data), get_objective("distill"), tiny_model_dir)
    teacher = record["inputs"]["distill.teacher"]
    assert teacher["path"] == str(teacher_run.resolve())
    assert teacher["fingerprint"]["kind"] == "run"
    assert "adapter/adapter_model.safetensors" in teacher["fingerprint"]["files"]
    assert teacher["fingerprint"]["base"]["path"] == str(tiny_model_dir.resolve())


def test_the_embedded_model_is_pinned_by_its_cache_manifest(tmp_path):
    """``default`` is pinned by the cache's name (the GGUF's key) and manifest, not by file
    times: a cache rebuilt from the same GGUF by the same transformers resumes."""
    from spectune.errors import SpectuneError
    from spectune.models.loading import default_model_dir
    from spectune.tuning import pins
    from spectune.tuning.objectives import get_objective

    config = TuneConfig.from_dict({"model": "default", "method": "lora"})
    record = pins.pin(config, get_objective("sft"), default_model_dir())
    model = record["inputs"]["model"]
    assert model["given"] == "default" and model["fingerprint"]["kind"] == "default"
    assert "mtime_ns" not in json.dumps(model["fingerprint"])
    pins.check_unchanged(tmp_path, record)  # the same cache: nothing changed
    model["fingerprint"]["transformers"] = "0.0.1"
    with pytest.raises(SpectuneError, match=r"model default .*built by transformers 0\.0\.1"):
        pins.check_unchanged(tmp_path, record)


# --------------------------------------------------------------------------- case 10


def test_an_edited_config_yaml_is_refused_on_resume_naming_the_fields(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """Issue 20, case 10: an edited config.yaml on --resume failed with a size-mismatch
    RuntimeError after the run was stamped "resumed"."""
    out = tmp_path / "run"
    _interrupted(_fast(tiny_model_dir), out, monkeypatch)
    saved = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(saved.replace("  r: 4\n", "  r: 8\n"))
    before = _snapshot(out)
    err = _refused(capsys, "--resume", "--out", str(out))
    assert "config differs" in err and "lora.r: 4 -> 8" in err
    assert _snapshot(out) == before


@pytest.mark.parametrize("damage", ["truncated", "no-weights", "no-tokenizer", "pickled"])
def test_a_bad_teacher_is_refused_before_the_folder_exists(
    damage, tiny_model_dir, tmp_path, capsys
):
    """Issue 20, case 10: these failed with a traceback after the folder existed."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    weights = teacher / "model.safetensors"
    pwned = tmp_path / "pwned"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "no-tokenizer":
        for p in teacher.iterdir():
            if p.name.startswith("tokenizer"):
                p.unlink()
    else:
        weights.unlink()
        torch.save({"w": Payload(pwned)}, teacher / "pytorch_model.bin")
    out = tmp_path / "out"
    err = _refused(capsys, str(_distill_file(tmp_path, tiny_model_dir)),
                   f"distill.teacher={teacher}", "--out", str(out))  # fmt: skip
    assert f"distill.teacher {teacher}" in err
    expected = {"truncated": "model.safetensors: the header promises",
                "no-weights": "holds no weights", "no-tokenizer": "tokenizer cannot be loaded",
                "pickled": "pytorch_model.bin is not a plain weights file"}[damage]  # fmt: skip
    assert expected in err
    assert not out.exists() and not pwned.exists()


def test_a_teacher_run_with_a_truncated_adapter_is_refused_before_the_folder_exists(
    teacher_run, tiny_model_dir, tmp_path, capsys
):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    adapter = teacher / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:5000])
    out = tmp_path / "out"
    err = _refused(capsys, str(_distill_file(tmp_path, tiny_model_dir)),
                   f"distill.teacher={teacher}", "--out", str(out))  # fmt: skip
    assert f"distill.teacher {teacher}: adapter/adapter_model.safetensors: the header" in err
    assert not out.exists()


def test_a_pickled_or_misconfigured_model_is_refused_before_the_folder_exists(
    tiny_model_dir, tmp_path, capsys
):
    """Issue 20, cases 10 and 11: a pickle-carrying pytorch_model.bin surfaced as an
    UnpicklingError traceback after the folder existed; ``"hidden_size": "big"`` as a
    validation traceback."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").unlink()
    pwned = tmp_path / "pwned"
    torch.save({"w": Payload(pwned)}, model / "pytorch_model.bin")
    out = tmp_path / "out"
    err = _refused(capsys, f"model={model}", "train.max_steps=1", "--out", str(out))
    assert "pytorch_model.bin is not a plain weights file" in err and "re-save" in err
    assert not out.exists() and not pwned.exists()

    big = tmp_path / "big"
    shutil.copytree(tiny_model_dir, big)
    config = json.loads((big / "config.json").read_text())
    (big / "config.json").write_text(json.dumps({**config, "hidden_size": "big"}))
    err = _refused(capsys, f"model={big}", "train.max_steps=1", "--out", str(out))
    assert "config.json cannot be read" in err and "'hidden_size'" in err
    assert not out.exists()


# --------------------------------------------------------------------------- case 11


@pytest.mark.parametrize("damage", ["truncated-optimizer", "pickled-optimizer", "pickled-rng",
                                    "corrupt-rng"])  # fmt: skip
def test_a_damaged_checkpoint_is_refused_on_resume(
    damage, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """Issue 20, case 11: tracebacks on resume; a pickle is never run."""
    out = tmp_path / "run"
    _interrupted(_fast(tiny_model_dir), out, monkeypatch)
    ckpt = out / "checkpoints" / "checkpoint-2"
    pwned = tmp_path / "pwned"
    name = "optimizer.pt" if "optimizer" in damage else "rng_state.pth"
    if damage == "truncated-optimizer":
        data = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(data[: len(data) // 2])
    elif damage.startswith("pickled"):
        torch.save({"state": Payload(pwned)}, ckpt / name)
    else:
        (ckpt / name).write_bytes(b"not a checkpoint at all")
    before = _snapshot(out)
    err = _refused(capsys, "--resume", "--out", str(out))
    assert f"{ckpt / name}" in err and f"delete {ckpt}" in err and "--overwrite" in err
    if damage.startswith("pickled"):
        assert "refuses to run" in err
    else:
        assert "truncated, corrupt" in err
    assert not pwned.exists() and _snapshot(out) == before


# --------------------------------------------------------------------------- case 12


def test_a_teacher_run_whose_base_is_gone_names_both(tiny_model_dir, tmp_path, capsys):
    """Issue 20, case 12: the message named a model path, not the teacher run."""
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    teacher = tmp_path / "teacher"
    data = _fast(base)
    data["train"].update(max_steps=1)
    recipe.tune(TuneConfig.from_dict(data), out=teacher, progress=False)
    shutil.rmtree(base)
    out = tmp_path / "out"
    err = _refused(capsys, str(_distill_file(tmp_path, tiny_model_dir)),
                   f"distill.teacher={teacher}", "--out", str(out))  # fmt: skip
    assert f"distill.teacher {teacher}" in err and f"base model of that run, {base}" in err
    assert "is gone" in err and not out.exists()


def test_a_teacher_run_with_a_damaged_marker_is_named_as_the_teacher(
    teacher_run, tiny_model_dir, tmp_path, capsys
):
    """A teacher whose run.json is damaged: the message named run.json and said "pick another
    --out", advice for an output folder, not for a teacher."""
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    marker = json.loads((teacher / MARKER).read_text())
    (teacher / MARKER).write_text(json.dumps({**marker, "files": "adapter"}))
    out = tmp_path / "out"
    err = _refused(capsys, str(_distill_file(tmp_path, tiny_model_dir)),
                   f"distill.teacher={teacher}", "--out", str(out))  # fmt: skip
    assert f"distill.teacher {teacher}: its run.json is damaged (field 'files'" in err
    assert "give another teacher" in err and "--out" not in err and not out.exists()
