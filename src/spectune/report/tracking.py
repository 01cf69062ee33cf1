"""Experiment trackers (``train.report_to``): the training curve and what spectune judged, in
the user's TensorBoard, MLflow, trackio or Weights & Biases run.

``train.report_to`` names one tracker or a list (``tensorboard``, ``mlflow``, ``trackio``,
``wandb``; ``none``, the default, names none). The names reach ``transformers``'
``TrainingArguments``, so the Trainer's own callbacks log the training loss, learning rate and
validation loss. After judging, rank 0 logs to the SAME tracker run what spectune measured
(:func:`judged_metrics`: ``spectune/accuracy_after``, ``spectune/perplexity_change``,
``spectune/train_seconds``, ``spectune/spectra_alpha``...), the run's config as parameters
(``spectune/lora.r``...) and, where the tracker keeps files, ``report.html``, ``metrics.json``
and ``config.yaml``:

===============  ==========================================================================
``tensorboard``  event files in ``<out>/tensorboard`` (``train.logging_dir`` or
                 ``TENSORBOARD_LOGGING_DIR`` elsewhere); spectune's metrics as scalars and
                 HParams, the report as a text summary
``mlflow``       the run transformers' ``MLflowCallback`` opened (``MLFLOW_TRACKING_URI``,
                 ``MLFLOW_EXPERIMENT_NAME``); it ends that run when training ends, so spectune
                 logs into it by id (``MlflowClient``): metrics, params, artifacts
``wandb``        the ``wandb.run`` the Trainer opened: config, summary, an artifact; finished
                 afterwards when the Trainer opened it
``trackio``      the run is resumed by project and name (``resume="must"``) and finished
===============  ==========================================================================

A tracker that is not installed is refused when the run is prepared, naming what to install.
A tracker that cannot be reached (an MLflow server that does not answer) is dropped before
training with one warning and a note in ``metrics.json``; a failure while logging the judged
results is one warning too. The run goes on and its results folder is complete either way.

The tracker's run is named after the results folder (``train.run_name`` names it otherwise).
Under ``torchrun`` the Trainer's callbacks log on rank 0 and rank 0 alone logs the judgment.
``--resume`` opens a new MLflow run, as transformers does (``MLFLOW_RUN_ID`` continues the
first); TensorBoard's folder keeps both sessions' event files.

Each tracker is one small :class:`Tracker` subclass in :data:`TRACKERS`; its package is
imported only when a run reports to it. The MLflow and TensorBoard ones are tested against a
real SQLite store and event files; wandb (``WANDB_MODE=offline`` works without a server) and
trackio follow their documented APIs and are not installed in the test environment.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import MissingDependencyError, SpectuneError

if TYPE_CHECKING:
    from spectune.results.metrics import RunMetrics
    from spectune.results.runfolder import RunFolder

#: the files of a run a tracker with artifacts keeps
ARTIFACTS = ("report.html", "metrics.json", "config.yaml")
#: where TensorBoard's event files go, inside the results folder
TENSORBOARD_DIR = "tensorboard"
#: prefix of what spectune logs (metrics and parameters), apart from the Trainer's own keys
PREFIX = "spectune/"
#: seconds a reachability check waits for a tracking server
PROBE_SECONDS = 5.0


class TrackerWarning(UserWarning):
    """A tracker could not be reached or refused what spectune logged; the run went on."""


# --------------------------------------------------------------------------- what is logged


def judged_metrics(metrics: RunMetrics) -> dict[str, float]:
    """What spectune judged, as flat tracker metrics (``spectune/<name>``; unmeasured values,
    such as the accuracy before with ``eval.before: false``, are left out).

    Learning: accuracy and held-out loss before / after, accuracy gain (after - before).
    Forgetting: perplexity on general text before / after, change (after - before), ratio.
    Cost: train seconds, tokens per second, peak memory, trainable parameters, adapter size,
    latency. Training: first / final loss, validation loss of the saved adapter. Spectra: the
    means of :class:`~spectune.results.metrics.SpectraSummary` (``spectra_alpha`` is the mean
    power-law alpha of the adapter's matrices).
    """
    lrn, fgt, cost, tr = metrics.learning, metrics.forgetting, metrics.cost, metrics.training
    values: dict[str, Any] = {
        "accuracy_before": lrn.accuracy_before,
        "accuracy_after": lrn.accuracy_after,
        "accuracy_gain": lrn.accuracy_gain,
        "heldout_loss_before": lrn.heldout_loss_before,
        "heldout_loss_after": lrn.heldout_loss_after,
        "perplexity_before": fgt.perplexity_before,
        "perplexity_after": fgt.perplexity_after,
        "perplexity_change": fgt.perplexity_change,
        "perplexity_ratio": fgt.perplexity_ratio,
        "train_seconds": cost.train_seconds,
        "tokens_per_second": cost.tokens_per_second,
        "peak_rss_bytes": cost.peak_rss_bytes,
        "trainable_params": cost.trainable,
        "trainable_percent": cost.trainable_percent,
        "adapter_bytes": cost.adapter_bytes,
        "ms_per_token": cost.ms_per_token,
        "ms_per_token_before": cost.ms_per_token_before,
        "train_loss_first": tr.first_loss,
        "train_loss_final": tr.final_loss,
        "validation_loss": None if metrics.validation is None else metrics.validation.adapter_loss,
    }
    if metrics.spectra is not None:
        s = metrics.spectra
        for key in ("alpha", "alpha_weighted", "log_norm", "stable_rank", "base_alpha", "rank90"):
            values[f"spectra_{key}"] = getattr(s, key)
        for key in ("n_layers", "n_analyzed", "num_intruders", "n_collapsed", "n_flow_bent"):
            values[f"spectra_{key}"] = getattr(s, key)
    return {
        PREFIX + k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def config_params(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """The resolved config as flat tracker parameters (``spectune/lora.r`` -> 4); lists and
    None as their YAML-like text."""
    out: dict[str, str | int | float | bool] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, (str, int, float, bool)):
            out[PREFIX + key] = node
        else:
            out[PREFIX + key] = "null" if node is None else str(node)

    walk(config, "")
    return out


# --------------------------------------------------------------------------- the trackers


@dataclass
class Tracker:
    """One tracker: its package, how to install it, how to reach it, how to log to it.

    Attributes:
        name: the ``train.report_to`` name (also transformers').
        module: the package that must be importable.
        install: the command that installs it.
    """

    name: str = ""
    module: str = ""
    install: str = ""

    def installed(self) -> bool:
        """Whether its package can be imported (without importing it)."""
        return importlib.util.find_spec(self.module) is not None

    def problem(self) -> str | None:
        """Why the tracker cannot be reached now (None: it can, or there is nothing to ask)."""
        return None

    def attach(self, trainer: Any, out: Path, folder: RunFolder, logging_dir: str | None) -> None:
        """Before training (rank 0): adjust the Trainer's callback for this tracker (``out``:
        the results folder, ``folder`` its :class:`RunFolder`, ``logging_dir`` the setting)."""

    def started(self, args: Any, state: Any) -> None:
        """At the start of training, after the Trainer's callback opened the tracker's run:
        remember which run that is."""

    def log(self, out: Path, metrics: RunMetrics) -> None:
        """Log the judged results, the config and the report into the tracker's run."""
        raise NotImplementedError


@dataclass
class TensorBoard(Tracker):
    """Event files: the Trainer's scalars (``train/loss``...), then spectune's metrics as
    scalars and HParams and the report as a text summary, in the same folder."""

    name: str = "tensorboard"
    module: str = "tensorboard"
    install: str = "pip install 'spectune[tensorboard]'"
    logdir: Path | None = None

    def attach(self, trainer: Any, out: Path, folder: RunFolder, logging_dir: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        given = logging_dir or os.environ.get("TENSORBOARD_LOGGING_DIR")
        if given:
            self.logdir = Path(given).expanduser()
        else:
            self.logdir = out / TENSORBOARD_DIR
            folder.own(TENSORBOARD_DIR)
        trainer.remove_callback(TensorBoardCallback)
        trainer.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(self.logdir))))

    def log(self, out: Path, metrics: RunMetrics) -> None:
        from torch.utils.tensorboard import SummaryWriter

        judged = judged_metrics(metrics)
        step = metrics.training.global_step
        hparams = {
            k: v for k, v in config_params(metrics.config).items() if k != PREFIX + "output_dir"
        }
        with SummaryWriter(log_dir=str(self.logdir)) as writer:
            rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in judged.items())
            writer.add_text(
                PREFIX + "report",
                f"results folder: {out}\n\nreport: {out / 'report.html'}\n\n"
                f"| metric | value |\n|---|---|\n{rows}",
                step,
            )
            # the scalars under the same tags, and the HParams dashboard's run (this folder)
            writer.add_hparams(hparams, judged, run_name=".", global_step=step)


@dataclass
class MLflow(Tracker):
    """The run ``MLflowCallback`` opened, logged into by id after it ended."""

    name: str = "mlflow"
    module: str = "mlflow"
    install: str = "pip install 'spectune[mlflow]' (mlflow-skinny)"
    run_id: str | None = None

    def problem(self) -> str | None:
        import mlflow

        uri = str(mlflow.get_tracking_uri())
        if uri.startswith(("http://", "https://")):
            why = _unreachable(uri.rstrip("/") + "/health")
            if why:
                return f"cannot reach the MLflow server at {uri} ({why})"
            return None
        if uri.startswith(("sqlite:", "file:", "/", ".")) or "://" not in uri:
            try:
                mlflow.MlflowClient(uri).search_experiments(max_results=1)
            except Exception as exc:  # the store's own error, whatever it is
                first = (str(exc).splitlines() or [""])[0][:200]
                return f"cannot use the MLflow store {uri} ({type(exc).__name__}: {first})"
        return None

    def started(self, args: Any, state: Any) -> None:
        import mlflow

        active = mlflow.active_run()
        self.run_id = None if active is None else active.info.run_id

    def log(self, out: Path, metrics: RunMetrics) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        if self.run_id is None:
            raise SpectuneError("the Trainer opened no MLflow run")
        client = MlflowClient()
        now = int(time.time() * 1000)
        step = metrics.training.global_step
        judged = [Metric(k, v, now, step) for k, v in judged_metrics(metrics).items()]
        params = [
            Param(k, str(v)[:MAX_PARAM_VAL_LENGTH])
            for k, v in config_params(metrics.config).items()
        ]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        client.log_batch(self.run_id, metrics=judged)
        client.set_tag(self.run_id, "spectune.results", str(out))
        for name in ARTIFACTS:
            if (out / name).is_file():
                client.log_artifact(self.run_id, str(out / name), artifact_path="spectune")


@dataclass
class Wandb(Tracker):
    """The ``wandb.run`` the Trainer opened (or the user's): config, summary, an artifact."""

    name: str = "wandb"
    module: str = "wandb"
    install: str = "pip install wandb"
    opened_by_trainer: bool = False

    def problem(self) -> str | None:
        if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
            return None
        base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        why = _unreachable(base)
        return None if why is None else f"cannot reach {base} ({why}); or set WANDB_MODE=offline"

    def attach(self, trainer: Any, out: Path, folder: RunFolder, logging_dir: str | None) -> None:
        import wandb

        self.opened_by_trainer = wandb.run is None

    def log(self, out: Path, metrics: RunMetrics) -> None:
        import wandb

        active = wandb.run
        if active is None:
            raise SpectuneError("no wandb run is open")
        active.config.update(config_params(metrics.config), allow_val_change=True)
        judged = judged_metrics(metrics)
        active.log(judged)
        active.summary.update(judged)
        artifact = wandb.Artifact(f"spectune-{active.id}", type="spectune-report")
        for name in ARTIFACTS:
            if (out / name).is_file():
                artifact.add_file(str(out / name))
        active.log_artifact(artifact)
        if self.opened_by_trainer:
            active.finish()


@dataclass
class Trackio(Tracker):
    """The run the Trainer's ``TrackioCallback`` finished, resumed by project and name."""

    name: str = "trackio"
    module: str = "trackio"
    install: str = "pip install trackio"
    project: str | None = None
    run_name: str | None = None

    def started(self, args: Any, state: Any) -> None:
        import trackio

        current = trackio.context_vars.current_run.get()
        self.project = getattr(current, "project", None) or getattr(args, "project", None)
        self.run_name = getattr(current, "name", None)

    def log(self, out: Path, metrics: RunMetrics) -> None:
        import trackio

        if self.project is None or self.run_name is None:
            raise SpectuneError("the Trainer opened no trackio run")
        trackio.init(project=self.project, name=self.run_name, resume="must")
        try:
            trackio.config.update(config_params(metrics.config))
            trackio.log(judged_metrics(metrics))
        finally:
            trackio.finish()


#: the trackers by their ``train.report_to`` name
TRACKERS: dict[str, type[Tracker]] = {
    "tensorboard": TensorBoard,
    "mlflow": MLflow,
    "trackio": Trackio,
    "wandb": Wandb,
}


def _unreachable(url: str) -> str | None:
    """Why nothing answers at ``url`` (None: a server answered, even with an HTTP error)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=PROBE_SECONDS):  # noqa: S310 - the user's URL
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__


# --------------------------------------------------------------------------- the setting


def _valid() -> str:
    return ", ".join(TRACKERS) + ", or none"


def report_to(value: Any) -> list[str]:
    """``train.report_to`` as a list of tracker names (empty for ``none``).

    Args:
        value: a name, a comma-separated string of names, a list of names, ``"none"`` or
            None.

    Raises:
        SpectuneError: not a name or a list of names; an unknown tracker (naming the valid
            ones); ``none`` beside a tracker.
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise SpectuneError(
            f"train.report_to must be a tracker name or a list of them ({_valid()}), got {value!r}"
        )
    names = [v.strip().lower() for v in items]
    if "none" in names and len(names) > 1:
        raise SpectuneError(f"train.report_to: 'none' beside trackers ({value!r}); give one")
    out: list[str] = []
    for raw, name in zip(items, names, strict=True):
        if name == "none":
            continue
        if name not in TRACKERS:
            raise SpectuneError(
                f"train.report_to: unknown tracker {raw!r}; use {_valid()} (a name or a list: "
                "train.report_to=[tensorboard,mlflow])"
            )
        if name not in out:
            out.append(name)
    return out


def check_settings(train: dict[str, Any]) -> dict[str, Any]:
    """The ``train`` section with ``report_to`` normalized (a list of names, or ``"none"``)
    and ``logging_dir`` checked.

    Raises:
        SpectuneError: a bad ``report_to`` (:func:`report_to`); ``logging_dir`` that is not a
            folder path, or without ``tensorboard`` to write there.
    """
    if "report_to" not in train and "logging_dir" not in train:
        return train
    train = dict(train)
    names = report_to(train.get("report_to"))
    if "report_to" in train:
        train["report_to"] = names or "none"
    if "logging_dir" in train:
        where = train["logging_dir"]
        if not isinstance(where, str) or not where:
            raise SpectuneError(f"train.logging_dir must be a folder path, got {where!r}")
        if "tensorboard" not in names:
            raise SpectuneError(
                "train.logging_dir is TensorBoard's folder, read only with "
                "train.report_to: tensorboard; add tensorboard or remove the key"
            )
    return train


def names(config: Any) -> list[str]:
    """The trackers a run config (a :class:`~spectune.tuning.config.TuneConfig`) reports to."""
    return report_to(config.training_arguments().get("report_to"))


def check_installed(config: Any) -> None:
    """Every tracker the config names can be imported.

    Raises:
        MissingDependencyError: one is not installed (naming what to install).
    """
    for name in names(config):
        tracker = TRACKERS[name]()
        if not tracker.installed():
            raise MissingDependencyError(
                f"train.report_to: {name} is not installed; install it with: {tracker.install}"
                " (or remove it from train.report_to)"
            )


def usable(config: Any, out: Path, notes: list[str]) -> list[str]:
    """The trackers of a run config that can be reached now (rank 0, before training): each
    one that cannot is dropped with one warning and a line added to ``notes`` (the run's)."""
    kept = []
    for name in names(config):
        why = TRACKERS[name]().problem()
        if why is None:
            kept.append(name)
            continue
        note = f"train.report_to: {name} left out: {why}; the results are in {out}"
        warnings.warn(note, TrackerWarning, stacklevel=2)
        notes.append(note)
    return kept


# --------------------------------------------------------------------------- a run's trackers


@dataclass
class Tracking:
    """The trackers a run reports to (rank 0), from training to the judged results."""

    trackers: list[Tracker] = field(default_factory=list)

    def callback(self) -> Any:
        """A Trainer callback that tells each tracker training started (after the Trainer's
        own tracker callbacks opened their runs)."""
        from transformers import TrainerCallback

        trackers = self.trackers

        class Started(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                for tracker in trackers:
                    tracker.started(args, state)

        return Started()

    def log(self, out: Path, metrics: RunMetrics) -> None:
        """Log the judged results into every tracker's run; a tracker that fails is one
        warning (the results folder holds everything)."""
        for tracker in self.trackers:
            try:
                tracker.log(out, metrics)
            except Exception as exc:  # a tracker's failure never costs the run its results
                warnings.warn(
                    f"train.report_to: {tracker.name} did not take spectune's results "
                    f"({type(exc).__name__}: {exc}); they are in {out}",
                    TrackerWarning,
                    stacklevel=2,
                )


def attach(
    trainer: Any, reporting: list[str], out: Path, folder: RunFolder, logging_dir: str | None
) -> Tracking:
    """Set up the trackers of a run on its Trainer (rank 0, before training): TensorBoard's
    folder, the callback that records each tracker's run.

    Args:
        trainer: the run's Trainer, built with ``report_to=reporting``.
        reporting: the trackers :func:`usable` kept.
        out: the results folder; ``folder``: its :class:`RunFolder` (TensorBoard's folder is
            the run's).
        logging_dir: ``train.logging_dir`` (None: ``TENSORBOARD_LOGGING_DIR``, else
            ``<out>/tensorboard``).
    """
    tracking = Tracking([TRACKERS[name]() for name in reporting])
    for tracker in tracking.trackers:
        tracker.attach(trainer, out, folder, logging_dir)
    if tracking.trackers:
        trainer.add_callback(tracking.callback())
    return tracking


__all__ = [
    "ARTIFACTS",
    "PREFIX",
    "TRACKERS",
    "TENSORBOARD_DIR",
    "Tracker",
    "TrackerWarning",
    "Tracking",
    "attach",
    "check_installed",
    "check_settings",
    "config_params",
    "judged_metrics",
    "names",
    "report_to",
    "usable",
]
