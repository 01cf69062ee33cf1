"""Studies: the learning-rate search on a fake objective, the study flow with a fake run
function (resume, changed config, failures), and one study on the tiny model end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from spectune.errors import SpectuneError
from spectune.studies.study import (
    StudyResult,
    search_learning_rate,
    split_study_config,
    study,
)
from spectune.tuning.config import changed_fields
from tests.conftest import tiny_run_config
from tests.studies.test_advice import fake_metrics


def test_lr_search_picks_the_planted_optimum_of_a_fake_objective():
    calls = []

    def run(lr: float) -> tuple[float, float]:
        calls.append(lr)
        if lr > 0.05:
            raise RuntimeError("loss is NaN")  # a diverging rate is a failed run, not the end
        acc = 0.8 - 0.1 * (math.log10(lr) + 3) ** 2  # best at 1e-3
        return acc, 1.0 - acc

    grid = [1e-1, 3e-3, 1e-5, 1e-4, 1e-3, 1e-2]
    s = search_learning_rate("lora", grid, run)
    assert s.chosen == pytest.approx(1e-3) and sorted(calls) == sorted(grid)
    assert s.rates == sorted(grid) and s.scores[-1] is None and "0.1" in s.errors
    # equal accuracy everywhere: the lowest validation loss decides
    tie = search_learning_rate(
        "full", [1e-5, 1e-4, 1e-3], lambda lr: (0.0, abs(math.log10(lr) + 4))
    )
    assert tie.chosen == pytest.approx(1e-4)
    none = search_learning_rate("x", [1.0], lambda lr: (_ for _ in ()).throw(ValueError("bad")))
    assert none.chosen is None and none.at_edge is None
    assert s.at_edge is None and tie.at_edge is None  # optima inside the grid


def test_lr_search_says_when_the_best_rate_is_at_the_grid_edge():
    """Accuracy rising with the rate over the whole grid (what this project's first study
    found for every method with two rates): the chosen rate is the largest, and the search
    says so; the mirror case names the smallest; one rate is no search."""
    rising = search_learning_rate("lora", [1e-3, 3e-3], lambda lr: (lr * 100, 1.0))
    assert rising.chosen == pytest.approx(3e-3) and rising.at_edge == "largest"
    falling = search_learning_rate("full", [2e-5, 1e-4, 3e-4], lambda lr: (-lr, 1.0))
    assert falling.chosen == pytest.approx(2e-5) and falling.at_edge == "smallest"
    single = search_learning_rate("frog", [1e-3], lambda lr: (0.5, 1.0))
    assert single.chosen == pytest.approx(1e-3) and single.at_edge is None


def test_study_config_is_checked_and_changes_are_named(tiny_model_dir):
    base = tiny_run_config(tiny_model_dir)
    with pytest.raises(SpectuneError, match="needs a study: block"):
        split_study_config(base)
    with pytest.raises(SpectuneError, match="unknown method 'nope'"):
        split_study_config({**base, "study": {"methods": ["nope"]}})
    with pytest.raises(SpectuneError, match="study.seed is not a study setting"):
        split_study_config({**base, "study": {"methods": ["lora"], "seed": 3}})
    _, spec = split_study_config({**base, "study": {"methods": ["lora", "full"],
                                                    "lr_grid": {"full": [1e-5, 1e-4]}}})  # fmt: skip
    assert spec.seeds == [0, 1, 2] and spec.lr_grid == {"lora": [1e-2], "full": [1e-5, 1e-4]}
    assert changed_fields({"a": {"b": 1}, "c": 2}, {"a": {"b": 2}, "c": 2, "d": 1}) == ["a.b", "d"]


def _fake_run(fail: set[str] | None = None, calls: list | None = None):
    """A run function writing what a finished run writes; accuracy peaks at lr 1e-2 for lora."""

    def run(config, *, out, resume=False, progress=True):
        out = Path(out)
        if calls is not None:
            calls.append(out.name)
        if fail and any(f in out.name for f in fail):
            raise RuntimeError(f"planted failure of {out.name}")
        lr = config.get("train.learning_rate")
        acc = 0.6 - 0.1 * abs(math.log10(lr) + 2) + (0.2 if config.method == "lora" else 0)
        out.mkdir(parents=True, exist_ok=True)
        m = fake_metrics(config.method, config.seed, acc=acc, ppl=10.5, lr=lr,
                         alpha=3.0 + config.seed)  # fmt: skip
        m.save(out)
        u = np.random.default_rng(config.seed).random(config.data.n_eval)
        (out / "predictions.jsonl").write_text("".join(
            json.dumps({"correct_before": False, "correct_after": bool(x < acc)}) + "\n" for x in u))  # fmt: skip
        return SimpleNamespace(out=out, metrics=m)

    return run


def _study_data(model_dir: Path, **study_block) -> dict:
    data = tiny_run_config(model_dir)
    data["data"]["n_eval"] = 40
    data["eval"]["latency_prompts"] = 0
    data["study"] = {"methods": ["lora", "frog"], "seeds": 2, "lr_grid": [1e-3, 1e-2, 1e-1],
                     "lr_search": {"validation": 8}, **study_block}  # fmt: skip
    return data


def test_study_flow_with_a_fake_run_resume_and_failures(tiny_model_dir, tmp_path):
    out = tmp_path / "study"
    calls: list[str] = []
    data = _study_data(tiny_model_dir, grid={"lora.lora_dropout": [0.0]})
    result = study(data=data, out=out, progress=False, run_fn=_fake_run({"frog-s1"}, calls))
    assert calls[:3] == ["lora-lr0.001", "lora-lr0.01", "lora-lr0.1"]
    assert {s["method"]: s["chosen"] for s in result.lr_search} == {"lora": 0.01, "frog": 0.01}
    assert result.failed_runs == {"frog-s1": "planted failure of frog-s1"}
    assert [r["name"] for r in result.runs] == ["lora-s0", "lora-s1", "frog-s0", "frog-s1"]
    lora = next(s for s in result.summaries if s["name"] == "lora")
    assert lora["runs"] == 2 and lora["accuracy_gain"]["low"] < 0.8 < lora["accuracy_gain"]["high"]
    assert result.advice["choice"] == "lora"
    assert any("lora - frog" in n and "lora higher" in n for n in result.notes)
    assert any("metric-vs-parameter curves skipped" in n for n in result.notes)
    assert any("curve of lora.lora_dropout skipped: the grid gives it one value (0)" in n
               for n in result.notes)  # fmt: skip
    corr = next(c for c in result.correlations if c["x"] == "adapter_alpha")
    assert corr["rho"] is None and "at least 5" in corr["reason"]  # 3 runs: undetermined
    # intruder dimensions are correlated with the outcomes too (Shuttleworth et al.)
    assert {(c["x"], c["y"]) for c in result.correlations} >= {
        ("num_intruders", "accuracy_gain"),
        ("num_intruders", "forgetting"),
    }
    assert any(n.startswith("Spearman adapter_alpha vs accuracy_gain: undetermined")
               for n in result.notes)  # fmt: skip
    for name in ("study.json", "results.csv", "report.html", "plots/pareto.png",
                 "plots/lr_search.png", "lr_search/data/validation.jsonl"):  # fmt: skip
        assert (out / name).is_file(), name
    val = (out / "lr_search/data/validation.jsonl").read_text().splitlines()
    assert len(val) == 8
    assert StudyResult.load(out).advice["choice"] == "lora"
    assert "failed: planted failure" in (out / "results.csv").read_text()
    marker = json.loads((out / "run.json").read_text())
    assert (
        marker["kind"] == "study" and marker["status"] == "failed" and "frog-s1" in marker["error"]
    )

    # resume with the same config: nothing new fails, the result is the same; the time adds up
    again = study(data=data, out=out, resume=True, progress=False, run_fn=_fake_run())
    assert again.failed_runs == {} and again.advice["choice"] == "lora"
    assert again.total_seconds > result.total_seconds > 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    # resume with a changed config names the fields (fewer seeds is no growth)
    changed = _study_data(tiny_model_dir, grid={"lora.lora_dropout": [0.0]}, seeds=1)
    changed["train"]["max_steps"] = 5
    with pytest.raises(SpectuneError, match=r"in: study.seeds, train.max_steps"):
        study(data=changed, out=out, resume=True, progress=False, run_fn=_fake_run())
    # every run failing is an error, not a report
    with pytest.raises(SpectuneError, match="every run of the study failed"):
        study(data=data, out=tmp_path / "bad", progress=False, run_fn=_fake_run({"-s"}))


def test_study_on_the_tiny_model_end_to_end(tiny_model_dir, tmp_path, capsys):
    from spectune.cli.main import main

    data = _study_data(tiny_model_dir, lr_grid={"lora": [1e-3, 1e-2], "full": [1e-4]},
                       methods=["lora", "full"], grid={"lora.r": [2, 4]}, seeds=[0])  # fmt: skip
    data["data"]["n_eval"] = 8
    data["train"]["max_steps"] = 2
    path = tmp_path / "study.yaml"
    from spectune.tuning.config import yaml_dump

    path.write_text("# spectune study study.yaml\n" + yaml_dump(data))
    out = tmp_path / "out"
    code = main(["study", str(path), "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    result = StudyResult.load(out)
    names = [r["name"] for r in result.runs]
    # full trains the same at every lora.r: it runs once
    assert names == ["lora-r2-s0", "full-r2-s0", "lora-r4-s0"]
    assert all(r["status"] == "complete" for r in result.runs)
    assert (out / "runs/lora-r2-s0/metrics.json").is_file()
    assert {s["method"] for s in result.lr_search} == {"lora", "full"}
    assert "lora.r" in result.effects["accuracy_gain"][0]["parameter"]
    assert (out / "plots/param_lora_r.png").is_file()
    # each run's layers: base alpha against the update's (groups in order, then their runs)
    assert [c["run"] for c in result.layer_correlations] == names
    assert all(c["n"] > 0 for c in result.layer_correlations)
    assert (out / "plots/layer_alpha_vs_base.png").is_file()
    assert main(["advise", str(out)]) == 0
    assert "Recommendation:" in capsys.readouterr().out


def _details(folder, base, tuned, statuses=None):
    spectra = folder / "spectra"
    spectra.mkdir(parents=True)
    lines = ["layer_id,longname,status,alpha,base_alpha,base_status"]
    for i, (b, a) in enumerate(zip(base, tuned, strict=True)):
        st = (statuses or ["success"] * len(base))[i]
        lines.append(f"{i},layer{i},{st},{a},{b},success")
    (spectra / "details.csv").write_text("\n".join(lines) + "\n")


def test_layer_alpha_correlation_reads_a_runs_layers(tmp_path):
    from scipy.stats import spearmanr

    from spectune.studies.summary import layer_alpha_correlation

    rng = np.random.default_rng(3)
    base = rng.uniform(2, 20, size=40)
    tuned = 1.5 + 0.05 * base + rng.normal(0, 0.2, size=40)  # planted: rises with the base
    _details(tmp_path / "a", base, tuned)
    c = layer_alpha_correlation(tmp_path / "a")
    assert c.n == 40 and c.rho == pytest.approx(spearmanr(base, tuned).statistic, abs=1e-12)
    assert c.resolved and c.low > 0
    # failed fits are left out; a run without spectra has no answer
    _details(tmp_path / "b", base[:6], tuned[:6], ["success"] * 4 + ["failed", "failed"])
    few = layer_alpha_correlation(tmp_path / "b")
    assert few.n == 4 and few.rho is None and "4 layer(s)" in few.reason
    assert layer_alpha_correlation(tmp_path / "none") is None


def test_a_study_without_spectra_says_so_once_instead_of_one_undetermined_line_per_pair(tmp_path):
    from spectune.studies.summary import OUTCOMES, SPECTRAL_COLUMNS, summarize_study

    rows = [{"name": f"r{i}", "status": "complete", "accuracy_gain": 0.1 * i, "forgetting": 0.2}
            for i in range(6)]  # fmt: skip
    rows[0]["num_intruders"] = 3  # one column measured on one run: still too few for a rho
    _, _, _, corrs, _, notes, _ = summarize_study(tmp_path, rows, {}, [])
    assert len(corrs) == len(SPECTRAL_COLUMNS) * len(OUTCOMES)  # the JSON keeps every pair
    spearman = [n for n in notes if n.startswith("Spearman")]
    assert spearman[:2] == [
        "Spearman num_intruders vs accuracy_gain: undetermined (1 run(s) with both values; "
        "a correlation needs at least 5)",
        "Spearman num_intruders vs forgetting: undetermined (1 run(s) with both values; "
        "a correlation needs at least 5)",
    ]
    assert spearman[2].startswith(
        "Spearman of adapter_alpha, base_alpha, frac_alpha_below_2, rank90, stable_rank, "
        "log_norm against the outcomes: not measured"
    )
    assert len(spearman) == 3


def _marked_run(calls: list):
    """The fake run in a real run folder (marker, lock, resolved config.yaml), recording
    ``(name, resume, overwrite)`` of each call."""
    from spectune.results.runfolder import RunFolder
    from spectune.tuning.config import yaml_dump

    inner = _fake_run()

    def run(config, *, out, resume=False, progress=True, overwrite=False):
        calls.append((Path(out).name, resume, overwrite))
        folder = RunFolder(out).open(overwrite=overwrite, resume=resume)
        folder.own("config.yaml", "metrics.json", "predictions.jsonl")
        res = inner(config, out=out, resume=resume, progress=progress)
        (Path(out) / "config.yaml").write_text(yaml_dump(config.to_dict()))
        folder.finish()
        return res

    return run


def test_a_resume_may_grow_the_rate_grid_and_seeds_and_reruns_the_runs_whose_choice_moved(
    tiny_model_dir, tmp_path
):
    out, calls = tmp_path / "study", []
    small = _study_data(tiny_model_dir, methods=["lora"], seeds=2, lr_grid=[1e-3, 3e-3])
    first = study(data=small, out=out, progress=False, run_fn=_marked_run(calls))
    assert [s["chosen"] for s in first.lr_search] == [0.003]  # the top of the grid: extend it
    assert [c[0] for c in calls] == ["lora-lr0.001", "lora-lr0.003", "lora-s0", "lora-s1"]

    calls.clear()
    grown = _study_data(tiny_model_dir, methods=["lora"], seeds=3, lr_grid=[1e-3, 3e-3, 1e-2])
    again = study(data=grown, out=out, resume=True, progress=False, run_fn=_marked_run(calls))
    assert [s["chosen"] for s in again.lr_search] == [0.01]  # the fake's optimum, now in reach
    assert calls == [
        ("lora-lr0.001", True, False),  # finished: taken as they are
        ("lora-lr0.003", True, False),
        ("lora-lr0.01", False, False),  # the added rate
        ("lora-s0", False, True),  # ran at 3e-3: run again at 1e-2 in its folder
        ("lora-s1", False, True),
        ("lora-s2", False, False),  # the added seed
    ]
    assert {r["name"]: r["learning_rate"] for r in again.runs} == {
        "lora-s0": 0.01, "lora-s1": 0.01, "lora-s2": 0.01}  # fmt: skip
    assert "learning_rate: 0.01" in (out / "runs/lora-s0/config.yaml").read_text()

    # a grid that drops a rate, or fewer seeds: refused, naming the field, nothing run
    calls.clear()
    for changed, field in (({"lr_grid": [3e-3, 1e-2]}, r"study\.lr_grid\.lora"),
                           ({"seeds": 2}, r"study\.seeds")):  # fmt: skip
        block = {"methods": ["lora"], "seeds": 3, "lr_grid": [1e-3, 3e-3, 1e-2], **changed}
        with pytest.raises(SpectuneError, match=rf"\(in: {field}\).*may only add rates"):
            study(data=_study_data(tiny_model_dir, **block), out=out, resume=True,
                  progress=False, run_fn=_marked_run(calls))  # fmt: skip
    assert calls == []


def test_an_interrupted_sessions_time_counts_on_resume(tiny_model_dir, tmp_path):
    import time as _time

    out, calls = tmp_path / "study", []
    fake = _marked_run(calls)

    def slow(config, *, out, resume=False, progress=True, overwrite=False):
        if Path(out).name == "lora-s0" and not resume and len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the third run, after two of 0.3 s
        _time.sleep(0.3)
        return fake(config, out=out, resume=resume, progress=progress, overwrite=overwrite)

    data = _study_data(tiny_model_dir, methods=["lora"], seeds=1, lr_grid=[1e-3, 1e-2])
    with pytest.raises(KeyboardInterrupt):
        study(data=data, out=out, progress=False, run_fn=slow)
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] == "failed" and marker["total_seconds"] >= 0.6
    assert not (out / "study.json").exists()
    again = study(data=data, out=out, resume=True, progress=False, run_fn=slow)
    # the two searches of the first session (0.3 s each) and the real run of the second
    assert again.total_seconds >= 0.6 + 0.3
