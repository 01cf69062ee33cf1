"""How a search's trials run: each Optuna trial set up as a spectune run
(:class:`TrialSetup`), asked, run and told one after another here (:func:`run_local`) or as
Ray Tune trials through Ray Tune's ``OptunaSearch`` on the same study (:func:`run_ray`); and
the trials that count when a search resumes (:func:`retry_unfinished`,
:func:`counted_trials`). The search itself is :mod:`spectune.studies.search`.

Optuna and Ray are optional extras: they are imported where a trial needs them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spectune.errors import SpectuneError
from spectune.results.runfolder import RunFolder
from spectune.studies.backends import (
    Backend,
    Job,
    TrialFailed,
    run_job,
    trial_error,
    trial_name_of,
    tune_fit,
)
from spectune.studies.search_space import Objective, Param, objective_values
from spectune.tuning.config import TuneConfig, apply_overrides


def _config_key(config: TuneConfig) -> str:
    text = json.dumps(config.relevant(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TrialSetup:
    """Sets up the spectune run of an Optuna trial: its sampled values, run name, validated
    config, or the values of an earlier trial that trained the same.

    An instance is also the define-by-run space of Ray Tune's ``OptunaSearch`` (it runs in the
    driver, where the study's storage is): it returns ``{"spectune": setup}``.

    Args:
        base: the raw base config.
        params: the space.
        runs: the folder of the run folders (absolute).
        source: how the base config is named in messages.
    """

    def __init__(
        self, base: dict[str, Any], params: Sequence[Param], runs: Path, source: str = "config"
    ) -> None:
        self.base = copy.deepcopy(base)
        self.params = list(params)
        self.runs = Path(runs)
        self.source = source

    def setup(self, trial: Any) -> dict[str, Any]:
        """Sample ``trial`` and set up its run.

        Returns:
            ``{"run", "number", "params", "out"}`` and either ``"config"``/``"method"`` (a run
            to do), ``"values"``/``"same_as"`` (a finished trial trained the same), or
            ``"error"`` (the sampled values make an invalid config).
        """
        from optuna.trial import TrialState  # Optuna is an optional extra

        values = {p.key: p.suggest(trial) for p in self.params}
        params = {p.key: p.value(values[p.key]) for p in self.params}
        name = trial.user_attrs.get("run") or f"trial-{trial.number:03d}"
        trial.set_user_attr("run", name)
        setup: dict[str, Any] = {
            "run": name,
            "number": trial.number,
            "params": params,
            "out": str(self.runs / name),
        }
        items = [f"{k}={json.dumps(v)}" for k, v in params.items()]
        try:
            config = TuneConfig.from_dict(
                apply_overrides(self.base, items), source=self.source, foreign_sections="drop"
            )
        except SpectuneError as exc:
            setup["error"] = f"the sampled values {params} make an invalid config: {exc}"
            return setup
        key = _config_key(config)
        trial.set_user_attr("config_key", key)
        for done in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if done.user_attrs.get("config_key") == key and not done.user_attrs.get("same_as"):
                trial.set_user_attr("same_as", done.user_attrs["run"])
                setup.update(same_as=done.user_attrs["run"], values=list(done.values))
                return setup
        setup.update(config=config.to_dict(), method=config.method)
        return setup

    def __call__(self, trial: Any) -> dict[str, Any]:
        return {"spectune": self.setup(trial)}


def _search_trainable(
    config: dict[str, Any], *, run_fn: Callable[..., Any], objectives: list[Objective]
) -> None:
    """A Ray Tune function trainable: the run set up for one Optuna trial; reports the
    objectives (the run folder holds the rest), or raises :class:`TrialFailed` (the trial
    fails)."""
    from ray import tune  # Ray is an optional extra

    setup = config["spectune"]
    names = [o.name for o in objectives]
    if setup.get("error"):
        raise TrialFailed(setup["error"])
    if setup.get("values") is not None:  # trains what a finished trial trained
        tune.report(dict(zip(names, setup["values"], strict=True)))
        return
    job = Job(setup["run"], setup["method"], setup["config"], Path(setup["out"]), True)
    metrics, error = run_job(run_fn, job, False)
    if error is not None:
        raise TrialFailed(error)
    tune.report(dict(zip(names, objective_values(metrics, objectives), strict=True)))


def retry_unfinished(study: Any) -> list[str]:
    """Queue again, with their own values and run folders, the trials that were interrupted
    (still "running" in the storage: no other process holds the folder) or failed; returns
    their runs. The old trial stays in the storage, failed, superseded by its retry."""
    from optuna.trial import TrialState  # Optuna is an optional extra

    trials = study.get_trials(deepcopy=False)
    superseded = {t.user_attrs["retries"] for t in trials if "retries" in t.user_attrs}
    retried = []
    for t in trials:
        if t.number in superseded or t.state not in (TrialState.RUNNING, TrialState.FAIL):
            continue
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
        run = t.user_attrs.get("run") or f"trial-{t.number:03d}"
        study.enqueue_trial(dict(t.params), user_attrs={"run": run, "retries": t.number})
        retried.append(run)
    return retried


def counted_trials(study: Any) -> tuple[list[Any], set[int]]:
    """The finished trials that count (not superseded by a retry), and the superseded."""
    from optuna.trial import TrialState  # Optuna is an optional extra

    trials = study.get_trials(deepcopy=False)
    superseded = {t.user_attrs["retries"] for t in trials if "retries" in t.user_attrs}
    done = [
        t
        for t in trials
        if t.number not in superseded and t.state in (TrialState.COMPLETE, TrialState.FAIL)
    ]
    return done, superseded


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def format_values(objectives: Sequence[Objective], values: Sequence[float]) -> str:
    return ", ".join(f"{o.name}={v:.4g}" for o, v in zip(objectives, values, strict=True))


def run_local(
    study: Any,
    trial_setup: TrialSetup,
    objectives: list[Objective],
    n: int,
    total: int,
    first: int,
    run_fn: Callable[..., Any],
    progress: bool,
    folder: RunFolder,
    errors: dict[str, str],
    held: Any = None,
) -> None:
    """Ask, run and tell ``n`` trials one after another."""
    from optuna.trial import TrialState  # Optuna is an optional extra

    for i in range(n):
        trial = study.ask()
        setup = trial_setup.setup(trial)
        name = setup["run"]
        if progress:
            print(
                f"[trial {first + i + 1}/{total}] {name}: {format_params(setup['params'])}",
                file=sys.stderr,
                flush=True,
            )
        if setup.get("values") is not None:
            study.tell(trial, setup["values"])
            if progress:
                print(f"  trains what {setup['same_as']} trained: its values", file=sys.stderr)
            continue
        error = setup.get("error")
        if error is None:
            job = Job(name, setup["method"], setup["config"], Path(setup["out"]), True)
            metrics, error = run_job(run_fn, job, progress, held)
            if error is None:
                try:
                    values = objective_values(metrics, objectives)
                except TrialFailed as exc:
                    error = str(exc)
        if error is not None:
            errors[name] = error
            trial.set_user_attr("error", error[:2000])
            study.tell(trial, state=TrialState.FAIL)
            print(f"spectune: trial {name} failed: {error}", file=sys.stderr)
        else:
            study.tell(trial, values)
            if progress:
                print(f"  {format_values(objectives, values)}", file=sys.stderr, flush=True)
        folder.record()


def run_ray(
    study: Any,
    storage: Any,
    sampler: Any,
    trial_setup: TrialSetup,
    objectives: list[Objective],
    n: int,
    backend: Backend,
    run_fn: Callable[..., Any],
    progress: bool,
    errors: dict[str, str],
) -> None:
    """Run ``n`` trials as Ray Tune trials, asked and told by Ray Tune's OptunaSearch on the
    same study."""
    from ray import tune  # Ray is an optional extra
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space=trial_setup,
        metric=[o.name for o in objectives],
        mode=[o.mode for o in objectives],
        sampler=sampler,
        study_name=study.study_name,
        storage=storage,
    )
    trainable = tune.with_parameters(_search_trainable, run_fn=run_fn, objectives=objectives)
    grid = tune_fit(
        trainable,
        backend,
        name="spectune-search",
        param_space={},
        trial_name=lambda config: config["spectune"]["run"],
        progress=progress,
        num_samples=n,
        search_alg=searcher,
    )
    for result in grid:
        if result.error is not None:
            name = trial_name_of(result)
            errors[name] = trial_error(result.error)
            print(f"spectune: trial {name} failed: {errors[name]}", file=sys.stderr)


__all__ = [
    "TrialSetup",
    "counted_trials",
    "format_params",
    "format_values",
    "retry_unfinished",
    "run_local",
    "run_ray",
]
