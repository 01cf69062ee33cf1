"""Where the runs of a sweep or a study are done: here, one after another, or on Ray.

:func:`make_executor` returns a function that takes a list of :class:`Job` and returns, in
order, ``(RunMetrics, None)`` for each finished run or ``(None, why it failed)``:

- ``"local"``: one run after another in this process.
- ``"ray"``: every job as a Ray task of one CPU (``ray.remote(num_cpus=1)``), as many at once
  as the cluster has CPUs; on a local instance of 2 CPUs that spectune starts when no
  ``address`` is given, or on an existing cluster (``"auto"``, ``"host:port"``,
  ``"ray://host:port"``). A task that fails, or whose worker dies, is a failed run; the rest go
  on. An address that cannot be reached is one error before anything starts. The workers
  write the same run folders as the local backend (a shared file system on a cluster).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectune.errors import SpectuneError
from spectune.finetune.config import TuneConfig


@dataclass
class Job:
    """One run to do: its name, method, raw config, folder, whether to resume, or why not."""

    name: str
    method: str
    config: dict[str, Any] | None
    out: Path
    resume: bool
    error: str | None = None


#: what a run's failure may raise (anything else is a bug and propagates)
RUN_ERRORS = (SpectuneError, RuntimeError, ValueError, MemoryError)


def _run_job(run_fn: Callable[..., Any], job: Job, progress: bool) -> tuple[Any, str | None]:
    """``(RunMetrics, None)`` or ``(None, why it failed)``."""
    if job.error is not None:
        return None, job.error
    try:
        cfg = TuneConfig.from_dict(job.config, source=f"run {job.name}")
        res = run_fn(cfg, out=job.out, resume=job.resume and job.out.exists(), progress=progress)
        return res.metrics, None
    except RUN_ERRORS as exc:
        return None, str(exc)


def make_executor(backend: str, address: str | None, run_fn: Callable[..., Any],
              progress: bool) -> Callable[[list[Job], str], list[tuple[Any, str | None]]]:  # fmt: skip
    """A function running a list of jobs and returning their results in order.

    Raises:
        SpectuneError: an unknown backend, Ray missing or its address unreachable.
    """
    from spectune._check import choice

    choice("backend", backend, ("local", "ray"))

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    if backend == "local":

        def local(jobs: list[Job], what: str) -> list[tuple[Any, str | None]]:
            results = []
            for i, job in enumerate(jobs, 1):
                say(f"[{what} {i}/{len(jobs)}] {job.name}")
                metrics, error = _run_job(run_fn, job, progress)
                if error is not None:
                    say(f"spectune: run {job.name} failed: {error}")
                results.append((metrics, error))
            return results

        return local
    ray = _start_ray(address)
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_job)

    def on_ray(jobs: list[Job], what: str) -> list[tuple[Any, str | None]]:
        if not jobs:
            return []
        say(f"[{what}] {len(jobs)} run(s) on Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
        refs = [remote.remote(run_fn, job) for job in jobs]
        results = []
        for job, ref in zip(jobs, refs, strict=True):
            try:
                metrics, error = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a crashed worker is a failed trial
                metrics, error = None, f"Ray trial failed: {type(exc).__name__}: {exc}"
            if error is not None:
                say(f"spectune: run {job.name} failed: {error}")
            results.append((None if metrics is None else _metrics(metrics), error))
        return results

    return on_ray


def _metrics(data: dict[str, Any]) -> Any:
    from spectune.finetune.results import RunMetrics

    return RunMetrics.from_dict(data)


def _ray_job(run_fn: Callable[..., Any], job: Job) -> tuple[dict[str, Any] | None, str | None]:
    """A Ray task: one run in a worker process (metrics as plain data)."""
    metrics, error = _run_job(run_fn, job, False)
    return (None if metrics is None else metrics.to_dict()), error


def _check_reachable(address: str) -> None:
    """A TCP connection to ``host:port`` (ray:// or a GCS address) within 5 s, so that an
    unreachable cluster is one clear error instead of Ray's minutes of retries."""
    import socket

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


def _start_ray(address: str | None) -> Any:
    """The ``ray`` module, connected to ``address`` or to a new local instance of 2 CPUs.

    Raises:
        SpectuneError: Ray is not installed, or the address cannot be reached (nothing is
            started then).
    """
    try:
        import ray
    except ImportError:
        raise SpectuneError(
            "--backend ray needs Ray: pip install 'spectune[ray]' (or pip install ray)"
        ) from None
    if ray.is_initialized():
        return ray
    if address not in (None, "auto"):
        _check_reachable(address)
    try:
        if address is None:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise SpectuneError(
            f"cannot reach a Ray cluster at {address!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was started: start one "
            "(ray start --head) or leave out --address for a local instance"
        ) from None
    return ray


__all__ = ["RUN_ERRORS", "Job", "make_executor"]
