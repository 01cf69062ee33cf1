"""train.report_to: a tiny LoRA run reporting to MLflow (a SQLite store) and TensorBoard, read
back with MLflow's own client and TensorBoard's EventAccumulator; trackers not installed or not
reachable; the setting's forms."""

from __future__ import annotations

import csv
import importlib.util
import json
import warnings
from pathlib import Path

import pytest

from spectune.errors import MissingDependencyError, SpectuneError
from spectune.report import tracking
from spectune.tuning.config import TuneConfig, load_config
from spectune.tuning.recipe import prepare, training_arguments, tune
from tests.conftest import tiny_run_config

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

EXPERIMENT = "spectune-tracking-test"


def _reset_mlflow_uri() -> None:
    """MLflowCallback sets mlflow's process-wide tracking URI; the next test reads the env."""
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def tracked(tiny_model_dir, tmp_path_factory):
    """One tiny LoRA run with train.report_to=[tensorboard,mlflow] (a SQLite MLflow store):
    its folder, its metrics.json and its MLflow run."""
    tmp = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("spectune.judging.cache.cache_dir", lambda: tmp / "judge-cache")
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        mp.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        _reset_mlflow_uri()
        client = mlflow.MlflowClient()
        experiment = client.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))
        data = tiny_run_config(tiny_model_dir, train__report_to=["tensorboard", "mlflow"])
        out = tmp / "run"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tune(TuneConfig.from_dict(data), out=out, progress=False)
        runs = client.search_runs([experiment])
        yield {
            "out": out,
            "metrics": json.loads((out / "metrics.json").read_text()),
            "client": client,
            "runs": runs,
            "warnings": [w for w in caught if issubclass(w.category, tracking.TrackerWarning)],
        }
        _reset_mlflow_uri()


def _losses(out: Path) -> list[tuple[int, float]]:
    with (out / "train_log.csv").open() as fh:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]


def _expected(m: dict) -> dict[str, float]:
    """spectune's judged results, read from metrics.json by hand (the names the trackers get)."""
    spectra = {}
    if m["spectra"] is not None:
        spectra = {
            "spectune/spectra_alpha": m["spectra"]["alpha"],
            "spectune/spectra_n_layers": m["spectra"]["n_layers"],
        }
    return {
        **spectra,
        "spectune/accuracy_before": m["learning"]["accuracy_before"],
        "spectune/accuracy_after": m["learning"]["accuracy_after"],
        "spectune/accuracy_gain": m["learning"]["accuracy_gain"],
        "spectune/heldout_loss_before": m["learning"]["heldout_loss_before"],
        "spectune/heldout_loss_after": m["learning"]["heldout_loss_after"],
        "spectune/perplexity_before": m["forgetting"]["perplexity_before"],
        "spectune/perplexity_after": m["forgetting"]["perplexity_after"],
        "spectune/perplexity_change": m["forgetting"]["perplexity_change"],
        "spectune/perplexity_ratio": m["forgetting"]["perplexity_ratio"],
        "spectune/train_seconds": m["cost"]["train_seconds"],
        "spectune/tokens_per_second": m["cost"]["tokens_per_second"],
        "spectune/peak_rss_bytes": m["cost"]["peak_rss_bytes"],
        "spectune/trainable_params": m["cost"]["trainable"],
        "spectune/adapter_bytes": m["cost"]["adapter_bytes"],
        "spectune/train_loss_final": m["training"]["final_loss"],
    }


def test_mlflow_run_holds_the_training_curve_and_the_judged_results(tracked):
    out, m, client = tracked["out"], tracked["metrics"], tracked["client"]
    assert tracked["warnings"] == []
    assert len(tracked["runs"]) == 1  # the Trainer's run, logged into again: no second run
    run = tracked["runs"][0]
    assert run.info.run_name == out.name
    run_id = run.info.run_id
    # the Trainer's curve: every logged step, the losses of train_log.csv
    history = sorted(client.get_metric_history(run_id, "loss"), key=lambda h: h.step)
    steps, losses = zip(*_losses(out), strict=True)
    assert [h.step for h in history] == list(steps)
    assert [h.value for h in history] == pytest.approx(losses, rel=1e-12)
    assert len(history) == m["training"]["global_step"] == 4
    # spectune's judgment, at the last step, equal to metrics.json
    expected = _expected(m)
    assert m["forgetting"]["perplexity_before"] > 1 and m["spectra"]["n_layers"] > 0
    assert "spectune/spectra_alpha" in expected
    for name, value in expected.items():
        assert run.data.metrics[name] == pytest.approx(value, rel=1e-12), name
        assert client.get_metric_history(run_id, name)[-1].step == 4
    logged = {k for k in run.data.metrics if k.startswith("spectune/")}
    assert set(expected) <= logged
    # the config as params (beside the Trainer's own), the results folder as a tag
    assert run.data.params["spectune/method"] == "lora"
    assert run.data.params["spectune/lora.r"] == "4"
    assert run.data.params["spectune/train.report_to"] == "['tensorboard', 'mlflow']"
    assert run.data.params["learning_rate"] == "0.01"  # MLflowCallback's TrainingArguments
    assert run.data.tags["spectune.results"] == str(out)
    # the report as artifacts, byte for byte
    listed = sorted(a.path for a in client.list_artifacts(run_id, "spectune"))
    assert listed == ["spectune/config.yaml", "spectune/metrics.json", "spectune/report.html"]
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="spectune"))
    for name in ("metrics.json", "report.html", "config.yaml"):
        assert (local / name).read_bytes() == (out / name).read_bytes()


def test_tensorboard_events_hold_the_training_curve_and_the_judged_results(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out, m = tracked["out"], tracked["metrics"]
    events = EventAccumulator(str(out / tracking.TENSORBOARD_DIR))
    events.Reload()
    curve = events.Scalars("train/loss")
    steps, losses = zip(*_losses(out), strict=True)
    assert [e.step for e in curve] == list(steps)
    assert [e.value for e in curve] == pytest.approx(losses, rel=1e-6)  # float32 in the file
    for name, value in _expected(m).items():
        (event,) = events.Scalars(name)
        assert event.step == 4
        assert event.value == pytest.approx(value, rel=1e-6, abs=1e-6), name
    assert "spectune/report/text_summary" in events.Tags()["tensors"]
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["spectune/lora.r"].number_value == 4
    assert hparams["spectune/method"].string_value == "lora"
    # the folder is the run's: recorded in run.json, so --overwrite removes it
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] == "complete"
    assert "tensorboard" in marker["files"]
    written = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert sorted(marker["tree"]["tensorboard"]) == written and len(written) == 3


def test_unreachable_mlflow_is_one_warning_and_the_run_completes(
    tiny_model_dir, tmp_path, monkeypatch
):
    """MLflow at a closed port: dropped before training with one warning and a note; TensorBoard
    still writes, into train.logging_dir outside the run folder; the folder is complete."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    _reset_mlflow_uri()
    logdir = tmp_path / "tb-elsewhere"
    data = tiny_run_config(
        tiny_model_dir,
        train__report_to=["mlflow", "tensorboard"],
        train__logging_dir=str(logdir),
        train__max_steps=2,
        eval__spectra=False,
    )
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tune(TuneConfig.from_dict(data), out=out, progress=False)
    mine = [w for w in caught if issubclass(w.category, tracking.TrackerWarning)]
    assert len(mine) == 1
    assert "mlflow" in str(mine[0].message) and "127.0.0.1:9" in str(mine[0].message)
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] == "complete"
    for name in ("metrics.json", "report.html", "predictions.jsonl", "adapter", "train_log.csv"):
        assert (out / name).exists(), name
    m = json.loads((out / "metrics.json").read_text())
    assert any("mlflow left out" in note and "127.0.0.1:9" in note for note in m["notes"])
    assert not (out / tracking.TENSORBOARD_DIR).exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    (after,) = events.Scalars("spectune/perplexity_after")
    assert after.value == pytest.approx(m["forgetting"]["perplexity_after"], rel=1e-6)


# --------------------------------------------------------------------------- the setting


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ("tensorboard", ["tensorboard"]),
        ("MLflow", ["mlflow"]),
        (["tensorboard", "mlflow", "tensorboard"], ["tensorboard", "mlflow"]),
        ("tensorboard,mlflow", ["tensorboard", "mlflow"]),
        ("none", []),
        ([], []),
    ],
)
def test_report_to_takes_a_name_or_a_list(tiny_model_dir, tmp_path, given, names):
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, train__report_to=given))
    assert tracking.names(config) == names
    assert config.train["report_to"] == (names or "none")
    args = training_arguments(config, tmp_path, progress=False)
    assert args.report_to == names  # what the Trainer builds its callbacks from
    assert args.run_name == tmp_path.name


def test_report_to_on_the_command_line_and_by_default(tiny_model_dir, tmp_path):
    config = load_config(None, ["train.report_to=[tensorboard,mlflow]"])
    assert config.train["report_to"] == ["tensorboard", "mlflow"]
    assert config.to_dict()["train"]["report_to"] == ["tensorboard", "mlflow"]
    default = TuneConfig.from_dict(tiny_run_config(tiny_model_dir))
    assert tracking.names(default) == []
    assert training_arguments(default, tmp_path, progress=False).report_to == []


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            "comet_ml",
            "unknown tracker 'comet_ml'; use tensorboard, mlflow, trackio, wandb, or none",
        ),
        (["mlflow", "all"], "unknown tracker 'all'; use tensorboard, mlflow, trackio, wandb"),
        (["none", "mlflow"], "'none' beside trackers"),
        (3, "must be a tracker name or a list of them"),
    ],
)
def test_bad_report_to_names_the_valid_trackers(tiny_model_dir, given, message):
    with pytest.raises(SpectuneError, match="train.report_to") as err:
        TuneConfig.from_dict(tiny_run_config(tiny_model_dir, train__report_to=given))
    assert message in str(err.value)


def test_logging_dir_needs_tensorboard(tiny_model_dir):
    with pytest.raises(SpectuneError, match="train.logging_dir is TensorBoard's folder"):
        TuneConfig.from_dict(
            tiny_run_config(tiny_model_dir, train__report_to="mlflow", train__logging_dir="tb")
        )


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_a_tracker_not_installed_names_its_package(tiny_model_dir, tmp_path, name):
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here")
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, train__report_to=name))
    with pytest.raises(MissingDependencyError) as err:
        prepare(config, out=tmp_path / "run", progress=False)
    assert str(err.value) == (
        f"train.report_to: {name} is not installed; install it with: pip install {name} "
        "(or remove it from train.report_to)"
    )
    assert not (tmp_path / "run").exists()  # refused before the folder is taken


def test_mlflow_not_installed_names_the_extra(tiny_model_dir, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, train__report_to="mlflow"))
    with pytest.raises(MissingDependencyError, match=r"pip install 'spectune\[mlflow\]'"):
        prepare(config, out=tmp_path / "run", progress=False)


@pytest.mark.slow
def test_two_processes_report_once_from_rank_0(tiny_model_dir, tmp_path, monkeypatch):
    """torchrun, 2 processes: one MLflow run and one TensorBoard folder, the training curve
    logged once per step and spectune's judgment once (rank 0 alone reports)."""
    import yaml

    from tests.tuning.scale.test_distributed import _launch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    _reset_mlflow_uri()
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(EXPERIMENT, artifact_location=str(tmp_path / "art"))
    config = tmp_path / "ddp.yaml"
    raw = tiny_run_config(tiny_model_dir, train__report_to=["tensorboard", "mlflow"],
                          train__per_device_train_batch_size=2, eval__spectra=False)  # fmt: skip
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    done, ranks = _launch(tmp_path, ["tune", str(config), "--out", str(out), "--no-progress"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(ranks) == [0, 1]
    (run,) = client.search_runs([experiment])
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["world_size"] == 2
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(h.step for h in history) == [1, 2, 3, 4]
    assert m["spectra"] is None
    for name, value in _expected(m).items():
        (point,) = client.get_metric_history(run.info.run_id, name)
        assert point.value == pytest.approx(value, rel=1e-12), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert [p.name for p in tmp_path.rglob("events.out.tfevents.*")] == [
        p.name for p in (out / "tensorboard").iterdir()
    ]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert len(events.Scalars("spectune/perplexity_after")) == 1
    _reset_mlflow_uri()
