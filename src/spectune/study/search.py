"""Searches: a multi-objective Optuna study over run settings, its Pareto set, resumable.

``spectune search CONFIG --space r=4,8,16,32 lora_alpha=8..256:log lora_dropout=0..0.2
learning_rate=1e-5..1e-2:log method=lora,dora --trials 30 --objectives
accuracy_gain,forgetting`` samples settings with Optuna, runs each trial as a spectune run
and returns the trials no other trial beats on every objective (the Pareto set).

The space (:func:`parse_space`), one ``key=spec`` item per setting (the keys of ``--grid``:
``r``, ``lora.lora_alpha``, ``train.learning_rate`` (``learning_rate`` for short),
``method``...):

- ``a,b,c``: categorical (YAML values: ``[q_proj,v_proj]`` is a list);
- ``low..high``: uniform, integer when both bounds are integers; ``low..high:log`` on a log
  scale; ``low..high:step=S`` on a grid of step S.

Objectives (:data:`OBJECTIVES`): ``accuracy_gain`` (held-out accuracy after minus before,
maximized), ``forgetting`` (perplexity on general text after / before - 1, minimized), or any
of the others; ``name:max`` / ``name:min`` sets the direction. Samplers: ``nsga2`` (NSGA-II,
the default with several objectives), ``tpe`` (the default with one), ``random``, ``grid``
(every combination of a categorical space); all seeded (``seed``, recorded).

Search folder (the sweep layout plus the study's storage)::

    search.yaml     the base config and the search settings (resume checks them)
    optuna.db       the Optuna study (SQLite; every trial is committed as it is asked and told)
    runs/trial-NNN/ one spectune run folder per trial
    results.csv     one row per run: the sweep's columns, the sampled values, the objectives,
                    ``pareto``; results.md, comparison.json, plots/, report.html as a sweep's
    search.json     :class:`SearchResult`: every trial, the Pareto set, the settings
    pareto.json / pareto.csv   the Pareto set

A trial that trains exactly what an earlier finished trial trained (the method does not read a
sampled key, or a categorical space repeats a point) is not run again: it gets the earlier
trial's values (``same_as``). A failed run, whatever it raises, is a failed trial (recorded
with its reason) and the search goes on; each trial's run folder stays locked until the search
ends, and the search's ``run.json`` is never left "running" (an interruption marks it failed;
``--resume`` continues it). A damaged ``optuna.db`` is refused on ``--resume`` before anything
changes. ``resume=True`` opens the study in ``optuna.db`` again: finished trials are
kept, a trial that was interrupted or failed is run again with its own values in its own
folder (an interrupted run continues from its last checkpoint), then new trials are asked
until ``trials`` have finished; ``trials`` may be raised on resume, any other change of the
search or its base config is refused, naming the fields. The sampler is seeded from its
seed and the number of trials in the storage on resume (started from the seed alone it would
propose its first points again), so a resumed search proposes other points than an
uninterrupted one would, reproducibly.

With ``backend="ray"`` the trials run as Ray Tune trials through Ray Tune's ``OptunaSearch``
on the same study (same storage, sampler and space), as many at once as the cluster holds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune._io import write_json, write_text
from spectune.errors import SpectuneError
from spectune.study.backends import Backend, Job, TrialFailed, run_job
from spectune.tune.config import TuneConfig, apply_overrides, parse_value

if TYPE_CHECKING:
    from spectune.results.metrics import RunMetrics

SEARCH_CONFIG = "search.yaml"
SEARCH_JSON = "search.json"
STORAGE = "optuna.db"
STUDY_NAME = "spectune-search"

#: objective -> (default direction, what it is)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy_gain": ("maximize", "held-out accuracy after tuning minus before (fraction)"),
    "forgetting": ("minimize", "perplexity on general text after / before - 1"),
    "accuracy_after": ("maximize", "held-out accuracy after tuning"),
    "perplexity_change": ("minimize", "perplexity on general text after minus before"),
    "heldout_loss_after": ("minimize", "loss on the held-out answers after tuning"),
    "train_loss": ("minimize", "final training loss"),
    "train_seconds": ("minimize", "train wall time (s)"),
    "ms_per_token": ("minimize", "inference latency (ms per generated token)"),
    "peak_rss_mib": ("minimize", "peak resident memory of the run (MiB)"),
    "trainable_percent": ("minimize", "trainable parameters (% of the model)"),
    "adapter_mib": ("minimize", "size of the saved adapter (MiB)"),
}

SAMPLERS = ("nsga2", "tpe", "random", "grid")

#: the space when none is given: the LoRA study's four settings and the method
DEFAULT_SPACE = ("r=4,8,16,32,64", "lora_alpha=4..256:log", "lora_dropout=0..0.2",
                 "train.learning_rate=1e-5..1e-2:log", "method=lora,dora")  # fmt: skip

#: short keys of the space
_ALIASES = {"learning_rate": "train.learning_rate", "lr": "train.learning_rate"}


# --------------------------------------------------------------------------- the space


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


@dataclass(frozen=True)
class Param:
    """One dimension of the search space.

    Attributes:
        key: the config key (dotted for sections; ``r`` reaches ``lora.r`` as in overrides).
        kind: ``"float"``, ``"int"`` or ``"categorical"``.
        low / high: the bounds of a range (both included).
        log: sample the range on a log scale.
        step: the range's grid step (None: continuous / every integer).
        choices: the values of a categorical dimension (any YAML values).
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def _encoded(self) -> list[Any]:
        """Choices as Optuna holds them: lists and mappings as their JSON text."""
        return [c if _primitive(c) else json.dumps(c, sort_keys=True) for c in self.choices]

    def suggest(self, trial: Any) -> Any:
        """Ask ``trial`` for this dimension; returns what Optuna stores (see :meth:`value`)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self._encoded())
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))  # fmt: skip
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    def value(self, stored: Any) -> Any:
        """The config value of what Optuna stored for this dimension."""
        if self.kind == "categorical":
            return self.choices[self._encoded().index(stored)]
        return int(stored) if self.kind == "int" else float(stored)

    def text(self) -> str:
        """``"4..64 (int, log)"``, ``"lora, dora"``."""
        if self.kind == "categorical":
            return ", ".join(json.dumps(c) if not isinstance(c, str) else c for c in self.choices)
        extra = [self.kind] + (["log"] if self.log else []) + (
            [f"step {self.step:g}"] if self.step else [])  # fmt: skip
        return f"{self.low:g}..{self.high:g} ({', '.join(extra)})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "choices": list(self.choices)}


def _number(text: str, item: str) -> float | int:
    value = parse_value(text.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpectuneError(f"--space item {item!r}: {text.strip()!r} is not a number")
    return value


def parse_space(items: Sequence[str]) -> list[Param]:
    """``["r=4,8,16", "learning_rate=1e-5..1e-3:log"]`` -> the :class:`Param` list.

    Raises:
        SpectuneError: an item that is not ``key=spec``, a key given twice, a range whose low
            bound is not below the high one, a log range from 0 or below, ``log`` with
            ``step``, one value only (give it as an override), repeated values.
    """
    from spectune.study.sweep import parse_grid

    params: list[Param] = []
    for item in items:
        key, sep, spec = item.partition("=")
        key = _ALIASES.get(key.strip(), key.strip())
        if not sep or not key or not spec.strip():
            raise SpectuneError(f"--space item {item!r} is not key=a,b,c or key=low..high[:log] "
                                "(e.g. r=4,8,16 or learning_rate=1e-5..1e-3:log)")  # fmt: skip
        if any(p.key == key for p in params):
            raise SpectuneError(f"--space gives {key!r} twice; give it once")
        if key == "output_dir":
            raise SpectuneError("--space cannot vary output_dir; each trial gets runs/trial-NNN")
        bounds, *options = spec.split(":")
        if ".." in bounds and "," not in bounds and not bounds.lstrip().startswith("["):
            lo_text, _, hi_text = bounds.partition("..")
            lo, hi = _number(lo_text, item), _number(hi_text, item)
            log, step = False, None
            for opt in options:
                name, _, value = opt.strip().partition("=")
                if name == "log" and not value:
                    log = True
                elif name == "step" and value:
                    step = _number(value, item)
                    if step <= 0:
                        raise SpectuneError(f"--space item {item!r}: step must be > 0")
                else:
                    raise SpectuneError(f"--space item {item!r}: unknown option {opt!r} (options: "
                                        "log, step=S)")  # fmt: skip
            if not lo < hi:
                raise SpectuneError(f"--space item {item!r}: the low bound must be below the high "
                                    "one (one value: give it as an override key=value)")  # fmt: skip
            if log and step is not None:
                raise SpectuneError(f"--space item {item!r}: log and step exclude each other")
            if log and lo <= 0:
                raise SpectuneError(f"--space item {item!r}: a log range needs a low bound > 0")
            is_int = all(isinstance(v, int) for v in (lo, hi, step) if v is not None)
            params.append(Param(key, "int" if is_int else "float", lo, hi, log,
                                step if step is None or not is_int else int(step)))  # fmt: skip
            continue
        values = parse_grid([f"{key}={spec}"])[key]
        if len(values) < 2:
            raise SpectuneError(f"--space item {item!r} has one value: give it as an override "
                                f"({key}={spec}) or list several (key=a,b)")  # fmt: skip
        seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(seen)) < len(seen):
            raise SpectuneError(f"--space item {item!r} repeats a value")
        params.append(Param(key, "categorical", choices=tuple(values)))
    if not params:
        raise SpectuneError("--space needs at least one key=spec item (e.g. r=4,8,16)")
    return params


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """One objective of the search: a run metric and whether it is maximized."""

    name: str
    direction: str

    @property
    def mode(self) -> str:
        """Ray Tune's spelling of the direction."""
        return "max" if self.direction == "maximize" else "min"

    def value(self, metrics: RunMetrics) -> float | None:
        """The objective of a finished run (None when the run did not measure it)."""
        if self.name == "accuracy_gain":
            v = metrics.learning.accuracy_gain
        elif self.name == "forgetting":
            ratio = metrics.forgetting.perplexity_ratio
            v = None if ratio is None else ratio - 1
        else:
            v = metrics.row().get(self.name)
        return None if v is None or not math.isfinite(float(v)) else float(v)


def parse_objectives(spec: str | Sequence[str]) -> list[Objective]:
    """``"accuracy_gain,forgetting"`` or ``["accuracy_after:max", "train_seconds"]``.

    Raises:
        SpectuneError: an unknown objective, a direction that is not max/min, one given twice.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Objective] = []
    for item in (i.strip() for i in items):
        name, _, way = item.partition(":")
        if name not in OBJECTIVES:
            raise SpectuneError(f"--objectives: unknown objective {name!r} (known: "
                                f"{', '.join(OBJECTIVES)})")  # fmt: skip
        if way not in ("", "max", "min"):
            raise SpectuneError(f"--objectives {item!r}: the direction is max or min")
        direction = {"max": "maximize", "min": "minimize"}.get(way, OBJECTIVES[name][0])
        if any(o.name == name for o in out):
            raise SpectuneError(f"--objectives gives {name!r} twice")
        out.append(Objective(name, direction))
    if not out:
        raise SpectuneError("--objectives needs at least one objective (e.g. accuracy_gain)")
    return out


def objective_values(metrics: RunMetrics, objectives: Sequence[Objective]) -> list[float]:
    """The run's objective values.

    Raises:
        TrialFailed: the run did not measure one of them (the trial fails, naming it).
    """
    values = [o.value(metrics) for o in objectives]
    missing = [o.name for o, v in zip(objectives, values, strict=True) if v is None]
    if missing:
        raise TrialFailed(f"the run measured no {', '.join(missing)} (check its eval settings: "
                          "eval.before judges the base model, eval.ppl_chars the general text)")  # fmt: skip
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------- the sampler

try:  # Optuna is an optional extra: without it the search says how to install it
    from optuna.samplers import GridSampler as _OptunaGridSampler
except ImportError:  # pragma: no cover - the class is only made when Optuna is there
    _OptunaGridSampler = object  # type: ignore[assignment,misc]


class _GridSampler(_OptunaGridSampler):  # type: ignore[misc,valid-type]
    """Optuna's GridSampler without its ``study.stop()`` once the grid is covered: that only
    works inside ``Study.optimize``, and the search asks and tells trials itself (it runs at
    most as many trials as the grid has points)."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def make_sampler(
    name: str, seed: int, params: Sequence[Param], population: int | None = None
) -> Any:
    """The seeded Optuna sampler ``name`` (see :data:`SAMPLERS`).

    Raises:
        SpectuneError: ``grid`` over a range, ``population`` with another sampler than nsga2.
    """
    import optuna

    from spectune._check import choice, integer

    choice("--sampler", name, SAMPLERS)
    if population is not None:
        if name != "nsga2":
            raise SpectuneError("--population is NSGA-II's generation size: it goes with "
                                "--sampler nsga2")  # fmt: skip
        integer("--population", population, minimum=2)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population or 50, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    ranges = [p.key for p in params if p.kind != "categorical"]
    if ranges:
        raise SpectuneError(f"--sampler grid tries every combination of categorical values; "
                            f"{', '.join(ranges)} is a range (list its values: key=a,b,c)")  # fmt: skip
    return _GridSampler({p.key: p._encoded() for p in params}, seed=seed)


def resumed_seed(seed: int, n_trials: int) -> int:
    """The sampler's seed when a search resumes with ``n_trials`` in its storage: a seeded
    sampler started again from ``seed`` would propose the points it proposed first."""
    return int(hashlib.sha256(f"spectune-search:{seed}:{n_trials}".encode()).hexdigest()[:8], 16)


def grid_size(params: Sequence[Param]) -> int:
    """How many combinations a categorical space has."""
    return math.prod(len(p.choices) for p in params)


# --------------------------------------------------------------------------- trials


def _config_key(config: TuneConfig) -> str:
    text = json.dumps(config.relevant(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Planner:
    """Turns an Optuna trial into the plan of a spectune run: sampled values, run name,
    validated config, or the values of an earlier trial that trained the same.

    An instance is also the define-by-run space of Ray Tune's ``OptunaSearch`` (it runs in the
    driver, where the study's storage is): it returns ``{"spectune": plan}``.

    Args:
        base: the raw base config.
        params: the space.
        runs: the folder of the run folders (absolute).
        source: how the base config is named in messages.
    """

    def __init__(self, base: dict[str, Any], params: Sequence[Param], runs: Path,
                 source: str = "config") -> None:  # fmt: skip
        self.base = copy.deepcopy(base)
        self.params = list(params)
        self.runs = Path(runs)
        self.source = source

    def plan(self, trial: Any) -> dict[str, Any]:
        """Sample ``trial`` and plan its run.

        Returns:
            ``{"run", "number", "params", "out"}`` and either ``"config"``/``"method"`` (a run
            to do), ``"values"``/``"same_as"`` (a finished trial trained the same), or
            ``"error"`` (the sampled values make an invalid config).
        """
        values = {p.key: p.suggest(trial) for p in self.params}
        params = {p.key: p.value(values[p.key]) for p in self.params}
        name = trial.user_attrs.get("run") or f"trial-{trial.number:03d}"
        trial.set_user_attr("run", name)
        plan: dict[str, Any] = {"run": name, "number": trial.number, "params": params,
                                "out": str(self.runs / name)}  # fmt: skip
        items = [f"{k}={json.dumps(v)}" for k, v in params.items()]
        try:
            config = TuneConfig.from_dict(apply_overrides(self.base, items), source=self.source,
                                          foreign_sections="drop")  # fmt: skip
        except SpectuneError as exc:
            plan["error"] = f"the sampled values {params} make an invalid config: {exc}"
            return plan
        key = _config_key(config)
        trial.set_user_attr("config_key", key)
        from optuna.trial import TrialState

        for done in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if done.user_attrs.get("config_key") == key and not done.user_attrs.get("same_as"):
                trial.set_user_attr("same_as", done.user_attrs["run"])
                plan.update(same_as=done.user_attrs["run"], values=list(done.values))
                return plan
        plan.update(config=config.to_dict(), method=config.method)
        return plan

    def __call__(self, trial: Any) -> dict[str, Any]:
        return {"spectune": self.plan(trial)}


def _search_trainable(config: dict[str, Any], *, run_fn: Callable[..., Any],
                      objectives: list[Objective]) -> None:  # fmt: skip
    """A Ray Tune function trainable: the planned run of one Optuna trial; reports the
    objectives (the run folder holds the rest), or raises :class:`TrialFailed` (the trial
    fails)."""
    from ray import tune

    plan = config["spectune"]
    names = [o.name for o in objectives]
    if plan.get("error"):
        raise TrialFailed(plan["error"])
    if plan.get("values") is not None:  # trains what a finished trial trained
        tune.report(dict(zip(names, plan["values"], strict=True)))
        return
    job = Job(plan["run"], plan["method"], plan["config"], Path(plan["out"]), True)
    metrics, error = run_job(run_fn, job, False)
    if error is not None:
        raise TrialFailed(error)
    tune.report(dict(zip(names, objective_values(metrics, objectives), strict=True)))


# --------------------------------------------------------------------------- results


@dataclass
class TrialRecord:
    """One trial of a search.

    Attributes:
        number: Optuna's trial number.
        run: its run folder's name under ``runs/`` (``same_as``'s when it ran no run).
        state: ``"complete"`` or ``"failed"``.
        params: the sampled values (config values).
        values: the objective values (None when it failed).
        same_as: the earlier trial's run it trained exactly the same as (no run of its own).
        error: why it failed.
        pareto: whether it is in the Pareto set.
    """

    number: int
    run: str
    state: str
    params: dict[str, Any]
    values: list[float] | None
    same_as: str | None = None
    error: str | None = None
    pareto: bool = False


@dataclass
class SearchResult:
    """Everything a search did and found (``search.json``)."""

    title: str
    objectives: list[dict[str, str]]
    sampler: dict[str, Any]
    space: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    failed_runs: dict[str, str]
    backend: str
    storage: str = STORAGE
    study_name: str = STUDY_NAME
    notes: list[str] = field(default_factory=list)
    total_seconds: float | None = None
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, folder: str | Path) -> SearchResult:
        path = Path(folder) / SEARCH_JSON
        if not path.is_file():
            raise SpectuneError(f"{path} does not exist: {folder} holds no finished search")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- the search


def _settings_block(params: Sequence[Param], objectives: Sequence[Objective], sampler: str,
                    seed: int, population: int | None, trials: int) -> dict[str, Any]:  # fmt: skip
    return {"space": {p.key: p.to_dict() for p in params},
            "objectives": [f"{o.name}:{o.mode}" for o in objectives], "sampler": sampler,
            "seed": seed, "population": population, "trials": trials}  # fmt: skip


def _retry_unfinished(study: Any) -> list[str]:
    """Queue again, with their own values and run folders, the trials that were interrupted
    (still "running" in the storage: no other process holds the folder) or failed; returns
    their runs. The old trial stays in the storage, failed, superseded by its retry."""
    from optuna.trial import TrialState

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


def _counted(study: Any) -> tuple[list[Any], set[int]]:
    """The finished trials that count (not superseded by a retry), and the superseded."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    superseded = {t.user_attrs["retries"] for t in trials if "retries" in t.user_attrs}
    done = [t for t in trials if t.number not in superseded
            and t.state in (TrialState.COMPLETE, TrialState.FAIL)]  # fmt: skip
    return done, superseded


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())  # fmt: skip


def _fmt_values(objectives: Sequence[Objective], values: Sequence[float]) -> str:
    return ", ".join(f"{o.name}={v:.4g}" for o, v in zip(objectives, values, strict=True))


def _run_local(study: Any, planner: Planner, objectives: list[Objective], n: int, total: int,
               first: int, run_fn: Callable[..., Any], progress: bool, folder: Any,
               errors: dict[str, str], held: Any = None) -> None:  # fmt: skip
    """Ask, run and tell ``n`` trials one after another."""
    from optuna.trial import TrialState

    for i in range(n):
        trial = study.ask()
        plan = planner.plan(trial)
        name = plan["run"]
        if progress:
            print(f"[trial {first + i + 1}/{total}] {name}: {_fmt_params(plan['params'])}",
                  file=sys.stderr, flush=True)  # fmt: skip
        if plan.get("values") is not None:
            study.tell(trial, plan["values"])
            if progress:
                print(f"  trains what {plan['same_as']} trained: its values", file=sys.stderr)
            continue
        error = plan.get("error")
        if error is None:
            job = Job(name, plan["method"], plan["config"], Path(plan["out"]), True)
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
                print(f"  {_fmt_values(objectives, values)}", file=sys.stderr, flush=True)
        folder.record()


def _run_ray(study: Any, storage: Any, sampler: Any, planner: Planner,
             objectives: list[Objective], n: int, backend: Backend, run_fn: Callable[..., Any],
             progress: bool, errors: dict[str, str]) -> None:  # fmt: skip
    """Run ``n`` trials as Ray Tune trials, asked and told by Ray Tune's OptunaSearch on the
    same study."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from spectune.study.backends import trial_error, trial_name_of, tune_fit

    searcher = OptunaSearch(space=planner, metric=[o.name for o in objectives],
                            mode=[o.mode for o in objectives], sampler=sampler,
                            study_name=STUDY_NAME, storage=storage)  # fmt: skip
    trainable = tune.with_parameters(_search_trainable, run_fn=run_fn, objectives=objectives)
    grid = tune_fit(trainable, backend, name="spectune-search", param_space={},
                    trial_name=lambda config: config["spectune"]["run"], progress=progress,
                    num_samples=n, search_alg=searcher)  # fmt: skip
    for result in grid:
        if result.error is not None:
            name = trial_name_of(result)
            errors[name] = trial_error(result.error)
            print(f"spectune: trial {name} failed: {errors[name]}", file=sys.stderr)


def _run_error(run_dir: Path) -> str | None:
    from spectune.results.runfolder import RunFolder

    try:
        marker = RunFolder(run_dir).read_marker()  # validated: "error" is text when there
    except SpectuneError:
        return None
    return (marker or {}).get("error")


def search(
    config_path: str | Path | None,
    *,
    space: Sequence[str] | None = None,
    objectives: str | Sequence[str] = ("accuracy_gain", "forgetting"),
    trials: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    population: int | None = None,
    overrides: Sequence[str] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    backend: str | Backend = "local",
    address: str | None = None,
    run_fn: Callable[..., Any] | None = None,
) -> SearchResult:
    """Run a search (see the module docstring) into ``out``.

    Args:
        config_path: the base YAML config (None: the defaults).
        space: ``key=spec`` items (None: :data:`DEFAULT_SPACE`).
        objectives: names (``name:max``/``name:min`` to set the direction).
        trials: trials to finish in total (a resume counts the finished ones; None with the
            grid sampler: every combination).
        sampler: ``nsga2``, ``tpe``, ``random`` or ``grid`` (None: nsga2 with several
            objectives, tpe with one).
        seed: the sampler's seed.
        population: NSGA-II's generation size (None: Optuna's 50).
        overrides: ``key=value`` items applied to the base config first.
        out: the search folder (default: the base config's output_dir).
        overwrite / resume: as for sweeps; see the module docstring for resume.
        progress: progress output.
        backend / address: ``"local"`` or ``"ray"`` (through Ray Tune's OptunaSearch) or a
            :class:`~spectune.study.backends.Backend`; the Ray cluster.
        run_fn: the run function (default :func:`spectune.tune.recipe.tune`).

    Returns:
        The :class:`SearchResult` (also in ``search.json``).

    Raises:
        SpectuneError: Optuna missing, a bad space/objective/sampler, a changed search on
            resume (the fields are named), Ray unreachable.
    """
    try:
        import optuna
    except ImportError:
        raise SpectuneError(
            "spectune search needs Optuna: pip install 'spectune[optuna]' (or pip install optuna)"
        ) from None
    from spectune._check import integer
    from spectune.results.runfolder import HeldFolders, RunFolder, fail_on_exit
    from spectune.tune.config import changed_fields, read_config_data, yaml_load
    from spectune.tune.recipe import tune

    run_fn = run_fn or tune
    base = read_config_data(config_path) if config_path is not None else {}
    base = apply_overrides(base, list(overrides or []))
    source = str(config_path or "config")
    base_config = TuneConfig.from_dict(base, source=source, foreign_sections="drop")
    params = parse_space(list(space) if space is not None else list(DEFAULT_SPACE))
    objs = parse_objectives(objectives)
    sampler_name = sampler or ("nsga2" if len(objs) > 1 else "tpe")
    integer("--seed", seed, minimum=0)
    sampler_obj = make_sampler(sampler_name, seed, params, population)
    if trials is None:
        if sampler_name != "grid":
            raise SpectuneError("--trials N is needed: how many trials the search runs")
        trials = grid_size(params)
    integer("--trials", trials, minimum=1)
    if sampler_name == "grid" and trials > grid_size(params):
        raise SpectuneError(f"--trials {trials}: the grid has {grid_size(params)} combinations; "
                            "give at most that many")  # fmt: skip
    out = Path(out if out is not None else base_config.output_dir)
    root = out.absolute()
    backend = Backend.of(backend, address)
    planner = Planner(base, params, root / "runs", source)
    for p in params:  # every value a dimension can take must be a valid setting on its own
        for v in p.choices or (p.low, p.high):
            try:
                TuneConfig.from_dict(apply_overrides(base, [f"{p.key}={json.dumps(v)}"]),
                                     source=source, foreign_sections="drop")  # fmt: skip
            except SpectuneError as exc:
                raise SpectuneError(f"--space {p.key}={v!r}: {exc}") from None
    if backend.name == "ray":
        from spectune.study.backends import start_ray

        try:
            import ray.tune.search.optuna  # noqa: F401
        except ImportError as exc:
            raise SpectuneError(f"--backend ray needs Ray Tune ({exc}): pip install "
                                "'spectune[ray]'") from None  # fmt: skip
        start_ray(backend)  # an unreachable cluster: nothing is written
    settings = _settings_block(params, objs, sampler_name, seed, population, trials)
    raw = {**base, "search": settings}
    folder = RunFolder(out, "search").open(overwrite=overwrite, resume=resume)
    held = HeldFolders()  # each run folder's lock, from its run's start to the search's end
    with folder, held:
        saved = out / SEARCH_CONFIG
        if resume and saved.is_file():
            old = yaml_load(saved.read_text(encoding="utf-8"), str(saved))
            diff = [k for k in changed_fields(old, raw) if k != "search.trials"]
            if diff:
                raise SpectuneError(
                    f"--resume: this search differs from the one {out} started with (in: "
                    f"{', '.join(diff)}); resume with the same settings (only --trials may "
                    "change) or start over with --overwrite"
                )
        if resume and (root / STORAGE).exists():
            _check_storage(root / STORAGE)
        if resume:
            folder.resumed()
        with fail_on_exit(folder):  # never left "running", whatever ends the search
            return _search_in(folder, out, root, raw, saved, optuna, sampler_obj, sampler_name,
                              seed, population, params, objs, trials, planner, backend, run_fn,
                              progress, held, base_config)  # fmt: skip


def _check_storage(path: Path) -> None:
    """Refuse, before anything changes, a search storage that SQLite cannot read or that holds
    no Optuna study."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            bad = con.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise SpectuneError(f"--resume: {path} is not a readable Optuna storage ({exc}); start "
                            "the search over with --overwrite") from None  # fmt: skip
    if bad is None or bad[0] != "ok" or "studies" not in tables:
        why = "holds no Optuna study" if bad and bad[0] == "ok" else "is damaged"
        raise SpectuneError(f"--resume: {path} {why}; start the search over with "
                            "--overwrite")  # fmt: skip


def _search_in(folder: Any, out: Path, root: Path, raw: dict[str, Any], saved: Path, optuna: Any,
               sampler_obj: Any, sampler_name: str, seed: int, population: int | None,
               params: list[Param], objs: list[Objective], trials: int, planner: Planner,
               backend: Backend, run_fn: Callable[..., Any], progress: bool, held: Any,
               base_config: TuneConfig) -> SearchResult:  # fmt: skip
    """The search in its opened, locked folder (see :func:`search`)."""
    from spectune.tune.config import yaml_dump

    folder.own(SEARCH_CONFIG, STORAGE, "runs", "results.csv", "results.md",
               "comparison.json", "plots", "report.html", SEARCH_JSON, "pareto.json",
               "pareto.csv")  # fmt: skip
    write_text(saved, f"# spectune search --resume --out {out} (the search's settings)\n"
               + yaml_dump(raw))  # fmt: skip
    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{root / STORAGE}")
        study = optuna.create_study(storage=storage, sampler=sampler_obj,
                                    study_name=STUDY_NAME,
                                    directions=[o.direction for o in objs],
                                    load_if_exists=True)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors alike
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SpectuneError(f"{root / STORAGE} cannot be opened as the search's Optuna "
                            f"study ({type(exc).__name__}: {first}); start the search over "
                            "with --overwrite") from None  # fmt: skip
    if study.trials:  # a resumed search: a fresh random stream, or it repeats its points
        study.sampler = make_sampler(sampler_name, resumed_seed(seed, len(study.trials)),
                                     params, population)  # fmt: skip
    retried = _retry_unfinished(study)
    done, _ = _counted(study)
    n = max(0, trials - len(done))
    if progress:
        print(f"[search] {len(done)} trial(s) finished before, {n} to run"
              + (f" (again: {', '.join(retried)})" if retried else ""), file=sys.stderr)  # fmt: skip
    errors: dict[str, str] = {}
    if n and backend.name == "ray":
        _run_ray(study, storage, study.sampler, planner, objs, n, backend, run_fn, progress,
                 errors)  # fmt: skip
    elif n:
        _run_local(study, planner, objs, n, trials, len(done), run_fn, progress, folder,
                   errors, held)  # fmt: skip
    result = _write_search(out, study, params, objs, sampler_name, seed, population,
                           base_config, errors, backend.name,
                           time.perf_counter() - start)  # fmt: skip
    folder.update(total_seconds=result.total_seconds, failed_runs=sorted(result.failed_runs))
    if result.failed_runs:  # not "complete": --resume runs the failed ones again
        folder.fail(f"{len(result.failed_runs)} of {len(result.trials)} trials failed: "
                    f"{', '.join(result.failed_runs)}")  # fmt: skip
    else:
        folder.finish()
    return result


def _write_search(out: Path, study: Any, params: Sequence[Param], objs: Sequence[Objective],
                  sampler: str, seed: int, population: int | None, base_config: TuneConfig,
                  errors: dict[str, str], backend: str, seconds: float) -> SearchResult:  # fmt: skip
    """Read the study back, find the Pareto set, write every file of the folder."""
    import csv
    import io

    from optuna.trial import TrialState

    from spectune.report.files import save_figures
    from spectune.report.pages.comparison import write_comparison_report
    from spectune.report.plots.runs import objective_scatter
    from spectune.results.metrics import RunMetrics
    from spectune.results.stats import pareto_set
    from spectune.study.sweep import RunOutcome, write_comparison
    from spectune.tune.collect import log_rows

    done, _ = _counted(study)
    records: list[TrialRecord] = []
    for t in sorted(done, key=lambda t: t.number):
        run = t.user_attrs.get("run") or f"trial-{t.number:03d}"
        values = {p.key: p.value(t.params[p.key]) for p in params if p.key in t.params}
        ok = t.state == TrialState.COMPLETE
        error = None if ok else (errors.get(run) or t.user_attrs.get("error")
                                 or _run_error(out / "runs" / run) or "failed (no reason kept)")  # fmt: skip
        records.append(TrialRecord(t.number, t.user_attrs.get("same_as") or run,
                                   "complete" if ok else "failed", values,
                                   list(t.values) if ok else None, t.user_attrs.get("same_as"),
                                   error))  # fmt: skip
    directions = [o.direction for o in objs]
    own = [r.values if r.state == "complete" and r.same_as is None else None for r in records]
    front = pareto_set(own, directions)
    on_front = {r.run for r, f in zip(records, front, strict=True) if f}
    for r in records:
        r.pareto = r.state == "complete" and r.run in on_front
    names = [o.name for o in objs]

    outcomes: list[RunOutcome] = []
    logs: dict[str, list[dict]] = {}
    pareto: list[dict[str, Any]] = []
    for r in records:
        if r.same_as is not None:
            continue
        run_dir = out / "runs" / r.run
        metrics = None
        error = r.error
        if r.state == "complete":
            try:
                metrics = RunMetrics.load(run_dir)
                logs[r.run] = log_rows(run_dir)
            except SpectuneError as exc:
                error = f"the trial finished but its run folder cannot be read: {exc}"
        objective_cols = dict(zip(names, r.values or [None] * len(names), strict=True))
        setting = {**r.params, **objective_cols, "trial": r.number, "pareto": r.pareto}
        method = r.params.get("method", base_config.method)
        outcomes.append(RunOutcome(r.run, str(method), setting, metrics=metrics, error=error))
        if r.pareto:
            extra = {}
            if metrics is not None:
                row = metrics.row()
                extra = {k: row.get(k) for k in ("accuracy_after", "perplexity_change",
                                                 "train_seconds", "trainable_percent")}  # fmt: skip
            pareto.append({"run": r.run, "trial": r.number, **objective_cols, **r.params,
                           **extra})  # fmt: skip
    failed = {r.run: r.error or "failed" for r in records if r.state == "failed"}
    space_text = {p.key: p.text() for p in params}
    title = (f"Search over {', '.join(p.key for p in params)}: "
             f"{', '.join(f'{o.name} ({o.mode})' for o in objs)}")  # fmt: skip
    n_same = sum(r.same_as is not None for r in records)
    notes = [
        f"{len(records)} trial(s) with the {sampler} sampler (seed {seed}"
        + (f", population {population}" if population else "") + f"), on the {backend} backend: "
        f"{sum(r.state == 'complete' for r in records)} complete, {len(failed)} failed"
        + (f", {n_same} trained what an earlier trial trained (its values, no run)" if n_same else ""),
        "objectives: " + ", ".join(f"{o.name} ({o.direction}: {OBJECTIVES[o.name][1]})"
                                   for o in objs),
        f"Pareto set ({len(pareto)} run(s), no other trial at least as good in every objective "
        "and better in one): " + ("; ".join(
            f"{p['run']} ({_fmt_values(objs, [p[n] for n in names])}; "
            f"{_fmt_params({k: p[k] for k in _keys(params)})})" for p in pareto) or "none"),
        f"the Optuna study is {STORAGE} (study {STUDY_NAME!r}): optuna.load_study(study_name="
        f"{STUDY_NAME!r}, storage='sqlite:///{STORAGE}') opens it; --resume continues it",
    ]  # fmt: skip
    meta = {"kind": "search", "title": title, "grid": space_text,
            "base_config": base_config.to_dict(), "runs": [o.name for o in outcomes],
            "objectives": [{"name": o.name, "direction": o.direction} for o in objs],
            "pareto": pareto, "notes": notes, "total_seconds": seconds}  # fmt: skip
    write_comparison(out, outcomes, logs, meta)
    complete = [r for r in records if r.state == "complete" and r.same_as is None]
    if len(objs) >= 2 and complete:
        fig = objective_scatter([r.values[:2] for r in complete], [r.run for r in complete],
                                [r.pareto for r in complete], names[:2], directions[:2])  # fmt: skip
        save_figures({"pareto.png": fig}, out / "plots")
    result = SearchResult(
        title=title,
        objectives=meta["objectives"],
        sampler={"name": sampler, "seed": seed, "population": population},
        space=[p.to_dict() for p in params],
        trials=[asdict(r) for r in records],
        pareto=pareto,
        failed_runs=failed,
        backend=backend,
        notes=notes,
        total_seconds=seconds,
    )
    columns = ["run", "trial", *names, *_keys(params)]
    for p in pareto:
        columns += [k for k in p if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for p in pareto:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                         for k, v in p.items()})  # fmt: skip
    write_text(out / "pareto.csv", buf.getvalue())
    write_json(out / "pareto.json", {"objectives": meta["objectives"], "pareto": pareto})
    write_json(out / SEARCH_JSON, result.to_dict())
    write_comparison_report(out)
    return result


def _keys(params: Sequence[Param]) -> list[str]:
    """The space's keys, in order."""
    return [p.key for p in params]


__all__ = [
    "DEFAULT_SPACE",
    "OBJECTIVES",
    "SAMPLERS",
    "Objective",
    "Param",
    "Planner",
    "SearchResult",
    "TrialRecord",
    "grid_size",
    "make_sampler",
    "objective_values",
    "parse_objectives",
    "parse_space",
    "search",
]
