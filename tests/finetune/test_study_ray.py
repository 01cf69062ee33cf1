"""The Ray backend of studies: a local instance of 2 CPUs running two tiny-model trials at
once, a failed trial recorded while the rest go on, and an unreachable address refused before
anything starts."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from tests.conftest import require
from tests.finetune.conftest import tiny_run_config
from tests.finetune.test_study import _study_data

from spectune.errors import SpectuneError
from spectune.finetune.config import yaml_dump
from spectune.finetune.study import study
from spectune.finetune.sweep import sweep

ROOT = Path(__file__).resolve().parents[2]


def failing_tune(config, *, out, resume=False, progress=True):
    """:func:`tune`, except for the run named full-s0 (a planted failure)."""
    from spectune.finetune.recipe import tune

    if Path(out).name == "full-s0":
        raise RuntimeError("planted failure of full-s0")
    return tune(config, out=out, resume=resume, progress=progress)


def _span(run_dir: Path) -> tuple[dt.datetime, dt.datetime]:
    marker = json.loads((run_dir / "run.json").read_text())
    return dt.datetime.fromisoformat(marker["started"]), dt.datetime.fromisoformat(
        marker["finished"]
    )


def test_an_unreachable_ray_address_is_one_error_and_nothing_starts(tiny_model_dir, tmp_path):
    require("ray", "the Ray backend")
    out = tmp_path / "study"
    with pytest.raises(SpectuneError, match="cannot reach a Ray cluster at '127.0.0.1:1'"):
        study(data=_study_data(tiny_model_dir), out=out, backend="ray", address="127.0.0.1:1",
              progress=False)  # fmt: skip
    assert not out.exists()
    from spectune.cli.main import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml_dump(tiny_run_config(tiny_model_dir)))
    assert main(["sweep", str(cfg), "--grid", "lora.r=2,4", "--out", str(out), "--backend",
                 "ray", "--address", "ray://127.0.0.1:1", "--no-progress"]) == 2  # fmt: skip
    assert not out.exists()
    with pytest.raises(SpectuneError, match="not host:port"):
        study(data=_study_data(tiny_model_dir), out=out, backend="ray", address="nowhere",
              progress=False)  # fmt: skip


@pytest.mark.slow  # starting Ray and two tiny runs: ~40 s idle, minutes on a busy machine
def test_study_on_a_local_ray_instance_runs_two_trials_at_once(tiny_model_dir, tmp_path,
                                                               monkeypatch):  # fmt: skip
    ray = require("ray", "the Ray backend")
    # the workers import this module (the planted failure) and keep their caches here
    paths = [str(ROOT), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("SPECTUNE_CACHE", str(tmp_path / "cache"))
    data = _study_data(tiny_model_dir, methods=["lora", "full"], seeds=[0],
                       lr_grid={"lora": [1e-3, 1e-2], "full": [1e-4]})  # fmt: skip
    data["data"]["n_eval"] = 8
    data["train"]["max_steps"] = 2
    out = tmp_path / "study"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml_dump({k: v for k, v in data.items() if k != "study"}))
    try:
        result = study(data=data, out=out, progress=False, run_fn=failing_tune, backend="ray")
        # a sweep on the same instance: two trials at once, the comparison folder as ever
        outcomes = sweep(cfg, ["lora.r=2,4"], out=tmp_path / "sweep", progress=False,
                         backend="ray")  # fmt: skip
    finally:
        ray.shutdown()
    assert [o.status for o in outcomes] == ["complete", "complete"]
    assert (tmp_path / "sweep/results.csv").is_file() and (tmp_path / "sweep/report.html").is_file()
    a, b = (_span(tmp_path / "sweep/runs" / o.name) for o in outcomes)
    assert a[0] <= b[1] and b[0] <= a[1]
    assert result.failed_runs == {"full-s0": "planted failure of full-s0"}
    assert [r["status"] for r in result.runs] == ["complete", "failed: planted failure of full-s0"]
    assert (out / "runs/lora-s0/metrics.json").is_file()
    assert next(s for s in result.lr_search if s["method"] == "lora")["chosen"] in (1e-3, 1e-2)
    a, b = (_span(out / "lr_search" / n) for n in ("lora-lr0.001", "lora-lr0.01"))
    assert a[0] <= b[1] and b[0] <= a[1]  # the two search trials ran at the same time
    assert "failed: planted failure" in (out / "results.csv").read_text()
