"""Where the runs of a sweep, a study or a search are done: here, one after another, or as
Ray Tune trials.

:func:`make_executor` returns a function that takes a list of :class:`Job` and returns, in
order, ``(RunMetrics, None)`` for each finished run or ``(None, why it failed)``:

- ``"local"`` (the default): one run after another in this process.
- ``"ray"``: every job as a Ray Tune trial (``ray.tune.Tuner`` over a function trainable),
  each with the resources it asks for (``tune.with_resources``: ``cpus_per_trial`` CPUs,
  ``gpus_per_trial`` GPUs), as many at once as the cluster holds. On a local Ray instance
  that spectune starts (``cpus`` CPUs, default all of this machine's) when no ``address`` is
  given, or on an existing cluster (``"auto"``, ``"host:port"``, ``"ray://host:port"``).

The trials write the same run folders as the local backend, at the same paths (a trial does
not change its working directory; Ray Tune's own experiment files go to a temporary folder
that is removed afterwards), so a comparison folder looks the same whichever backend filled
it; on a cluster of several machines the results folder must be on a file system they share.
A run that fails, or whose worker dies, is a failed run (Ray Tune's ``max_failures=0``); the
other trials go on. With ``resume``, finished runs are taken from their folders without a
trial, as the local backend does. An address that cannot be reached, or a cluster without
the CPUs/GPUs one trial asks for, is one error before anything is written.

Any exception a run raises (an ``OverflowError`` as much as a :class:`SpectuneError`; not
an interruption) is that run's failure, recorded with its reason, and the others go on. With
a :class:`~spectune.results.runfolder.HeldFolders`, each run folder is locked from the
moment its run starts until the study ends (a Ray trial's folder: by the trial's process
while it runs, by the study before and after).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectune._check import choice, integer, number
from spectune.errors import SpectuneError
from spectune.results.metrics import RunMetrics
from spectune.results.runfolder import HeldFolders, RunFolder
from spectune.tuning.config import TuneConfig


@dataclass
class Job:
    """One run to do: its name, method, raw config, folder, whether to resume, or why not;
    ``overwrite``: the folder holds this job's own earlier run at settings since changed (a
    study resumed with a grown grid whose chosen rate moved), replaced by the new run."""

    name: str
    method: str
    config: dict[str, Any] | None
    out: Path
    resume: bool
    error: str | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class Backend:
    """Where runs are done, and what each Ray trial asks for.

    Attributes:
        name: ``"local"`` or ``"ray"``.
        address: the Ray cluster (``"auto"``, ``"host:port"``, ``"ray://host:port"``); None
            starts a local instance.
        cpus: CPUs of the local instance (None: this machine's); not with ``address``.
        cpus_per_trial: CPUs each trial asks for (None: 1).
        gpus_per_trial: GPUs each trial asks for, fractions allowed (None: 0).
    """

    name: str = "local"
    address: str | None = None
    cpus: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None

    @classmethod
    def of(cls, backend: str | Backend, address: str | None = None) -> Backend:
        """``backend`` as a checked :class:`Backend` (a name and an address, or as is)."""
        if isinstance(backend, Backend):
            if address is not None and address != backend.address:
                raise SpectuneError("give the Ray address once: in the Backend, not as address")
            return backend.check()
        return cls(backend, address).check()

    @property
    def trial_resources(self) -> dict[str, float]:
        """What one Ray trial asks for: ``{"cpu": ..., "gpu": ...}``."""
        return {
            "cpu": 1.0 if self.cpus_per_trial is None else float(self.cpus_per_trial),
            "gpu": 0.0 if self.gpus_per_trial is None else float(self.gpus_per_trial),
        }

    def check(self) -> Backend:
        """Raises SpectuneError naming the option that is wrong."""

        choice("--backend", self.name, ("local", "ray"))
        ray_only = {
            "--address": self.address,
            "--cpus": self.cpus,
            "--cpus-per-trial": self.cpus_per_trial,
            "--gpus-per-trial": self.gpus_per_trial,
        }
        if self.name == "local":
            given = [k for k, v in ray_only.items() if v is not None]
            if given:
                raise SpectuneError(
                    f"{given[0]} is for --backend ray (the local backend runs "
                    "one run after another in this process)"
                )
            return self
        if self.cpus is not None:
            integer("--cpus", self.cpus, minimum=1)
            if self.address is not None:
                raise SpectuneError(
                    "--cpus sizes the local Ray instance; a cluster given by "
                    "--address has its own CPUs (leave out one of them)"
                )
        if self.cpus_per_trial is not None and number("--cpus-per-trial", self.cpus_per_trial) <= 0:
            raise SpectuneError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None:
            number("--gpus-per-trial", self.gpus_per_trial, nonnegative=True)
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise SpectuneError("--address must be 'auto', host:port or ray://host:port")
        need = self.trial_resources["cpu"]
        cpus = self.cpus if self.cpus is not None else os.cpu_count() or 1
        if self.address is None and need > cpus:
            raise SpectuneError(
                f"--cpus-per-trial {need:g} is more than the local Ray "
                f"instance's {cpus} CPUs: no trial could start; lower it or "
                "raise --cpus"
            )
        return self


#: what a run's failure usually raises (its message alone is the reason); any other
#: exception is a failed run too, its reason starting with the exception's type
RUN_ERRORS = (SpectuneError, RuntimeError, ValueError, MemoryError)


def failure(exc: Exception) -> str:
    """Why a run failed, in one line: its message, after the type for an unexpected one."""
    text = str(exc).strip()
    if isinstance(exc, RUN_ERRORS) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TrialFailed(RuntimeError):
    """Raised inside a Ray trial for a failed run: Ray Tune records the trial as errored, and
    its message is the run's failure."""


def run_job(
    run_fn: Callable[..., Any], job: Job, progress: bool, held: HeldFolders | None = None
) -> tuple[Any, str | None]:
    """``(RunMetrics, None)`` or ``(None, why it failed)``: any exception of the run (not an
    interruption) is its failure. With ``held``, the run folder's lock is taken first (a
    folder another process uses is a failed run) and kept after the run."""
    if job.error is not None:
        return None, job.error
    try:
        cfg = TuneConfig.from_dict(job.config, source=f"run {job.name}")
        resume = job.resume and job.out.exists()
        with contextlib.nullcontext() if held is None else held.lend(job.out):
            again = {"overwrite": True} if job.overwrite else {}
            res = run_fn(cfg, out=job.out, resume=resume, progress=progress, **again)
        return res.metrics, None
    except Exception as exc:  # noqa: BLE001 - one run's failure, whatever it is, is not the study's
        return None, failure(exc)


def finished_run(folder: Path) -> bool:
    """Whether ``folder`` holds a complete run (its marker says so and metrics.json exists)."""

    try:
        marker = RunFolder(folder).read_marker()
    except SpectuneError:
        return False
    return (
        bool(marker) and marker.get("status") == "complete" and (folder / "metrics.json").is_file()
    )


#: the result of one job: ``(RunMetrics, None)`` or ``(None, why it failed)``
JobResult = tuple[Any, str | None]
#: runs a list of jobs (``what`` names the batch in progress output; None: a plain count), with
#: ``after(job, result)`` called after each run of the local backend; the results in order
Executor = Callable[..., list[JobResult]]


def make_executor(
    backend: str | Backend,
    address: str | None,
    run_fn: Callable[..., Any],
    progress: bool,
    held: HeldFolders | None = None,
    *,
    failures: bool | None = None,
) -> Executor:
    """A function running a list of jobs and returning their results in order; with
    ``held``, each job's folder stays locked from its run's start (see the module docstring).

    Args:
        backend / address: the backend and the Ray cluster.
        run_fn: the run function (:func:`spectune.tuning.recipe.tune`'s signature).
        progress: progress output.
        held: the locks of the run folders.
        failures: print each failed run's reason (None: with ``progress``).

    Raises:
        SpectuneError: a bad backend option, Ray missing, its address unreachable or its
            cluster too small for one trial (nothing is started then).
    """
    backend = Backend.of(backend, address)

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    def failed(job: Job, error: str) -> None:
        if failures is None:
            say(f"spectune: run {job.name} failed: {error}")
        elif failures:
            print(f"spectune: run {job.name} failed: {error}", file=sys.stderr)

    if backend.name == "local":

        def local(
            jobs: list[Job],
            what: str | None = None,
            after: Callable[[Job, JobResult], None] | None = None,
        ) -> list[JobResult]:
            results = []
            for i, job in enumerate(jobs, 1):
                say(
                    f"[{i}/{len(jobs)}] {job.name}"
                    if what is None
                    else f"[{what} {i}/{len(jobs)}] {job.name}"
                )
                metrics, error = run_job(run_fn, job, progress, held)
                if error is not None:
                    failed(job, error)
                results.append((metrics, error))
                if after is not None:
                    after(job, (metrics, error))
            return results

        return local
    start_ray(backend)

    def on_ray(jobs: list[Job], what: str | None = None, after: Any = None) -> list[JobResult]:
        what = what or "run"

        results: list[tuple[Any, str | None] | None] = [None] * len(jobs)
        todo = []
        for i, job in enumerate(jobs):
            if job.error is not None:
                results[i] = (None, job.error)
            elif job.resume and finished_run(job.out):  # as the local backend: no trial
                results[i] = run_job(run_fn, job, False, held)
            else:
                todo.append(i)
        if todo and held is not None:  # a trial's process takes the lock while it runs
            for i in todo:
                held.release(jobs[i].out)
        if todo:
            from ray import tune

            say(
                f"[{what}] {len(todo)} run(s) as Ray Tune trials"
                + (f" ({len(jobs) - len(todo)} finished before)" if len(todo) < len(jobs) else "")
            )
            trainable = tune.with_parameters(_job_trainable, run_fn=run_fn, jobs=jobs)
            grid = tune_fit(
                trainable,
                backend,
                name=f"spectune-{what.replace(' ', '-')}",
                param_space={"job": tune.grid_search(todo)},
                trial_name=lambda config: jobs[config["job"]].name,
                progress=progress,
            )
            index = {jobs[i].name: i for i in todo}
            for result in grid:
                i = index[trial_name_of(result)]
                if result.error is not None:
                    results[i] = (None, trial_error(result.error))
                elif "spectune_metrics" in (result.metrics or {}):
                    data = json.loads(result.metrics["spectune_metrics"])
                    results[i] = (RunMetrics.from_dict(data), None)
                else:
                    results[i] = (None, "the Ray trial ended without a result")
            if held is not None:  # the study holds them again until it ends
                for i in todo:
                    with contextlib.suppress(SpectuneError):
                        held.hold(jobs[i].out)
        for job, (_, error) in zip(jobs, results, strict=True):  # type: ignore[misc]
            if error is not None:
                failed(job, error)
        return [r if r is not None else (None, "the Ray trial did not run") for r in results]

    return on_ray


def _job_trainable(config: dict[str, Any], *, run_fn: Callable[..., Any], jobs: list[Job]) -> None:
    """A Ray Tune function trainable: the job ``config["job"]`` in the trial's worker; a failed
    run raises :class:`TrialFailed` (the trial errors), a finished one reports its metrics."""
    from ray import tune

    metrics, error = run_job(run_fn, jobs[config["job"]], False)
    if error is not None:
        raise TrialFailed(error)
    tune.report({"spectune_metrics": json.dumps(metrics.to_dict())})


def trial_name_of(result: Any) -> str:
    """The spectune name of a Ray Tune result: its trial folder's (``trial_dirname_creator``);
    ``result.config`` is empty for a trial that failed before it reported."""
    return Path(result.path).name


def trial_error(exc: BaseException) -> str:
    """The failure of a Ray trial in one line: a run's own message, or the exception that
    ended the trial (a worker that died, a bug) with its type."""
    cause = exc
    for _ in range(8):  # Ray wraps the trial's exception (RayTaskError.cause), maybe twice
        inner = getattr(cause, "cause", None)
        if not isinstance(inner, BaseException) or inner is cause:
            break
        cause = inner
    if isinstance(cause, TrialFailed):
        return str(cause)
    text = str(cause).strip().splitlines()
    return f"Ray trial failed: {type(cause).__name__}" + (f": {text[0]}" if text else "")


@contextlib.contextmanager
def _quiet_tune(progress: bool) -> Iterator[None]:
    """Ray Tune without its tables and tracebacks (spectune prints one line per trial), and
    without changing a trial's working directory (run folders land where the local backend
    puts them, relative paths of the config work)."""

    env = {
        "RAY_CHDIR_TO_TRIAL_DIR": "0",
        "RAY_AIR_NEW_OUTPUT": "0",
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    }
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    loggers = [logging.getLogger(n) for n in ("ray.tune", "ray.air", "ray.train")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _slots(backend: Backend) -> int:
    """How many trials the cluster runs at once (at least 1)."""
    import ray

    have = ray.cluster_resources()
    need = backend.trial_resources
    slots = int(have.get("CPU", 0) // need["cpu"])
    if need["gpu"] > 0:
        slots = min(slots, int(have.get("GPU", 0) // need["gpu"]))
    return max(1, slots)


def tune_fit(
    trainable: Any,
    backend: Backend,
    *,
    name: str,
    param_space: dict[str, Any],
    trial_name: Callable[[dict[str, Any]], str],
    progress: bool,
    num_samples: int = 1,
    search_alg: Any = None,
) -> Any:
    """Run ``trainable`` as Ray Tune trials on the connected cluster, each with the backend's
    resources, as many at once as fit; a failed trial is not retried and the others go on.

    Args:
        trainable: a function trainable (``tune.with_parameters`` of one).
        backend: the resources per trial.
        name: the experiment's name.
        param_space: Ray Tune's parameter space.
        trial_name: config -> the trial's name (the spectune run's name).
        progress: one line per trial started / finished / failed on stderr.
        num_samples: samples of the space (a search algorithm's trials).
        search_alg: a Ray Tune searcher (e.g. OptunaSearch).

    Returns:
        Ray Tune's ResultGrid.
    """

    from ray import tune

    class Lines(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if progress:
                print(f"[ray] {trial_name(trial.config)} started", file=sys.stderr, flush=True)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if progress:
                print(f"[ray] {trial_name(trial.config)} finished", file=sys.stderr, flush=True)

    def label(trial: Any) -> str:
        return trial_name(trial.config)

    storage = tempfile.mkdtemp(prefix="spectune-ray-")  # Ray Tune's own files, removed after
    try:
        with _quiet_tune(progress):
            tuner = tune.Tuner(
                tune.with_resources(trainable, backend.trial_resources),
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    num_samples=num_samples,
                    search_alg=search_alg,
                    max_concurrent_trials=_slots(backend),
                    reuse_actors=True,  # a worker imports torch once, not once per run
                    trial_name_creator=label,
                    trial_dirname_creator=label,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=storage,
                    verbose=0,
                    callbacks=[Lines()],
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                ),
            )
            return tuner.fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def _check_reachable(address: str) -> None:
    """A TCP connection to ``host:port`` (ray:// or a GCS address) within 5 s, so that an
    unreachable cluster is one clear error instead of Ray's minutes of retries."""

    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SpectuneError(f"--address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SpectuneError(
            f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}); nothing was "
            "started: check the address, start one (ray start --head), or leave out --address "
            "for a local instance"
        ) from None


def start_ray(backend: Backend) -> Any:
    """The ``ray`` module, connected to ``backend.address`` or to a new local instance of
    ``backend.cpus`` CPUs (an instance this process already runs is used as it is).

    Raises:
        SpectuneError: Ray is not installed, the address cannot be reached, or the cluster
            has fewer CPUs/GPUs than one trial asks for (nothing is started then).
    """
    try:
        import ray
        import ray.tune  # noqa: F401 - the backend needs Ray Tune (ray[tune])
    except ImportError as exc:
        raise SpectuneError(
            f"--backend ray needs Ray Tune ({exc}): pip install 'spectune[ray]' (or pip install "
            "'ray[tune]')"
        ) from None
    started = False
    if not ray.is_initialized():
        if backend.address not in (None, "auto"):
            _check_reachable(backend.address)
        try:
            if backend.address is None:
                ray.init(
                    address="local",
                    num_cpus=backend.cpus or os.cpu_count() or 1,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            else:
                ray.init(address=backend.address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception on a start timeout
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if backend.address is None:
                raise SpectuneError(
                    f"the local Ray instance did not start ({type(exc).__name__}: {first}); "
                    "on a busy machine try again, or use --backend local"
                ) from None
            raise SpectuneError(
                f"cannot reach a Ray cluster at {backend.address!r} ({type(exc).__name__}: "
                f"{first}); nothing was started: start one (ray start --head) or leave out "
                "--address for a local instance"
            ) from None
        started = True
    have = ray.cluster_resources()
    need = backend.trial_resources
    short = [
        f"{key} {need[key.lower()]:g} (the cluster has {have.get(key, 0):g})"
        for key in ("CPU", "GPU")
        if need[key.lower()] > have.get(key, 0)
    ]
    if short:
        if started:
            ray.shutdown()
        raise SpectuneError(
            f"one Ray trial asks for more than the cluster holds: "
            f"{', '.join(short)}; lower --cpus-per-trial/--gpus-per-trial or "
            "use a bigger cluster"
        )
    return ray


__all__ = [
    "RUN_ERRORS",
    "Backend",
    "Job",
    "TrialFailed",
    "failure",
    "finished_run",
    "make_executor",
    "run_job",
    "start_ray",
    "trial_error",
    "trial_name_of",
    "tune_fit",
]
