"""Optuna searches: the space and objectives parsed, the Pareto set of a fake objective known
by hand, seeding, resume from the storage (finished trials not redone, an interrupted or failed
trial run again in its own folder), a changed search refused, duplicates not run twice, and
one search on the tiny model end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from spectune.errors import SpectuneError
from spectune.results.stats import pareto_front, pareto_set
from spectune.tuning.config import yaml_dump
from tests.conftest import require, tiny_run_config
from tests.studies.test_advice import fake_metrics


@pytest.fixture(autouse=True)
def _optuna():
    require("optuna", "spectune search")


def _search():
    from spectune.studies.search import search

    return search


# --------------------------------------------------------------------------- units


def test_pareto_set_on_a_hand_built_three_objective_table():
    #        gain  forgetting  seconds   (max, min, min)
    table = [
        (0.30, 0.10, 50.0),  # a: front
        (0.30, 0.10, 60.0),  # b: a is as good everywhere and faster -> dominated
        (0.20, 0.05, 90.0),  # c: least forgetting -> front
        (0.10, 0.20, 10.0),  # d: fastest -> front
        (0.10, 0.20, 20.0),  # e: d beats it -> dominated
        (0.30, 0.10, 50.0),  # f: equal to a -> front too (neither beats the other)
        None,  # a failed trial
        (0.40, math.nan, 1.0),  # an unmeasured value: never on the front
    ]
    assert pareto_set(table, ["maximize", "minimize", "minimize"]) == [
        True, False, True, True, False, True, False, False]  # fmt: skip
    # the two-objective front of the studies is the same function
    two = [(0.3, 0.5), (0.2, 0.1), (0.15, 0.2), (0.05, 0.0)]
    assert pareto_front(*zip(*two, strict=True)) == pareto_set(two, ["maximize", "minimize"])
    with pytest.raises(SpectuneError, match="direction 'max' is not"):
        pareto_set(two, ["max", "minimize"])


def test_space_and_objectives_are_parsed_and_checked():
    from spectune.studies.search_space import Param, parse_objectives, parse_space

    r, lr, d, method, targets, step = parse_space([
        "r=4,8,16", "learning_rate=1e-5..1e-2:log", "lora_dropout=0..0.2", "method=lora,dora",
        "target_modules=[q_proj,v_proj],all-linear", "lora_alpha=8..64:step=8"])  # fmt: skip
    assert r == Param("r", "categorical", choices=(4, 8, 16))
    assert lr == Param("train.learning_rate", "float", 1e-5, 1e-2, log=True)
    assert d == Param("lora_dropout", "float", 0, 0.2)
    assert step == Param("lora_alpha", "int", 8, 64, step=8)
    # a list value is held by Optuna as its JSON text and comes back as the list
    assert targets.choices == (["q_proj", "v_proj"], "all-linear")
    assert targets.value('["q_proj", "v_proj"]') == ["q_proj", "v_proj"]
    assert method.text() == "lora, dora" and lr.text() == "1e-05..0.01 (float, log)"
    for bad, message in [
        (["r"], "is not key=a,b,c"),
        (["r=4,8", "r=16,32"], "gives 'r' twice"),
        (["r=8"], "has one value: give it as an override"),
        (["r=8..4"], "low bound must be below"),
        (["learning_rate=0..1e-3:log"], "log range needs a low bound > 0"),
        (["r=2..8:log:step=2"], "log and step exclude"),
        (["r=2..8:sqrt"], "unknown option 'sqrt'"),
        (["r=two..8"], "'two' is not a number"),
        (["r=4,4"], "repeats a value"),
        (["output_dir=a,b"], "cannot vary output_dir"),
    ]:
        with pytest.raises(SpectuneError, match=message):
            parse_space(bad)
    a, b = parse_objectives("accuracy_gain,forgetting")
    assert (a.direction, b.direction, a.mode, b.mode) == ("maximize", "minimize", "max", "min")
    (c,) = parse_objectives(["train_seconds:max"])
    assert c.direction == "maximize"
    with pytest.raises(SpectuneError, match="unknown objective 'gain'"):
        parse_objectives("gain")
    with pytest.raises(SpectuneError, match="gives 'forgetting' twice"):
        parse_objectives("forgetting,forgetting:min")
    # each objective read from a run's metrics: gain 0.3 (0 -> 0.3), forgetting 12/10 - 1
    m = fake_metrics("lora", 0, acc=0.3, ppl=12.0)
    gain, fgt, secs = parse_objectives("accuracy_gain,forgetting,train_seconds")
    assert gain.value(m) == pytest.approx(0.3) and fgt.value(m) == pytest.approx(0.2)
    assert secs.value(m) == 10.0


# --------------------------------------------------------------------------- fake runs

#: (method, r) -> (accuracy gain, perplexity after; before is 10): Pareto set by hand below
TABLE = {
    ("lora", 2): (0.20, 10.1),  # dominated by dora r2 (same forgetting, less gain)
    ("lora", 4): (0.30, 10.5),
    ("lora", 8): (0.32, 12.0),
    ("dora", 2): (0.22, 10.1),
    ("dora", 4): (0.28, 10.6),  # dominated by lora r4
    ("dora", 8): (0.35, 12.5),
}
PARETO = {("dora", 2), ("lora", 4), ("lora", 8), ("dora", 8)}


def _fake_run(calls: list | None = None, *, fail: set[str] = frozenset(),
              interrupt: set[str] | None = None, smooth: bool = False):  # fmt: skip
    """A run function writing what a finished run writes, with known objectives."""

    def run(config, *, out, resume=False, progress=True):
        out = Path(out)
        if calls is not None:
            calls.append(out.name)
        if interrupt and out.name in interrupt:
            interrupt.discard(out.name)  # once
            raise KeyboardInterrupt
        if out.name in fail:
            raise RuntimeError(f"planted failure of {out.name}")
        r = config.get("lora.r")
        if smooth:  # gain grows with r and lr, forgetting with r and falls with dropout
            lr = config.get("train.learning_rate")
            acc = 0.05 * math.log2(r) + 0.02 * (math.log10(lr) + 5)
            ppl = 10.0 * (1 + 0.01 * r - 0.05 * config.get("lora.lora_dropout"))
        else:
            acc, ppl = TABLE[(config.method, r)]
        out.mkdir(parents=True, exist_ok=True)
        m = fake_metrics(config.method, config.seed, acc=acc, ppl=ppl)
        m.save(out)
        return SimpleNamespace(out=out, metrics=m)

    return run


def _base(tmp_path: Path, tiny_model_dir: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(yaml_dump(tiny_run_config(tiny_model_dir)))
    return path


def test_grid_search_of_a_fake_objective_returns_the_known_pareto_set(tiny_model_dir, tmp_path):
    import optuna

    search = _search()
    calls: list[str] = []
    out = tmp_path / "grid"
    result = search(_base(tmp_path, tiny_model_dir), space=["method=lora,dora", "r=2,4,8"],
                    sampler="grid", out=out, progress=False, run_fn=_fake_run(calls))  # fmt: skip
    assert len(calls) == 6 and len(result.trials) == 6  # --trials defaults to the grid's size
    found = {(p["method"], p["r"]) for p in result.pareto}
    assert found == PARETO
    by_point = {(t["params"]["method"], t["params"]["r"]): t for t in result.trials}
    for point, (gain, ppl) in TABLE.items():
        assert by_point[point]["values"] == pytest.approx([gain, ppl / 10 - 1])
        assert by_point[point]["pareto"] == (point in PARETO)
    # Optuna's own Pareto front of the stored study is the same set of trials
    study = optuna.load_study(study_name="spectune-search", storage=f"sqlite:///{out}/optuna.db")
    assert {t.number for t in study.best_trials} == {p["trial"] for p in result.pareto}
    # the files: pareto.csv / pareto.json hold the set, results.csv flags it, the report shows it
    with (out / "pareto.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["method"], int(r["r"])) for r in rows} == PARETO
    assert rows[0].keys() >= {"run", "trial", "accuracy_gain", "forgetting", "method", "r"}
    assert json.loads((out / "pareto.json").read_text())["pareto"] == result.pareto
    with (out / "results.csv").open() as fh:
        flagged = {r["name"] for r in csv.DictReader(fh) if r["pareto"] == "True"}
    assert flagged == {p["run"] for p in result.pareto}
    html = (out / "report.html").read_text()
    assert "Pareto set" in html and "search space" in html
    assert (out / "plots/pareto.png").is_file() and (out / "runs/trial-000/metrics.json").is_file()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_nsga2_search_is_seeded_and_its_pareto_set_is_optunas(tiny_model_dir, tmp_path):
    import optuna

    from spectune.studies.search_space import make_sampler, parse_space

    search = _search()
    base = _base(tmp_path, tiny_model_dir)
    space = ["r=2..16", "lora_dropout=0..0.3", "learning_rate=1e-5..1e-2:log"]
    runs = [search(base, space=space, trials=8, population=4, seed=3, out=tmp_path / f"s3-{i}",
                   progress=False, run_fn=_fake_run(smooth=True)) for i in range(2)]  # fmt: skip
    a, b = ([t["params"] for t in r.trials] for r in runs)
    assert a == b  # the same seed samples the same points; another seed, others
    other = optuna.create_study(sampler=make_sampler("nsga2", 4, parse_space(space), 4),
                                directions=["maximize", "minimize"])  # fmt: skip
    first = other.ask()
    assert {p.key: p.value(p.suggest(first)) for p in parse_space(space)} != a[0]
    result = runs[0]
    assert result.sampler == {"name": "nsga2", "seed": 3, "population": 4}
    assert all(t["state"] == "complete" for t in result.trials) and len(result.trials) == 8
    # the Pareto set is every non-dominated run (checked pairwise here; a trial that repeated
    # an earlier one's settings has no run of its own) and Optuna's own front
    own = [t for t in result.trials if not t["same_as"]]
    expect = {t["number"] for t in own
              if not any(q["values"][0] >= t["values"][0] and q["values"][1] <= t["values"][1]
                         and q["values"] != t["values"] for q in own)}  # fmt: skip
    assert {p["trial"] for p in result.pareto} == expect and expect
    study = optuna.load_study(study_name="spectune-search",
                              storage=f"sqlite:///{tmp_path / 's3-0' / 'optuna.db'}")  # fmt: skip
    front = {t.user_attrs.get("same_as") or t.user_attrs["run"] for t in study.best_trials}
    assert front == {p["run"] for p in result.pareto}
    assert all(isinstance(t["params"]["r"], int) and 2 <= t["params"]["r"] <= 16
               for t in result.trials)  # fmt: skip


def test_search_resumes_from_its_storage_without_redoing_trials(tiny_model_dir, tmp_path):
    search = _search()
    base = _base(tmp_path, tiny_model_dir)
    out = tmp_path / "s"
    space = ["r=2..16", "lora_dropout=0..0.3", "learning_rate=1e-5..1e-2:log"]
    kw = dict(space=space, sampler="random", out=out, progress=False)  # no repeated settings

    # interrupted at trial-002 (Ctrl-C): the storage keeps it "running", the folder is marked
    # failed (never left "running") and resumable
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        search(base, trials=4, run_fn=_fake_run(calls, interrupt={"trial-002"}, smooth=True),
               **kw)  # fmt: skip
    assert calls == ["trial-000", "trial-001", "trial-002"]
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] == "failed" and marker["error"] == "interrupted (KeyboardInterrupt)"
    import optuna

    study = optuna.load_study(study_name="spectune-search", storage=f"sqlite:///{out}/optuna.db")
    interrupted = study.trials[2]
    assert interrupted.state == optuna.trial.TrialState.RUNNING

    # resume: trial-002 again with its own values in its folder, then trial-004 (the queued
    # retry took number 3); a planted failure of trial-004 is recorded, the search is "failed"
    calls.clear()
    result = search(base, trials=4, resume=True,
                    run_fn=_fake_run(calls, fail={"trial-004"}, smooth=True), **kw)  # fmt: skip
    assert calls == ["trial-002", "trial-004"]
    retried = next(t for t in result.trials if t["run"] == "trial-002")
    assert retried["params"] == {k: v for k, v in interrupted.params.items()}
    assert retried["number"] == 3 and retried["state"] == "complete"  # a new trial, same folder
    assert result.failed_runs == {"trial-004": "planted failure of trial-004"}
    assert [t["run"] for t in result.trials] == ["trial-000", "trial-001", "trial-002",
                                                 "trial-004"]  # fmt: skip
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] == "failed" and "trial-004" in marker["error"]
    with (out / "results.csv").open() as fh:
        status = {r["name"]: r["status"] for r in csv.DictReader(fh)}
    assert status["trial-004"] == "failed: planted failure of trial-004"

    # resume with more trials: the failed one runs again, two new ones, nothing else
    calls.clear()
    result = search(base, trials=6, resume=True, run_fn=_fake_run(calls, smooth=True), **kw)
    assert calls == ["trial-004", "trial-006", "trial-007"]
    assert result.failed_runs == {} and len(result.trials) == 6
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    # nothing left to do: no run at all
    calls.clear()
    again = search(base, trials=6, resume=True, run_fn=_fake_run(calls, smooth=True), **kw)
    assert calls == [] and again.pareto == result.pareto

    # a changed search is refused, naming what changed (only --trials may change)
    with pytest.raises(SpectuneError, match=r"in: search.objectives, search.space.r.high"):
        search(base, trials=6, resume=True, objectives="accuracy_gain", run_fn=_fake_run(),
               **{**kw, "space": ["r=2..32", *space[1:]]})  # fmt: skip
    with pytest.raises(SpectuneError, match=r"in: train.max_steps"):
        search(base, trials=6, resume=True, run_fn=_fake_run(), overrides=["train.max_steps=9"],
               **kw)  # fmt: skip


def test_a_trial_that_trains_what_an_earlier_one_trained_is_not_run(tiny_model_dir, tmp_path):
    search = _search()
    calls: list[str] = []

    def run(config, *, out, resume=False, progress=True):
        calls.append(Path(out).name)
        m = fake_metrics(config.method, 0, acc=0.1 * (config.get("lora.r") or 1), ppl=11.0)
        Path(out).mkdir(parents=True, exist_ok=True)  # made for its lock
        m.save(out)
        return SimpleNamespace(out=out, metrics=m)

    # full fine-tuning does not read lora.r: full at r=2 and r=4 is one run
    result = search(_base(tmp_path, tiny_model_dir), space=["method=lora,full", "r=2,4"],
                    sampler="grid", out=tmp_path / "d", progress=False, run_fn=run)  # fmt: skip
    assert len(calls) == 3 and len(result.trials) == 4
    dup = [t for t in result.trials if t["same_as"]]
    assert len(dup) == 1 and dup[0]["params"]["method"] == "full"
    first = next(t for t in result.trials if t["run"] == dup[0]["same_as"] and not t["same_as"])
    assert dup[0]["values"] == first["values"]
    with (tmp_path / "d/results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3  # one row per run


def test_search_bad_inputs_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    from spectune.cli.main import main

    base = str(_base(tmp_path, tiny_model_dir))
    out = tmp_path / "bad"
    for argv, message in [
        ([], "--trials N is needed"),
        (["--trials", "3", "--sampler", "grid", "--space", "r=2..8"], "r is a range"),
        (["--sampler", "grid", "--space", "r=2,4", "--trials", "3"], "the grid has 2"),
        (["--trials", "3", "--population", "8", "--sampler", "tpe"], "goes with --sampler nsga2"),
        (["--trials", "3", "--space", "lora.r=0,4"], "--space lora.r=0"),
        (["--trials", "3", "--cpus-per-trial", "2"], "--cpus-per-trial is for --backend ray"),
        (["--trials", "3", "--backend", "ray", "--cpus", "1", "--cpus-per-trial", "2"],
         "more than the local Ray instance's 1 CPUs"),
        (["--trials", "3", "--backend", "ray", "--address", "auto", "--cpus", "2"],
         "--cpus sizes the local Ray instance"),
    ]:  # fmt: skip
        assert main(["search", base, "--out", str(out), "--no-progress", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
        assert not out.exists()


def test_search_on_the_tiny_model_end_to_end(tiny_model_dir, tmp_path, capsys):
    from spectune.cli.main import main
    from spectune.results.metrics import RunMetrics
    from spectune.studies.search import SearchResult

    data = tiny_run_config(tiny_model_dir)
    data["train"]["max_steps"] = 2
    data["eval"]["latency_prompts"] = 0
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml_dump(data))
    out = tmp_path / "out"
    code = main(["search", str(path), "--space", "lora.r=2,4", "learning_rate=1e-3..3e-2:log",
                 "--trials", "3", "--population", "2", "--out", str(out), "--no-progress"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "Pareto set: accuracy_gain (maximize), forgetting (minimize)" in printed.out
    result = SearchResult.load(out)
    assert [t["state"] for t in result.trials] == ["complete"] * 3
    for t in result.trials:  # the objectives told to Optuna are the runs' own numbers
        if t["same_as"]:
            continue
        m = RunMetrics.load(out / "runs" / t["run"])
        assert m.config["lora"]["r"] == t["params"]["lora.r"]
        assert m.config["train"]["learning_rate"] == pytest.approx(
            t["params"]["train.learning_rate"]
        )
        assert t["values"] == pytest.approx([m.learning.accuracy_after - m.learning.accuracy_before,
                                             m.forgetting.perplexity_ratio - 1])  # fmt: skip
    assert 1 <= len(result.pareto) <= 3
    assert (out / "report.html").is_file() and (out / "plots/pareto.png").is_file()
    assert json.loads((out / "run.json").read_text())["kind"] == "search"
