"""``spectune tune`` under torchrun / accelerate launch: 2 processes x 1 thread (gloo, CPU) on
the tiny random Llama against one process with the same global batch (with validation, early
stopping, the best checkpoint and the spectra during training), resume after an interruption,
and the refusals (every rank says the same one line and exits 2).

The launches are subprocesses (``python -m torch.distributed.run``); each rank's output goes
to its own log file (``--redirects 3``), so the assertions name the rank. A launch costs
3-30 CPU seconds (mostly imports; two launches train), hence the slow marker; the checks
that need no second process (the refusals, the validation shares, what rank 1 writes) are
fast.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from spectune.errors import SpectuneError
from spectune.tuning.config import TuneConfig
from tests.conftest import tiny_run_config
from tests.tuning.test_tune import _killing
from tests.tuning.test_validation import _fruit_config, write_fruit_files

#: The loss of a step is the mean over the same global batch's tokens; the two runs differ only
#: in float32 summation order (each process pads its half of the batch to its own longest
#: example, and gloo sums the two gradients): measured 8e-8 relative on the loss curve and on
#: the gradient norm, so 1e-5 leaves two orders of magnitude.
LOSS_RTOL = 1e-5
#: Adam divides each update by the root of its second moment, so an entry whose gradient is
#: near zero moves by up to lr either way on a last-bit difference: measured 9e-6 largest
#: difference over the adapter after 4 steps at lr 1e-2 (entries up to 0.14); 1e-4 allows 10x.
ADAPTER_ATOL = 1e-4
#: a launch takes 10-40 s; on a machine busy with other work several times that
LAUNCH_TIMEOUT_S = 900

#: what the launched processes run: the CLI, with a fault injected when the test asks for one
WORKER = """
import errno, os, sys
inject = os.environ.get("SPECTUNE_TEST_INJECT", "")
if inject == "kill-after-step-3":  # every rank stops at the end of step 3 (checkpoint at 2)
    from transformers import TrainerCallback
    from spectune.tuning import recipe

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    real = recipe.callbacks
    recipe.callbacks = lambda run: [*real(run), Kill()]
if inject == "rank-1-cannot-write" and os.environ.get("RANK") == "1":
    from spectune import _io  # this rank's file system refuses the results folder

    _io._can_create_in = lambda folder: PermissionError(errno.EACCES, "Permission denied")
from spectune.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _env(tmp: Path, inject: str = "") -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[3] / "src")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE"))}
    env.update(OMP_NUM_THREADS="1", SPECTUNE_CACHE=str(tmp / "cache"), SPECTUNE_TEST_INJECT=inject,
               PYTHONPATH=os.pathsep.join([src, env.get("PYTHONPATH", "")]))  # fmt: skip
    return env


def _launch(tmp: Path, args: list[str], *, n: int = 2, inject: str = "", accelerate: bool = False,
            timeout: float = LAUNCH_TIMEOUT_S) -> tuple[subprocess.CompletedProcess, dict[int, str]]:  # fmt: skip
    """Launch the CLI on ``n`` processes; (the launcher's result, each rank's stderr)."""
    worker = tmp / "worker.py"
    worker.write_text(WORKER)
    logs = tmp / f"logs-{len(list(tmp.glob('logs-*')))}"
    if accelerate:  # accelerate launch --use_fsdp runs torchrun (gloo here: no GPU)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp",
               "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", str(worker), *args]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
               "--log-dir", str(logs), "--redirects", "3", str(worker), *args]  # fmt: skip
    done = subprocess.run(cmd, env=_env(tmp, inject), capture_output=True, text=True,
                          timeout=timeout, cwd=tmp)  # fmt: skip
    ranks = {int(p.parent.name): p.read_text() for p in logs.glob("*/attempt_0/*/stderr.log")}
    return done, ranks


def _write_config(tmp: Path, model_dir: Path, name: str, method: str = "lora", **changes) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config(model_dir, method, **changes)))
    return path


def _log(out: Path) -> list[dict[str, float]]:
    with (out / "train_log.csv").open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    """The LoRA tensors of an adapter folder (``adapter/`` or a checkpoint)."""
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def _errors(text: str) -> list[str]:
    """The error lines of ``text``, without the "(rank R of N) " each rank puts first."""
    return [re.sub(r"^spectune: error: \(rank \d+ of \d+\) ", "spectune: error: ", line)
            for line in text.splitlines() if line.startswith("spectune: error:")]  # fmt: skip


def _fruit_run(model_dir: Path, files: dict, per_device: int) -> dict:
    """LoRA on the planted fruit data (the validation loss rises from the first evaluation):
    validation every step in batches of 3 (8 examples: 3 + 3 + 2, shared by the processes),
    early stopping (patience 2: it stops at step 3 of 8), the best checkpoint (step 1)
    restored, the spectra every step, the spectra after training."""
    raw = _fruit_config(model_dir, files, max_steps=8, early_stopping_patience=2,
                        load_best_model_at_end=True, per_device_train_batch_size=per_device,
                        per_device_eval_batch_size=3)  # fmt: skip
    raw["eval"].update(spectra_every_steps=1, spectra=True)
    return raw


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The reference: one process, per-device batch 4 (the DDP runs: 2 processes x 2),
    interrupted after step 3 and resumed, as the launched run is (its resumed session's
    tokens are those the launched one counts)."""
    from spectune.tuning import recipe

    tmp = tmp_path_factory.mktemp("one")
    config = TuneConfig.from_dict(_fruit_run(tiny_model_dir, write_fruit_files(tmp), 4))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("spectune.judging.cache.cache_dir", lambda: tmp / "judge")
        real = recipe.callbacks
        mp.setattr(recipe, "callbacks", _killing(real, at_step=3))
        with pytest.raises(KeyboardInterrupt):
            recipe.tune(config, out=tmp / "run", progress=False)
        mp.setattr(recipe, "callbacks", real)
        recipe.tune(config, out=tmp / "run", resume=True, progress=False)
    return tmp / "run"


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _same_training(out: Path, ref: Path) -> None:
    """The same loss curve, validation curve, spectra during training and adapters (the
    restored best one, and the last checkpoint's) as the one-process run."""
    log, ref_log = _log(out), _log(ref)
    assert [r["step"] for r in log] == [r["step"] for r in ref_log] == [1, 2, 3]
    for key in ("loss", "grad_norm", "learning_rate"):
        got, want = [r[key] for r in log], [r[key] for r in ref_log]
        assert got == pytest.approx(want, rel=LOSS_RTOL), key
    assert len({round(r["loss"], 3) for r in log}) == 3  # a curve, not a constant
    val, ref_val = _csv(out / "validation_log.csv"), _csv(ref / "validation_log.csv")
    assert [r["step"] for r in val] == [r["step"] for r in ref_val] == ["1", "2", "3"]
    assert [int(r["examples"]) for r in val] == [8, 8, 8]  # both processes' shares, summed
    got = [float(r["validation_loss"]) for r in val]
    assert got == pytest.approx([float(r["validation_loss"]) for r in ref_val], rel=LOSS_RTOL)
    assert got[0] < got[1] < got[2]  # the planted rise: stopped at 3, step 1 restored
    spec, ref_spec = _csv(out / "spectra_log.csv"), _csv(ref / "spectra_log.csv")
    assert [(r["step"], r["longname"]) for r in spec] == [
        (r["step"], r["longname"]) for r in ref_spec
    ]
    assert {r["step"] for r in spec} == {"1", "2", "3"} and len(spec) == 3 * 14
    for x, y in zip(spec, ref_spec, strict=True):
        assert float(x["alpha"]) == pytest.approx(float(y["alpha"]), rel=1e-4)
    for folder in ("adapter", "checkpoints/checkpoint-1", "checkpoints/checkpoint-3"):
        a, b = _adapter(out / folder), _adapter(ref / folder)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=ADAPTER_ATOL)
    best, last = _adapter(out / "adapter"), _adapter(out / "checkpoints/checkpoint-3")
    assert all(
        torch.equal(best[k], t) for k, t in _adapter(out / "checkpoints/checkpoint-1").items()
    )
    moved = max(float(t.abs().max()) for k, t in last.items() if "lora_B" in k)
    assert moved > 100 * ADAPTER_ATOL  # B starts at 0: the tolerance is far below what trained
    assert any(not torch.equal(best[k], last[k]) for k in best)


@pytest.mark.slow
def test_two_processes_validate_stop_and_resume_like_one_process(
    tiny_model_dir, tmp_path, one_process
):
    """torchrun, 2 x 1 thread, per-device batch 2 = one process with batch 4, with validation,
    early stopping, the best checkpoint and the spectra watch. Both ranks stop after step 3
    (checkpoint at 2, with each rank's random state, recorded in the marker); ``--resume``
    (the console script under torchrun) finishes the run like the one-process run
    interrupted alike: the same loss and validation curves, the same stop (step 3) and best
    step (1) on both ranks, the same adapters and spectra; one results folder, written by
    rank 0; the batch sizes and both ranks' tokens recorded."""
    spectune = Path(sys.executable).parent / "spectune"
    assert spectune.is_file(), "the spectune console script (pip install -e .)"
    files = write_fruit_files(tmp_path)
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_fruit_run(tiny_model_dir, files, 2)))
    out = tmp_path / "run"
    done, ranks = _launch(tmp_path, ["tune", str(config), "--out", str(out), "--no-progress"],
                          inject="kill-after-step-3")  # fmt: skip
    assert done.returncode != 0
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] == "running"
    ckpt = {"checkpoint-2/rng_state_0.pth", "checkpoint-2/rng_state_1.pth"}
    assert ckpt <= set(marker["tree"]["checkpoints"])  # rank 1's file recorded by rank 0
    assert [r["step"] for r in _log(out)] == [1, 2]  # (step 3 stopped before its log line)
    assert [r["step"] for r in _csv(out / "validation_log.csv")] == ["1", "2"]
    assert {"validation_log.csv", "spectra_log.csv"} <= set(marker["files"])
    before = (out / "before.json").read_bytes()

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--no-python",
           str(spectune), "tune", "--out", str(out), "--resume", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results in") == 1  # rank 0 alone reports
    _same_training(out, one_process)
    # one results folder, one marker and one metrics file, nothing left by rank 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["cache", "logs-0", "run"]
    assert sorted(p.name for p in out.rglob("run.json")) == ["run.json"]
    assert sorted(p.name for p in out.rglob("metrics.json")) == ["metrics.json"]
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] == "complete"
    assert set(marker["files"]) == {p.name for p in out.iterdir()} - {".spectune.lock"}
    assert (out / "before.json").read_bytes() == before  # kept, not judged again
    assert (out / "spectra" / "compare.json").is_file()  # rank 0 analyzed after training
    m = json.loads((out / "metrics.json").read_text())
    ref = json.loads((one_process / "metrics.json").read_text())
    assert m["run"]["resumed"] is True and m["training"]["global_step"] == 3
    assert m["run"]["world_size"] == 2 and ref["run"]["world_size"] == 1
    assert (m["training"]["per_device_batch"], m["training"]["global_batch"]) == (2, 4)
    assert (ref["training"]["per_device_batch"], ref["training"]["global_batch"]) == (4, 4)
    assert m["cost"]["tokens"] == ref["cost"]["tokens"] > 0  # both ranks' tokens, summed
    assert "trained by 2 processes (gloo): global batch 4 = 2 per process" in m["notes"][0]
    v, ref_v = m["validation"], ref["validation"]
    for key in ("best_step", "adapter_step", "restored_best", "stopped_early", "n_examples"):
        assert v[key] == ref_v[key], key
    assert (v["best_step"], v["adapter_step"], v["stopped_early"]) == (1, 1, True)
    # rank 0 judged: the same base and (nearly) the same tuned model as one process
    for key in ("accuracy", "heldout_loss", "perplexity"):  # (not the timings)
        assert m["before"][key] == ref["before"][key], key
    after, ref_after = m["after"]["heldout_loss"]["loss"], ref["after"]["heldout_loss"]["loss"]
    assert after == pytest.approx(ref_after, rel=LOSS_RTOL)


def _refused_on_every_rank(done, ranks: dict[int, str], match: str) -> None:
    assert done.returncode != 0
    assert sorted(ranks) == [0, 1]
    for rank, text in ranks.items():
        errors = _errors(text)
        assert len(errors) == 1 and match in errors[0], (rank, text[-2000:])
        assert "Traceback" not in text, (rank, text[-2000:])
    assert done.stderr.count("exitcode  : 2") == 2, done.stderr[-2000:]  # both ranks exit 2


@pytest.mark.slow
def test_a_folder_only_some_ranks_can_write_is_refused_on_every_rank(tiny_model_dir, tmp_path):
    config = _write_config(tmp_path, tiny_model_dir, "run")
    out = tmp_path / "r"
    done, ranks = _launch(tmp_path, ["tune", str(config), "--out", str(out)],
                          inject="rank-1-cannot-write")  # fmt: skip
    _refused_on_every_rank(done, ranks, "rank 1 of 2 (host ")
    assert f"--out {out} is not writable" in _errors(ranks[0])[0]
    assert not out.exists()  # refused before anything was written


@pytest.mark.slow
def test_accelerate_launch_with_fsdp_refuses_frog_on_every_rank(tiny_model_dir, tmp_path):
    """``accelerate launch --use_fsdp`` (ACCELERATE_USE_FSDP) with a method that cannot be
    sharded: the same one line from both processes, exit 2, no folder."""
    config = _write_config(tmp_path, tiny_model_dir, "frog", "frog")
    done, _ = _launch(tmp_path, ["tune", str(config), "--out", str(tmp_path / "r")],
                      accelerate=True)  # fmt: skip
    assert done.returncode != 0
    errors = _errors(done.stderr)
    assert len(errors) == 2 and len(set(errors)) == 1, done.stderr[-3000:]
    assert "method 'frog' cannot be trained with FSDP: FROG's sparse deltas" in errors[0]
    frames = [line for line in done.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "spectune" in f], done.stderr[-3000:]  # the launcher's only
    assert done.stderr.count("exitcode  : 2") == 2, done.stderr[-2000:]  # both ranks exit 2
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- one process


@pytest.mark.parametrize(
    ("method", "why"),
    [("qlora", "bitsandbytes 4-bit"), ("qdora", "bitsandbytes 4-bit"),
     ("frog", "FROG's sparse deltas"), ("pissa", "has not checked"), ("shira", "has not been checked")],
)  # fmt: skip
def test_fsdp_with_a_method_that_cannot_shard_is_refused(tiny_model_dir, tmp_path, method, why):
    from spectune.tuning.recipe import tune

    data = tiny_run_config(tiny_model_dir, method, train__fsdp="full_shard")
    with pytest.raises(SpectuneError, match=rf"method '{method}' cannot be trained with FSDP: .*"
                       rf"{why}.*pick a method FSDP can shard: lora, rslora, dora, full"):  # fmt: skip
        tune(TuneConfig.from_dict(data), out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_fsdp_with_spectra_during_training_is_refused(tiny_model_dir, tmp_path):
    """Under FSDP each process holds a shard of the weights while training: rank 0 cannot
    analyze the spectra every N steps, so eval.spectra_every_steps is refused (one line)."""
    from spectune.tuning.recipe import tune

    data = tiny_run_config(tiny_model_dir, "lora", train__fsdp="full_shard",
                           eval__spectra_every_steps=2)  # fmt: skip
    with pytest.raises(SpectuneError) as info:
        tune(TuneConfig.from_dict(data), out=tmp_path / "r", progress=False)
    assert str(info.value) == (
        "eval.spectra_every_steps=2 cannot be used with FSDP: during training each process "
        "holds only its shard of the weights, and the spectra are analyzed by rank 0 alone; "
        "train it with DDP (remove train.fsdp, or launch without accelerate's FSDP config), or "
        "remove eval.spectra_every_steps (the spectra after training are still analyzed)"
    )
    assert not (tmp_path / "r").exists()


def test_more_processes_than_examples_is_refused(tiny_model_dir, tmp_path):
    """A rank without a training example of its own is refused (on every rank: the recipe
    runs this check through distributed.on_every_rank), naming the counts and the fix."""
    from spectune.tuning import recipe

    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, data__n_train=1,
                                                  data__n_eval=2))  # fmt: skip
    run = recipe.prepare(config, out=tmp_path / "r", progress=False)
    run.world_size = 2
    with pytest.raises(SpectuneError, match=r"^2 processes were launched but the run has only 1 "
                       r"training example\(s\) .*launch at most 1 processes"):  # fmt: skip
        recipe.prepare_training(run)
    run.world_size = 1
    recipe.prepare_training(run)  # one process trains on its one example
    assert len(run.train_data.dataset) == 1
    assert not (tmp_path / "r").exists()  # prepare takes no folder


def test_ranks_other_than_0_write_no_log(tiny_model_dir, tmp_path):
    """Rank 0 writes train_log.csv, validation_log.csv and spectra_log.csv; the other ranks
    get no log callback, a spectra watch that writes nothing, and the same early stopping."""
    from spectune.tuning import recipe
    from spectune.tuning.trainer import (
        EarlyStopping,
        LossLog,
        RecordFiles,
        SpectraWatch,
        ValidationLog,
    )

    raw = tiny_run_config(tiny_model_dir, data__n_validation=8, eval__spectra_every_steps=2)
    raw["train"].update(eval_steps=2, early_stopping_patience=3)
    run = recipe.prepare(TuneConfig.from_dict(raw), out=tmp_path / "r", progress=False)
    recipe.prepare_training(run)
    kinds = {}
    for main in (True, False):
        run.main = main
        kinds[main] = {type(c): c for c in recipe.callbacks(run)}
    assert {LossLog, ValidationLog} <= set(kinds[True])
    assert not {LossLog, ValidationLog} & set(kinds[False])
    assert kinds[True][SpectraWatch].path == tmp_path / "r" / "spectra_log.csv"
    assert kinds[False][SpectraWatch].path is None
    assert kinds[True][RecordFiles].record is not None and kinds[False][RecordFiles].record is None
    for main in (True, False):
        assert kinds[main][EarlyStopping].early_stopping_patience == 3
    assert not (tmp_path / "r").exists()


def test_processes_share_the_validation_batches_and_sum_to_one_process_loss(
    tiny_model_dir, smol_tokenizer
):
    """Two processes score the batches 0, 2 and 1 of the split (batches of 3: 3 + 3 + 2
    examples) and sum: the loss and the count of one process scoring all of them."""
    from types import SimpleNamespace

    from spectune.data.instructions import InstructionCollator, tokenize_examples
    from spectune.models.tokenizer import pad_token_id
    from spectune.tuning import checks, recipe
    from spectune.tuning.methods import get_method
    from spectune.tuning.methods.base import BuildContext
    from spectune.tuning.trainer import validation_loss

    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, data__n_validation=8))
    data = checks.load_run_data(config)
    features, _ = tokenize_examples(data.validation, smol_tokenizer, max_length=96)
    collate = InstructionCollator(pad_token_id(smol_tokenizer))
    ctx = BuildContext(config, tiny_model_dir, Path("."), False)
    model = recipe.build_model(get_method("lora"), ctx).model
    with torch.no_grad():  # B = 0 would make the adapter a no-op: give it weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    stub = SimpleNamespace(_prepare_inputs=lambda b: b, compute_loss=lambda m, b: m(**b).loss)
    whole, n = validation_loss(stub, model, features, collate, 3)
    loss0, n0 = validation_loss(stub, model, features, collate, 3, share=(0, 2))
    loss1, n1 = validation_loss(stub, model, features, collate, 3, share=(1, 2))
    assert (n, n0, n1) == (8, 5, 3)
    assert (loss0 * n0 + loss1 * n1) / 8 == pytest.approx(whole, rel=1e-6)
    assert abs(loss0 - loss1) > 1e-3  # the shares differ: the sum is not a coincidence
    other = iter([loss1 * n1, n1])  # what distributed.total adds from rank 1
    summed, count = validation_loss(stub, model, features, collate, 3, share=(0, 2),
                                    total=lambda v: v + next(other))  # fmt: skip
    assert count == 8 and summed == pytest.approx(whole, rel=1e-6)


def test_accelerate_fsdp_environment_counts_as_fsdp(tiny_model_dir, monkeypatch):
    from spectune.tuning.checks import fsdp_requested

    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "lora"))
    assert not fsdp_requested(config)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert fsdp_requested(config)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert fsdp_requested(config.replace(train={**config.train, "fsdp": "full_shard"}))


def test_shardable_methods_are_the_dense_ones():
    from spectune.tuning.methods import METHODS, get_method

    able = {n for n in METHODS.names() if get_method(n).shardable}
    assert able == {"lora", "rslora", "dora", "full"}
    for name in set(METHODS.names()) - able:
        assert get_method(name).unshardable  # every refusal says why


def test_rebuilt_model_takes_the_gathered_trained_tensors(tiny_model_dir, tmp_path):
    """What rank 0 does after FSDP training, checked in one process: a fresh build of the
    method's model with the trained tensors of a full state dict gives the trained model's
    outputs; a missing tensor is refused by name."""
    from spectune.tuning import recipe

    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, "lora", train__max_steps=2))
    run = recipe.setup(config, out=tmp_path / "r", progress=False)
    with run.folder:
        recipe.prepare_training(run)
        recipe.build(run)
        recipe.train(run)
        trained = run.built.model
        state = {k: v.clone() for k, v in trained.state_dict().items()}
        recipe.unshard(run, state)
    assert run.built.model is not trained
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(run.built.model(ids).logits, trained(ids).logits)
    moved = [k for k, v in state.items() if "lora_B" in k and v.abs().max() > 0]
    assert moved  # it trained: B left zero
    state.pop(moved[0])
    with pytest.raises(SpectuneError, match="gathered FSDP state has no tensor .*lora_B"):
        recipe.load_trained(run.built.model, state)


def test_one_process_is_a_world_of_one(monkeypatch):
    from spectune.tuning.scale import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == distributed.World(0, 1, 0)
    assert distributed.on_main(lambda: 7) == 7 and distributed.on_every_rank(lambda: 8) == 8
    assert distributed.total(3.5) == 3.5 and distributed.largest(2.0) == 2.0
    with pytest.raises(SpectuneError, match="bad"):
        distributed.agree("bad")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(SpectuneError, match=r"RANK=2 and WORLD_SIZE=2 do not fit"):
        distributed.world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(SpectuneError, match="RANK='x' is not a whole number"):
        distributed.world()


def test_only_tune_can_be_launched(monkeypatch, capsys):
    from spectune.cli.main import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["describe", "nothing-here"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "spectune: error: (rank 1 of 2) spectune describe runs in one process; of the commands only tune can "
        "be launched with torchrun or accelerate launch (several processes)"
    ]
