"""Studies, sweeps, searches and advise under faults and bad input (issue 20, cases 6, 8 and
parts of 11 and 12): run folders locked while a study lives, any exception of one run is that
run's failure, a study's marker never left "running", bad settings refused in one line."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from spectune.cli.main import main
from spectune.errors import SpectuneError
from spectune.results.runfolder import LOCK, RunFolder
from spectune.studies.study import rate_name, split_study_config, study
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig, yaml_dump
from tests.conftest import tiny_run_config
from tests.studies.test_advice import fake_metrics


def _write_run(out: Path, config: TuneConfig, *, acc: float = 0.5,
               resume: bool = False) -> SimpleNamespace:  # fmt: skip
    """What a finished run writes, through its RunFolder as tune does (lock, marker); a
    complete run is returned as it is on resume."""
    from spectune.results.metrics import RunMetrics

    folder = RunFolder(out, "tune").open(resume=resume)
    with folder:
        if folder.complete:
            return SimpleNamespace(out=out, metrics=RunMetrics.load(out))
        m = fake_metrics(config.method, config.seed, acc=acc, ppl=10.5,
                         lr=config.get("train.learning_rate"))  # fmt: skip
        folder.own("metrics.json", "predictions.jsonl")
        m.save(out)
        u = np.random.default_rng(config.seed).random(config.data.n_eval)
        (out / "predictions.jsonl").write_text("".join(
            json.dumps({"correct_before": False, "correct_after": bool(x < acc)}) + "\n"
            for x in u))  # fmt: skip
        folder.finish()
    return SimpleNamespace(out=out, metrics=m)


def _study_data(model_dir: Path, **study_block) -> dict:
    data = tiny_run_config(model_dir)
    data["data"]["n_eval"] = 20
    data["eval"]["latency_prompts"] = 0
    data["study"] = {"methods": ["lora", "frog"], "seeds": 2, "lr_grid": [1e-2],
                     **study_block}  # fmt: skip
    return data


def _flock_elsewhere(folder: Path) -> bool:
    """Whether another process can take the folder's lock now."""
    code = ("import fcntl, os, sys\n"
            f"fd = os.open({str(folder / LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError:\n    sys.exit(1)\n")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _marker(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


# --------------------------------------------------------------------------- case 6


def test_a_study_holds_the_lock_of_each_run_folder_until_it_ends(tiny_model_dir, tmp_path):
    """Case 6: while the study runs frog-s0, its finished run lora-s0 can be neither
    overwritten by `spectune tune --overwrite` nor locked by another process; the running
    run's folder is locked too; the run itself works under the study's lock."""
    out = tmp_path / "study"
    runs = out / "runs"
    seen: dict[str, object] = {}
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml_dump(tiny_run_config(tiny_model_dir, train__max_steps=1)))

    def run(config, *, out, resume=False, progress=True):
        out = Path(out)
        if out.name == "frog-s0":
            before = (runs / "lora-s0" / "metrics.json").read_bytes()
            seen["tune_code"] = main(["tune", str(cfg), "--out", str(runs / "lora-s0"),
                                      "--overwrite", "--no-progress"])  # fmt: skip
            seen["intact"] = (runs / "lora-s0" / "metrics.json").read_bytes() == before
            seen["finished_free"] = _flock_elsewhere(runs / "lora-s0")
            seen["running_free"] = _flock_elsewhere(out)
        return _write_run(out, config, resume=resume)

    result = study(data=_study_data(tiny_model_dir), out=out, progress=False, run_fn=run)
    assert result.failed_runs == {}
    assert seen == {"tune_code": 2, "intact": True, "finished_free": False,
                    "running_free": False}  # fmt: skip
    assert _marker(runs / "lora-s0")["status"] == "complete"
    # the study ended: its folders are free again
    assert _flock_elsewhere(runs / "lora-s0") and _flock_elsewhere(out)
    RunFolder(runs / "lora-s0", "tune").open(overwrite=True).close()


def test_the_tune_refusal_inside_a_live_study_is_one_line(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "study"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml_dump(tiny_run_config(tiny_model_dir, train__max_steps=1)))
    errs: list[str] = []

    def run(config, *, out, resume=False, progress=True):
        out = Path(out)
        if out.name == "lora-s1":
            capsys.readouterr()
            assert main(["tune", str(cfg), "--out", str(out.parent / "lora-s0"),
                         "--overwrite", "--no-progress"]) == 2  # fmt: skip
            errs.append(capsys.readouterr().err)
        return _write_run(out, config, resume=resume)

    study(data=_study_data(tiny_model_dir, methods=["lora"]), out=out, progress=False, run_fn=run)
    (err,) = errs
    assert err.count("\n") == 1 and err.startswith("spectune: error: output folder")
    assert "lora-s0 is in use by a running spectune (pid" in err


def test_a_sweep_holds_its_run_folders_and_records_any_exception(tiny_model_dir, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    """Cases 6 and 8 on a sweep: r2's OverflowError is its failure, the sweep goes on; while
    r4 runs, r2's folder stays locked; the sweep's marker is "failed", not "running"."""
    sweep_module = importlib.import_module("spectune.studies.sweep")
    path = tmp_path / "s.yaml"
    path.write_text(yaml_dump(tiny_run_config(tiny_model_dir, train__max_steps=1)))
    out = tmp_path / "s"
    seen = {}

    def fake_tune(config, *, out, resume=False, progress=True):
        out = Path(out)
        if config.section("lora").r == 2:
            RunFolder(out, "tune").open().fail("OverflowError: planted")
            raise OverflowError("planted")
        with pytest.raises(SpectuneError, match="is in use by a running spectune"):
            RunFolder(out.parent / "r2", "tune").open(overwrite=True)
        seen["r2_free"] = _flock_elsewhere(out.parent / "r2")
        return _write_run(out, config, resume=resume)

    monkeypatch.setattr(recipe, "tune", fake_tune)
    outcomes = sweep_module.sweep(path, ["r=2,4"], out=out, progress=False)
    assert [o.status for o in outcomes] == ["failed: OverflowError: planted", "complete"]
    assert seen == {"r2_free": False}
    marker = _marker(out)
    assert marker["status"] == "failed" and marker["failed_runs"] == ["r2"]


def test_held_folders_lend_their_lock_to_one_run_and_cap_the_open_files(tmp_path, monkeypatch):
    from spectune.results.runfolder import HeldFolders

    monkeypatch.setattr(HeldFolders, "LIMIT", 2)
    a, b, c = (tmp_path / n for n in "abc")
    with HeldFolders() as held:
        with held.lend(a):
            run = RunFolder(a, "tune").open()  # the run works under the lent lock
            with pytest.raises(SpectuneError, match="is in use"):
                RunFolder(a, "tune").open(overwrite=True)  # another one meanwhile: refused
            run.finish()
        with pytest.raises(SpectuneError, match="is in use"):
            RunFolder(a, "tune").open(overwrite=True)  # held after the run
        held.hold(b)
        held.hold(c)  # past the limit: the oldest (a) is released
        assert _flock_elsewhere(a) and not _flock_elsewhere(b) and not _flock_elsewhere(c)
    assert _flock_elsewhere(b) and _flock_elsewhere(c)


# --------------------------------------------------------------------------- case 8


def test_any_exception_of_one_run_is_its_failure_and_the_study_goes_on(tiny_model_dir, tmp_path):
    """Case 8: an OverflowError (not one of the four errors caught before) in lora-s1 is that
    run's failure, recorded with its type; the other runs finish and the study is analysed."""
    out = tmp_path / "study"

    def run(config, *, out, resume=False, progress=True):
        if Path(out).name == "lora-s1":
            raise OverflowError("int too large to convert to float")
        return _write_run(Path(out), config, resume=resume)

    result = study(data=_study_data(tiny_model_dir), out=out, progress=False, run_fn=run)
    assert result.failed_runs == {"lora-s1": "OverflowError: int too large to convert to float"}
    status = [r["status"].split(":")[0] for r in result.runs]
    assert status == ["complete", "failed", "complete", "complete"]
    marker = _marker(out)
    assert marker["status"] == "failed" and "lora-s1" in marker["error"]
    assert (out / "study.json").is_file() and (out / "report.html").is_file()


def test_an_interrupted_or_crashed_study_is_never_left_running(tiny_model_dir, tmp_path,
                                                               monkeypatch):  # fmt: skip
    """Case 8: Ctrl-C in a run, or a bug after the runs, marks the study failed with the
    reason (its lock released); --resume then finishes it."""
    out = tmp_path / "study"
    data = _study_data(tiny_model_dir)

    def interrupted(config, *, out, resume=False, progress=True):
        if Path(out).name == "frog-s0":
            raise KeyboardInterrupt
        return _write_run(Path(out), config, resume=resume)

    with pytest.raises(KeyboardInterrupt):
        study(data=data, out=out, progress=False, run_fn=interrupted)
    marker = _marker(out)
    assert marker["status"] == "failed" and marker["error"] == "interrupted (KeyboardInterrupt)"
    assert _flock_elsewhere(out) and _flock_elsewhere(out / "runs" / "lora-s0")

    study_module = importlib.import_module("spectune.studies.study")

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(study_module, "summarize_study", broken)

    def runner(config, *, out, resume=False, progress=True):
        return _write_run(Path(out), config, resume=resume)

    with pytest.raises(ZeroDivisionError):
        study(data=data, out=out, resume=True, progress=False, run_fn=runner)
    marker = _marker(out)
    assert marker["status"] == "failed" and marker["error"] == "ZeroDivisionError: planted bug"
    monkeypatch.undo()
    result = study(data=data, out=out, resume=True, progress=False, run_fn=runner)
    assert result.failed_runs == {} and _marker(out)["status"] == "complete"


def _search_base(tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A search's base config on the tiny model and its output folder."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml_dump(tiny_run_config(tiny_model_dir)))
    return base, tmp_path / "search"


def test_a_search_run_raising_any_exception_is_a_failed_trial(tiny_model_dir, tmp_path):
    pytest.importorskip("optuna")
    from spectune.studies.search import search

    base, out = _search_base(tiny_model_dir, tmp_path)

    def run(config, *, out, resume=False, progress=True):
        if config.get("lora.r") == 2:
            raise OverflowError("planted")
        return _write_run(Path(out), config, acc=0.1 * config.get("lora.r"), resume=resume)

    result = search(base, space=["r=2,4,8"], sampler="grid", objectives="accuracy_gain",
                    out=out, progress=False, run_fn=run)  # fmt: skip
    assert list(result.failed_runs.values()) == ["OverflowError: planted"]
    assert len(result.trials) == 3 and _marker(out)["status"] == "failed"


# --------------------------------------------------------------------------- case 12


@pytest.mark.parametrize(("block", "message"), [
    ({"seeds": [0, 0]}, "study.seeds lists seed 0 more than once"),
    ({"seeds": [1, True]}, "study.seeds must be a count or a list of seeds"),
    ({"seeds": []}, "study.seeds must be a count or a list of seeds"),
    ({"lr_grid": [1e-3, 1e-3]}, "study.lr_grid lists rate 0.001 more than once for lora"),
    ({"lr_grid": [1e-3, float("nan")]}, "study.lr_grid must be a list of positive rates"),
    ({"lr_search": {"steps": -5}}, "study.lr_search.steps must be >= 1, got -5"),
    ({"lr_search": {"steps": "ten"}}, "study.lr_search.steps must be an integer"),
    ({"lr_search": {"seed": "a"}}, "study.lr_search.seed must be an integer"),
    ({"match_budget": "yes"}, "study.match_budget must be true or false"),
])  # fmt: skip
def test_bad_study_settings_are_refused_before_the_folder(tiny_model_dir, tmp_path, capsys,
                                                          block, message):  # fmt: skip
    data = _study_data(tiny_model_dir, **block)
    with pytest.raises(SpectuneError, match=message):
        split_study_config(data, "s.yaml")
    path = tmp_path / "s.yaml"
    path.write_text(yaml_dump(data))
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.split(" ")[0] in err
    assert not (tmp_path / "out").exists()


def test_learning_rates_apart_by_1e_8_get_their_own_folders(tiny_model_dir, tmp_path):
    """Case 12: two rates that six significant digits print alike used to share a folder."""
    assert rate_name(1e-3) == "0.001" and rate_name(3e-5) == "3e-05"
    assert rate_name(1e-3 + 1e-11) != rate_name(1e-3)
    calls: list[str] = []

    def run(config, *, out, resume=False, progress=True):
        calls.append(Path(out).name)
        return _write_run(Path(out), config, acc=0.3 if config.method == "lora" else 0.2)

    data = _study_data(tiny_model_dir, methods=["lora"], seeds=1,
                       lr_grid=[1e-3, 1e-3 + 1e-11], lr_search={"validation": 8})  # fmt: skip
    result = study(data=data, out=tmp_path / "s", progress=False, run_fn=run)
    search_runs = [c for c in calls if "-lr" in c]
    assert len(search_runs) == 2 and len(set(search_runs)) == 2
    assert all((tmp_path / "s" / "lr_search" / c / "metrics.json").is_file() for c in search_runs)
    assert result.lr_search[0]["scores"][0] is not None and result.lr_search[0]["scores"][1]


def test_sweep_resume_with_another_grid_is_refused(tiny_model_dir, tmp_path, monkeypatch,
                                                   capsys):  # fmt: skip
    """Case 12: --resume with a changed --grid names it and changes nothing (results.csv and the
    report would otherwise disagree)."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml_dump(tiny_run_config(tiny_model_dir, train__max_steps=1)))
    out = tmp_path / "s"
    monkeypatch.setattr(recipe, "tune", lambda config, *, out, resume=False, progress=True:
                        _write_run(Path(out), config, resume=resume))  # fmt: skip
    assert main(["sweep", str(path), "--grid", "r=2,4", "--out", str(out), "--no-progress"]) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    args = ["sweep", str(path), "--grid", "r=2,8", "--out", str(out), "--resume", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume: this sweep differs" in err and "grid.r" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    # the same grid resumes
    assert main([*args[:3], "r=2,4", *args[4:]]) == 0


# --------------------------------------------------------------------------- advise (11, 12)


def _advise_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "study"
    for method in ("lora", "frog"):
        for seed in (0, 1):
            run = folder / "runs" / f"{method}-s{seed}"
            run.mkdir(parents=True)
            fake_metrics(method, seed, acc=0.5, ppl=10.5).save(run)
            (run / "predictions.jsonl").write_text(
                json.dumps({"correct_before": False, "correct_after": True}) + "\n")  # fmt: skip
    return folder


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--memory-gib", "nan", "--memory-gib must be finite"),
    ("--memory-gib", "-1", "--memory-gib must be > 0, got -1.0"),
    ("--max-train-s", "inf", "--max-train-s must be finite"),
    ("--max-ms-per-token", "0", "--max-ms-per-token must be > 0"),
    ("--max-forgetting", "-0.1", "--max-forgetting must be >= 0"),
    ("--max-forgetting", "nan", "--max-forgetting must be finite"),
    ("--n-train", "-5", "--n-train must be >= 1"),
])  # fmt: skip
def test_advise_refuses_nan_and_negative_limits(tmp_path, capsys, flag, value, message):
    folder = _advise_folder(tmp_path)
    assert main(["advise", str(folder), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("line", ["{not json", "[1, 2]", '{"correct_after": "yes"}'])
def test_advise_on_damaged_predictions_names_the_file_and_line(tmp_path, capsys, line):
    folder = _advise_folder(tmp_path)
    path = folder / "runs" / "frog-s1" / "predictions.jsonl"
    path.write_text(path.read_text() + line + "\n")
    assert main(["advise", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:2:" in err and "re-run the run" in err


def test_advise_with_peak_rss_null_or_a_string(tmp_path, capsys):
    """Case 11: null is "not measured" (a memory limit says so); a string is a damaged file,
    named with the field."""
    folder = _advise_folder(tmp_path)
    path = folder / "runs" / "frog-s0" / "metrics.json"
    data = json.loads(path.read_text())
    for run in ("frog-s0", "frog-s1"):
        p = folder / "runs" / run / "metrics.json"
        d = json.loads(p.read_text())
        d["cost"]["peak_rss_bytes"] = None
        p.write_text(json.dumps(d))
    assert main(["advise", str(folder), "--memory-gib", "4", "--json"]) == 0
    advice = json.loads(capsys.readouterr().out)
    assert advice["excluded"] == {"frog": "peak memory was not measured (limit 4 GiB)"}
    assert advice["choice"] == "lora"
    data["cost"]["peak_rss_bytes"] = "big"
    path.write_text(json.dumps(data))
    assert main(["advise", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err
    assert "cost.peak_rss_bytes must be a number, got str 'big'" in err


# --------------------------------------------------------------------------- search (11)


def test_search_resume_on_a_corrupt_optuna_db_is_one_line(tiny_model_dir, tmp_path):
    pytest.importorskip("optuna")
    from spectune.studies.search import search

    base, out = _search_base(tiny_model_dir, tmp_path)

    def run(config, *, out, resume=False, progress=True):
        return _write_run(Path(out), config, acc=0.1 * config.get("lora.r"), resume=resume)

    kw = dict(space=["r=2,4"], sampler="grid", objectives="accuracy_gain", out=out,
              progress=False, run_fn=run)  # fmt: skip
    search(base, **kw)
    db = out / "optuna.db"
    good = db.read_bytes()
    for damaged in (b"this is not a database" * 100, good[: len(good) // 2]):
        db.write_bytes(damaged)
        files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        with pytest.raises(SpectuneError) as info:
            search(base, resume=True, **kw)
        msg = str(info.value)
        assert "\n" not in msg and str(db) in msg and "--overwrite" in msg
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


# --------------------------------------------------------------------------- report (11)


def test_report_with_a_malformed_by_category(tmp_path, capsys):
    """Case 11: a category that is not a mapping renders as dashes; by_category that is not a
    mapping is one line naming the file and the field."""
    from tests.report.pages.test_run import make_run, metrics

    m = metrics()
    m["after"]["accuracy"]["by_category"] = {"qa": 5, "math": "junk", "code": [1, 2],
                                             "ok": {"n": "x", "accuracy": math.nan}}  # fmt: skip
    folder = make_run(tmp_path / "run", m, plots=[], full=False)
    assert main(["report", str(folder)]) == 0
    html = (folder / "report.html").read_text()
    assert "<td>qa</td>" in html or ">qa<" in html
    m["after"]["accuracy"]["by_category"] = "junk"
    bad = make_run(tmp_path / "bad", m, plots=[], full=False)
    capsys.readouterr()
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json" in err and "by_category" in err
