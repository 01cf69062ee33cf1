"""What a user hits when things go wrong: interruptions, a second process, bad model folders,
a diverging loss, failed sweep runs, and the settings that change how a run trains."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.results.runfolder import LOCK, MARKER, RunFolder
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig, yaml_dump
from spectune.tuning.methods import METHODS, get_method
from spectune.tuning.trainer import FiniteLoss
from tests.conftest import save_tiny_llama, tiny_run_config

ROOT = Path(__file__).resolve().parents[2]


def _config(model_dir, method="lora", **changes) -> TuneConfig:
    return TuneConfig.from_dict(tiny_run_config(model_dir, method, **changes))


def _adapter_logits(out: Path, method: str, model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from spectune.tuning.methods.base import BuildContext, load_float_base

    config = TuneConfig.from_dict(tiny_run_config(model_dir, method))
    ctx = BuildContext(config, model_dir, out, progress=False)
    model = get_method(method).load(ctx, load_float_base(model_dir), out / "adapter").eval()
    with torch.no_grad():
        return model(ids).logits


def _interrupting(real, at_step: int):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == at_step:
                raise KeyboardInterrupt

    return lambda run: [*real(run), Interrupt()]


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_resumes_to_the_uninterrupted_result(
    method, tiny_model_dir, tmp_path, smol_tokenizer, monkeypatch
):
    """Interrupted after step 3 (checkpoint at step 2), resumed: the same adapter as a run
    that was never interrupted (FROG's own checkpoint format, peft's, the full model's)."""
    if "quant" in get_method(method).sections:
        pytest.importorskip("bitsandbytes")
    straight = recipe.tune(_config(tiny_model_dir, method), out=tmp_path / "a", progress=False)
    real = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", _interrupting(real, 3))
    with pytest.raises(KeyboardInterrupt):
        recipe.tune(_config(tiny_model_dir, method), out=tmp_path / "b", progress=False)
    monkeypatch.setattr(recipe, "callbacks", real)
    assert json.loads((tmp_path / "b" / MARKER).read_text())["status"] == "running"
    resumed = recipe.tune(_config(tiny_model_dir, method), out=tmp_path / "b", resume=True,
                          progress=False)  # fmt: skip
    assert resumed.metrics.run.resumed and resumed.metrics.training.global_step == 4
    ids = torch.tensor([smol_tokenizer("Two and two make four.")["input_ids"]])
    a = _adapter_logits(tmp_path / "a", method, tiny_model_dir, ids)
    b = _adapter_logits(tmp_path / "b", method, tiny_model_dir, ids)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert resumed.metrics.learning.accuracy_after == straight.metrics.learning.accuracy_after


@pytest.mark.parametrize("method", ["lora", "frog"])
def test_a_killed_process_resumes(method, tiny_model_dir, tmp_path, smol_tokenizer):
    """SIGKILL of the training process after step 3: nothing is half-written, the lock is gone
    with the process, and --resume gives the uninterrupted run's adapter."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml_dump(tiny_run_config(tiny_model_dir, method)))
    straight = tmp_path / "straight"
    recipe.tune(_config(tiny_model_dir, method), out=straight, progress=False)
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from transformers import TrainerCallback
        from spectune.tuning import recipe
        from spectune.tuning.config import load_config

        class Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 3:
                    os.kill(os.getpid(), signal.SIGKILL)

        real = recipe.callbacks
        recipe.callbacks = lambda run: [*real(run), Kill()]
        recipe.tune(load_config({str(path)!r}), out={str(killed)!r}, progress=False)
    """)  # fmt: skip
    env = {**os.environ, "SPECTUNE_CACHE": os.environ.get("SPECTUNE_CACHE", "")}
    env = {k: v for k, v in env.items() if v}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert json.loads((killed / MARKER).read_text())["status"] == "running"
    assert not list(killed.glob(".*.tmp"))  # atomic writes: no half file
    assert (killed / "checkpoints" / "checkpoint-2").is_dir()
    resumed = recipe.tune(_config(tiny_model_dir, method), out=killed, resume=True, progress=False)
    assert resumed.metrics.training.global_step == 4
    ids = torch.tensor([smol_tokenizer("Two and two make four.")["input_ids"]])
    torch.testing.assert_close(_adapter_logits(killed, method, tiny_model_dir, ids),
                               _adapter_logits(straight, method, tiny_model_dir, ids),
                               rtol=1e-4, atol=1e-5)  # fmt: skip


def test_resume_of_nothing_is_refused_by_the_cli(tmp_path, capsys):
    from spectune.cli.main import main

    for out in (tmp_path / "missing", tmp_path):
        assert main(["tune", "--resume", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "holds no run to resume (no config.yaml)" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing started


def test_a_refused_resume_leaves_the_marker_as_it_was(tiny_model_dir, tmp_path, monkeypatch):
    real = recipe.callbacks
    monkeypatch.setattr(recipe, "callbacks", _interrupting(real, 1))
    with pytest.raises(KeyboardInterrupt):
        recipe.tune(_config(tiny_model_dir), out=tmp_path / "r", progress=False)
    monkeypatch.setattr(recipe, "callbacks", real)
    before = (tmp_path / "r" / MARKER).read_text()
    other = _config(tiny_model_dir, lora__r=2)
    with pytest.raises(SpectuneError, match=r"the config differs .*\(lora\.r: 4 -> 2\)"):
        recipe.tune(other, out=tmp_path / "r", resume=True, progress=False)
    assert (tmp_path / "r" / MARKER).read_text() == before  # no "resumed" stamp added


# --------------------------------------------------------------------------- the folder


def test_a_second_process_cannot_use_a_live_run_folder(tmp_path):
    folder = RunFolder(tmp_path / "run").open()
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from spectune.errors import SpectuneError
        from spectune.results.runfolder import RunFolder
        for flags in ({{}}, {{"overwrite": True}}, {{"resume": True}}):
            try:
                RunFolder({str(tmp_path / "run")!r}).open(**flags)
            except SpectuneError as exc:
                print("refused:", exc)
            else:
                print("opened")
    """)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(f"in use by a running spectune (pid {os.getpid()})" in line
                                   for line in lines), out.stdout + out.stderr  # fmt: skip
    assert (tmp_path / "run" / MARKER).is_file()  # the live run's files are untouched
    folder.close()  # released: a crashed process releases it the same way (the OS drops it)
    again = RunFolder(tmp_path / "run").open(resume=True)
    again.close()


def test_overwrite_keeps_files_the_user_put_in_the_runs_folders(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    recipe.tune(_config(tiny_model_dir), out=out, progress=False)
    (out / "adapter" / "extra").mkdir()
    (out / "adapter" / "extra" / "keep.txt").write_text("mine")
    (out / "plots" / "mine.png").write_bytes(b"mine")
    with pytest.raises(SpectuneError, match=r"holds files the run did not write "
                       r"\(adapter/extra/keep.txt, plots/mine.png\).* move them out"):  # fmt: skip
        recipe.tune(_config(tiny_model_dir), out=out, overwrite=True, progress=False)
    assert (out / "adapter" / "extra" / "keep.txt").read_text() == "mine"
    assert (out / "metrics.json").is_file()  # nothing of the run removed either
    (out / "adapter" / "extra" / "keep.txt").unlink()
    (out / "adapter" / "extra").rmdir()
    (out / "plots" / "mine.png").unlink()
    recipe.tune(_config(tiny_model_dir), out=out, overwrite=True, progress=False)
    assert json.loads((out / MARKER).read_text())["status"] == "complete"
    assert (out / LOCK).is_file()


def test_checkpoints_are_kept_on_request(tiny_model_dir, tmp_path):
    recipe.tune(_config(tiny_model_dir, train__keep_checkpoints=True), out=tmp_path / "k",
                progress=False)  # fmt: skip
    assert (tmp_path / "k" / "checkpoints" / "checkpoint-4").is_dir()
    with pytest.raises(SpectuneError, match="train.keep_checkpoints must be true or false"):
        _config(tiny_model_dir, train__keep_checkpoints="yes")


# --------------------------------------------------------------------------- bad model folders


def _bad_model(tmp_path, smol_tokenizer, what: str) -> Path:
    folder = save_tiny_llama(tmp_path / what, len(smol_tokenizer))
    smol_tokenizer.save_pretrained(folder)
    if what == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                     "special_tokens_map.json"):  # fmt: skip
            (folder / name).unlink(missing_ok=True)
    elif what == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif what == "big-tokenizer":
        save_tiny_llama(folder, len(smol_tokenizer) - 10)  # the model's vocabulary is smaller
    elif what == "no-template":
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    elif what == "not-causal":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_type"] = "t5"
        cfg["architectures"] = ["T5Model"]
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("what,message", [
    ("no-tokenizer", "has no usable tokenizer"),
    ("truncated", r"model.safetensors: the header promises \d+ bytes but the file has \d+"),
    ("big-tokenizer", r"the tokenizer has 49152 tokens but the model's vocabulary has 49142"),
    ("no-template", "its tokenizer has no chat template"),
    ("not-causal", "holds a 't5' model, which is not a causal language model"),
])  # fmt: skip
def test_a_bad_model_folder_is_refused_before_the_results_folder_exists(
    what, message, tmp_path, smol_tokenizer, capsys
):
    from spectune.cli.main import main

    folder = _bad_model(tmp_path, smol_tokenizer, what)
    capsys.readouterr()  # (saving the tiny model prints a progress bar)
    out = tmp_path / "out"
    code = main(["tune", f"model={folder}", "train.max_steps=1", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("spectune: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not out.exists()  # checked before the folder was made: a rerun is not refused


def test_a_train_key_typo_names_the_closest_key_before_the_folder_exists(tiny_model_dir, tmp_path):
    with pytest.raises(SpectuneError) as info:
        recipe.tune(_config(tiny_model_dir, train__lerning_rate=1e-3), out=tmp_path / "o",
                    progress=False)  # fmt: skip
    message = str(info.value)
    assert "'lerning_rate' -> 'learning_rate'" in message
    assert "valid keys" not in message and len(message) < 300  # not 120 TrainingArguments keys
    assert not (tmp_path / "o").exists()


def test_a_single_module_name_explains_the_regex_reading(tiny_model_dir, tmp_path):
    with pytest.raises(SpectuneError, match=r"target_modules='q_proj' is read as a regular "
                       r"expression .* pass a list: target_modules=\[q_proj\] \(2 modules\)"):  # fmt: skip
        recipe.tune(_config(tiny_model_dir, target_modules="q_proj"), out=tmp_path / "o",
                    progress=False)  # fmt: skip


# --------------------------------------------------------------------------- training


def test_a_diverging_loss_stops_with_a_clear_error_and_keeps_the_files(tiny_model_dir, tmp_path):
    with pytest.raises(SpectuneError, match=r"the training loss is nan.* at step \d+: training "
                       r"diverged; lower train.learning_rate \(now 1e\+30\)"):  # fmt: skip
        recipe.tune(_config(tiny_model_dir, train__learning_rate=1e30), out=tmp_path / "nan",
                    progress=False)  # fmt: skip
    marker = json.loads((tmp_path / "nan" / MARKER).read_text())
    assert marker["status"] == "failed" and "training loss is nan" in marker["error"]
    assert (tmp_path / "nan" / "before.json").is_file()  # what was written stays
    with pytest.raises(SpectuneError, match=r"interrupted run \(status 'failed' \(SpectuneError: "
                       r"the training loss is nan"):  # fmt: skip
        recipe.tune(_config(tiny_model_dir), out=tmp_path / "nan", progress=False)


def test_finite_loss_callback_by_hand():
    from types import SimpleNamespace

    check = FiniteLoss()
    args, state = SimpleNamespace(learning_rate=0.1), SimpleNamespace(global_step=7)
    check.on_log(args, state, None, logs={"loss": 1.5})  # fine
    with pytest.raises(SpectuneError, match="the training loss is inf at step 7"):
        check.on_log(args, state, None, logs={"loss": float("inf")})


def test_gradient_accumulation_gives_the_larger_batchs_update(tiny_model_dir, tmp_path):
    """Batch 4 x accumulation 2 trains the same as batch 8 (same examples, same order): the
    adapters agree to float rounding."""
    common = dict(train__max_steps=2, train__learning_rate=1e-3, lora__lora_dropout=0.0,
                  eval__spectra=False, eval__before=False, train__warmup_steps=0)  # fmt: skip
    a = recipe.tune(_config(tiny_model_dir, train__per_device_train_batch_size=8, **common),
                    out=tmp_path / "b8", progress=False)  # fmt: skip
    b = recipe.tune(_config(tiny_model_dir, train__per_device_train_batch_size=4,
                            train__gradient_accumulation_steps=2, **common),
                    out=tmp_path / "b4x2", progress=False)  # fmt: skip
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "b8" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "b4x2" / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-6)
    assert a.metrics.training.first_loss == pytest.approx(b.metrics.training.first_loss, rel=1e-4)


def test_epochs_instead_of_steps(tiny_model_dir, tmp_path):
    m = recipe.tune(_config(tiny_model_dir, train__max_steps=-1, train__num_train_epochs=1,
                            data__n_train=16, eval__spectra=False),
                    out=tmp_path / "e", progress=False).metrics  # fmt: skip
    assert m.training.global_step == 4  # 16 examples / batch 4
    assert m.training.epochs == pytest.approx(1.0)


# --------------------------------------------------------------------------- sweeps


def test_a_sweep_records_a_failed_run_and_goes_on(tiny_model_dir, tmp_path, monkeypatch):
    import importlib

    # the module, not the lazily exported function of the same name
    sweep_module = importlib.import_module("spectune.studies.sweep")

    base = tiny_run_config(tiny_model_dir, "lora", train__max_steps=2, eval__spectra=False)
    path = tmp_path / "s.yaml"
    path.write_text(yaml_dump(base))
    real = recipe.tune

    def flaky(config, **kwargs):
        if config.section("lora").r == 2:
            raise SpectuneError("planted failure")
        return real(config, **kwargs)

    monkeypatch.setattr(recipe, "tune", flaky)
    outcomes = sweep_module.sweep(path, ["r=2,4"], out=tmp_path / "s", progress=False)
    assert [o.status for o in outcomes] == ["failed: planted failure", "complete"]
    marker = json.loads((tmp_path / "s" / MARKER).read_text())
    assert marker["status"] == "failed" and marker["failed_runs"] == ["r2"]
    rows = (tmp_path / "s" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and "failed: planted failure" in rows[1]
    monkeypatch.setattr(recipe, "tune", real)
    again = sweep_module.sweep(path, ["r=2,4"], out=tmp_path / "s", resume=True, progress=False)
    assert [o.status for o in again] == ["complete", "complete"]  # the failed one ran again
    assert json.loads((tmp_path / "s" / MARKER).read_text())["status"] == "complete"
