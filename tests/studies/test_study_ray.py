"""The Ray Tune backend of sweeps, studies and searches: an address that cannot be reached is
refused before anything starts; on one local instance of 2 CPUs (started once for the
module), two tiny-model trials run at once, a sweep's folder is file for file the local
backend's, a failed trial is recorded while the others finish, and an Optuna search runs
through Ray Tune's OptunaSearch and resumes from its storage."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from spectune.errors import SpectuneError
from spectune.studies.study import study
from spectune.studies.sweep import sweep
from spectune.tuning.config import yaml_dump
from tests.conftest import require, tiny_run_config
from tests.studies.test_study import _study_data

ROOT = Path(__file__).resolve().parents[2]

#: run folders whose run fails (planted)
FAIL = {"full-s0", "trial-001"}


def failing_tune(config, *, out, resume=False, progress=True):
    """:func:`tune`, except for the runs named in :data:`FAIL` (a planted failure)."""
    from spectune.tuning.recipe import tune

    if Path(out).name in FAIL:
        raise RuntimeError(f"planted failure of {Path(out).name}")
    return tune(config, out=out, resume=resume, progress=progress)


def meeting_tune(config, *, out, resume=False, progress=True):
    """:func:`failing_tune`, after waiting (up to a minute) in a lobby folder beside the study
    folder until another trial is there: trials that a backend runs at the same time are then
    certain to overlap, however their start-up is staggered (trials run one after the other
    wait out the minute and do not overlap). Once two have met, later trials do not wait."""
    import time

    lobby = Path(out).parents[2] / "lobby"  # beside the study folder, not in it
    lobby.mkdir(exist_ok=True)
    me, met = lobby / Path(out).name, lobby / "met.flag"
    me.touch()
    try:
        deadline = time.monotonic() + 60
        while not met.exists() and time.monotonic() < deadline:
            if any(p not in (me, met) for p in lobby.iterdir()):
                met.touch()
            time.sleep(0.05)
        return failing_tune(config, out=out, resume=resume, progress=progress)
    finally:
        me.unlink()


def _span(run_dir: Path) -> tuple[dt.datetime, dt.datetime]:
    marker = json.loads((run_dir / "run.json").read_text())
    return (dt.datetime.fromisoformat(marker["started"]),
            dt.datetime.fromisoformat(marker["finished"]))  # fmt: skip


def _overlap(a: Path, b: Path) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _tiny(model_dir: Path) -> dict:
    data = tiny_run_config(model_dir)
    data["train"]["max_steps"] = 2
    data["eval"]["latency_prompts"] = 0
    return data


def test_an_unreachable_ray_address_is_one_error_and_nothing_starts(tiny_model_dir, tmp_path,
                                                                    capsys):  # fmt: skip
    ray = require("ray", "the Ray backend")
    if ray.is_initialized():  # another module's instance: these calls must reach for their own
        ray.shutdown()
    out = tmp_path / "study"
    with pytest.raises(SpectuneError, match="cannot reach a Ray cluster at '127.0.0.1:1'"):
        study(data=_study_data(tiny_model_dir), out=out, backend="ray", address="127.0.0.1:1",
              progress=False)  # fmt: skip
    assert not out.exists()
    from spectune.cli.main import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml_dump(tiny_run_config(tiny_model_dir)))
    for cmd in (["sweep", str(cfg), "--grid", "lora.r=2,4"],
                ["search", str(cfg), "--space", "lora.r=2,4", "--trials", "2"]):  # fmt: skip
        capsys.readouterr()
        assert main([*cmd, "--out", str(out), "--backend", "ray", "--address",
                     "ray://127.0.0.1:1", "--no-progress"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.startswith("spectune: error: cannot reach a Ray cluster at 'ray://127.0.0.1:1'")
        assert err.count("\n") == 1 and not out.exists()
    with pytest.raises(SpectuneError, match="not host:port"):
        study(data=_study_data(tiny_model_dir), out=out, backend="ray", address="nowhere",
              progress=False)  # fmt: skip
    if not os.environ.get("RAY_ADDRESS") and not Path("/tmp/ray/ray_current_cluster").exists():
        # 'auto' with no cluster started on this machine
        with pytest.raises(SpectuneError, match="cannot reach a Ray cluster at 'auto'"):
            sweep(cfg, ["lora.r=2,4"], out=out, backend="ray", address="auto", progress=False)
        assert not out.exists() and not ray.is_initialized()


def test_a_ray_trial_error_is_one_line():
    exceptions = require("ray", "the Ray backend").exceptions
    from spectune.studies.backends import TrialFailed, trial_error

    def wrapped(exc: Exception) -> Exception:
        try:
            raise exc
        except Exception as e:  # as Ray hands a trial's exception back: traceback in the text
            return exceptions.RayTaskError(
                "train", "Traceback\n  File ...", e
            ).as_instanceof_cause()

    # a run's failure is its own message, whatever wraps it
    assert trial_error(wrapped(TrialFailed("dataset file x.jsonl does not exist"))) == (
        "dataset file x.jsonl does not exist")  # fmt: skip
    assert trial_error(wrapped(ValueError("boom\nline 2"))) == "Ray trial failed: ValueError: boom"
    assert trial_error(exceptions.RayActorError()).startswith("Ray trial failed: RayActorError: ")


@pytest.fixture(scope="module")
def ray_2cpus(tmp_path_factory):
    """One local Ray instance of 2 CPUs for the module; its workers import this worktree and
    these tests (the planted failures)."""
    ray = require("ray", "the Ray backend")
    require("optuna", "spectune search")
    from spectune.studies.backends import Backend, start_ray

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "SPECTUNE_CACHE")}
    # pytest imports this file as a top-level module (its folder on sys.path): so do the workers
    paths = [str(ROOT / "src"), str(ROOT), str(Path(__file__).parent),
             os.environ.get("PYTHONPATH", "")]  # fmt: skip
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    os.environ["SPECTUNE_CACHE"] = str(tmp_path_factory.mktemp("ray-cache"))
    if ray.is_initialized():
        ray.shutdown()
    backend = Backend("ray", cpus=2)
    start_ray(backend)
    assert ray.cluster_resources()["CPU"] == 2
    yield backend
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow  # Ray and tiny runs: about 2 minutes on an idle 2-core machine
def test_a_sweep_on_ray_runs_two_trials_at_once_into_the_local_layout(ray_2cpus, tiny_model_dir,
                                                                      tmp_path):  # fmt: skip
    from spectune.results.metrics import RunMetrics

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml_dump(_tiny(tiny_model_dir)))
    grid = ["lora.r=2,4"]
    on_ray = sweep(cfg, grid, out=tmp_path / "ray", progress=False, backend=ray_2cpus)
    local = sweep(cfg, grid, out=tmp_path / "local", progress=False)
    assert [o.status for o in on_ray] == [o.status for o in local] == ["complete", "complete"]
    ok = [o.name for o in on_ray]
    assert _overlap(*(tmp_path / "ray/runs" / n for n in ok))  # two trials at the same time
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    for n in ok:  # the same seeded runs: the same numbers
        a, b = (RunMetrics.load(tmp_path / w / "runs" / n) for w in ("ray", "local"))
        assert a.training.final_loss == pytest.approx(b.training.final_loss, rel=1e-4)
        assert a.settings == b.settings and a.cost.steps == b.cost.steps == 2
    # --resume: finished runs are taken as they are, without a trial
    before = {n: _span(tmp_path / "ray/runs" / n) for n in ok}
    again = sweep(cfg, grid, out=tmp_path / "ray", progress=False, backend=ray_2cpus,
                  resume=True)  # fmt: skip
    assert [o.status for o in again] == [o.status for o in on_ray]
    assert {n: _span(tmp_path / "ray/runs" / n) for n in ok} == before


@pytest.mark.slow  # Ray and four tiny runs
def test_a_study_on_ray_records_a_failed_trial_while_the_others_finish(ray_2cpus, tiny_model_dir,
                                                                       tmp_path):  # fmt: skip
    data = _study_data(tiny_model_dir, methods=["lora", "full"], seeds=[0],
                       lr_grid={"lora": [1e-3, 1e-2], "full": [1e-4]})  # fmt: skip
    data["data"]["n_eval"] = 8
    data["train"]["max_steps"] = 2
    out = tmp_path / "study"
    result = study(data=data, out=out, progress=False, run_fn=meeting_tune, backend=ray_2cpus)
    assert result.failed_runs == {"full-s0": "planted failure of full-s0"}
    assert [r["status"] for r in result.runs] == ["complete", "failed: planted failure of full-s0"]
    assert (out / "runs/lora-s0/metrics.json").is_file()
    assert next(s for s in result.lr_search if s["method"] == "lora")["chosen"] in (1e-3, 1e-2)
    trials = [out / "lr_search" / n for n in ("lora-lr0.001", "lora-lr0.01", "full-lr0.0001")]
    # two of the three learning-rate trials at the same time (which two is Ray's choice)
    assert any(_overlap(a, b) for i, a in enumerate(trials) for b in trials[i + 1 :])
    assert "failed: planted failure" in (out / "results.csv").read_text()


@pytest.mark.slow  # Ray and four tiny runs
def test_an_optuna_search_through_ray_tune_records_failures_and_resumes(ray_2cpus, tiny_model_dir,
                                                                        tmp_path):  # fmt: skip
    import optuna

    from spectune.results.metrics import RunMetrics
    from spectune.studies.search import search

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml_dump(_tiny(tiny_model_dir)))
    out = tmp_path / "search"
    kw = dict(space=["lora.r=2,4", "learning_rate=1e-3..3e-2:log"], trials=3, population=2,
              out=out, progress=False, backend=ray_2cpus)  # fmt: skip
    result = search(cfg, run_fn=failing_tune, **kw)
    assert [(t["run"], t["state"]) for t in result.trials] == [
        ("trial-000", "complete"), ("trial-001", "failed"), ("trial-002", "complete")]  # fmt: skip
    assert result.failed_runs == {"trial-001": "planted failure of trial-001"}
    assert result.backend == "ray" and result.pareto
    # what Ray Tune told the study is what the runs measured
    storage = f"sqlite:///{out}/optuna.db"
    stored = optuna.load_study(study_name="spectune-search", storage=storage).trials
    for t in (stored[0], stored[2]):
        m = RunMetrics.load(out / "runs" / t.user_attrs["run"])
        assert t.values == pytest.approx([m.learning.accuracy_gain,
                                          m.forgetting.perplexity_ratio - 1])  # fmt: skip
    assert stored[1].state == optuna.trial.TrialState.FAIL
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    # resume: only the failed trial runs again (same values, same folder); the others are kept
    before = {n: _span(out / "runs" / n) for n in ("trial-000", "trial-002")}
    again = search(cfg, resume=True, **kw)
    assert [(t["run"], t["state"]) for t in again.trials] == [
        ("trial-000", "complete"), ("trial-002", "complete"), ("trial-001", "complete")]  # fmt: skip
    assert again.trials[2]["params"] == result.trials[1]["params"]
    assert {n: _span(out / "runs" / n) for n in before} == before
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
