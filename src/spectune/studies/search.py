"""Searches: a multi-objective Optuna study over run settings, its Pareto set, resumable.

``spectune search CONFIG --space r=4,8,16,32 lora_alpha=8..256:log lora_dropout=0..0.2
learning_rate=1e-5..1e-2:log method=lora,dora --trials 30 --objectives
accuracy_gain,forgetting`` samples settings with Optuna, runs each trial as a spectune run
and returns the trials no other trial beats on every objective (the Pareto set).

The space (:func:`~spectune.studies.search_space.parse_space`), one ``key=spec`` item per
setting (the keys of ``--grid``: ``r``, ``lora.lora_alpha``, ``train.learning_rate``
(``learning_rate`` for short), ``method``...):

- ``a,b,c``: categorical (YAML values: ``[q_proj,v_proj]`` is a list);
- ``low..high``: uniform, integer when both bounds are integers; ``low..high:log`` on a log
  scale; ``low..high:step=S`` on a grid of step S.

Objectives (:data:`~spectune.studies.search_space.OBJECTIVES`): ``accuracy_gain`` (held-out
accuracy after minus before, maximized), ``forgetting`` (perplexity on general text after /
before - 1, minimized), or any of the others; ``name:max`` / ``name:min`` sets the
direction. Samplers: ``nsga2`` (NSGA-II, the default with several objectives), ``tpe`` (the
default with one), ``random``, ``grid`` (every combination of a categorical space); all seeded
(``seed``, recorded).

Search folder (the sweep layout, written by :mod:`spectune.studies.runner`, plus the study's
storage)::

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

import json
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectune._check import integer
from spectune._io import write_json, write_text
from spectune.errors import SpectuneError
from spectune.report.files import save_figures
from spectune.report.pages.comparison import write_comparison_report
from spectune.report.plots.study import search_figures
from spectune.results.logs import log_rows
from spectune.results.metrics import RunMetrics
from spectune.results.runfolder import HeldFolders, RunFolder
from spectune.results.stats import pareto_set
from spectune.results.table import csv_text
from spectune.studies.backends import Backend, start_ray
from spectune.studies.runner import (
    RunOutcome,
    changed_settings,
    finish,
    opened_folder,
    save_settings,
    write_comparison,
)
from spectune.studies.search_space import (
    DEFAULT_SPACE,
    OBJECTIVES,
    Objective,
    Param,
    grid_size,
    make_sampler,
    parse_objectives,
    parse_space,
    resumed_seed,
)
from spectune.studies.search_trials import (
    TrialSetup,
    counted_trials,
    format_params,
    format_values,
    retry_unfinished,
    run_local,
    run_ray,
)
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig, apply_overrides, read_config_data

SEARCH_CONFIG = "search.yaml"
SEARCH_JSON = "search.json"
STORAGE = "optuna.db"
STUDY_NAME = "spectune-search"

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


def _settings_block(
    params: Sequence[Param],
    objectives: Sequence[Objective],
    sampler: str,
    seed: int,
    population: int | None,
    trials: int,
) -> dict[str, Any]:
    return {
        "space": {p.key: p.to_dict() for p in params},
        "objectives": [f"{o.name}:{o.mode}" for o in objectives],
        "sampler": sampler,
        "seed": seed,
        "population": population,
        "trials": trials,
    }


def _run_error(run_dir: Path) -> str | None:
    try:
        marker = RunFolder(run_dir).read_marker()  # validated: "error" is text when there
    except SpectuneError:
        return None
    return (marker or {}).get("error")


@dataclass
class _Session:
    """A search being run: its settings, space, objectives and sampler (see :func:`search`)."""

    out: Path
    raw: dict[str, Any]
    base_config: TuneConfig
    params: list[Param]
    objectives: list[Objective]
    sampler_name: str
    sampler: Any
    seed: int
    population: int | None
    trials: int
    trial_setup: TrialSetup
    backend: Backend
    run_fn: Callable[..., Any]
    progress: bool

    @property
    def root(self) -> Path:
        """The search folder, absolute (the storage's and the runs' paths)."""
        return self.out.absolute()


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
        space: ``key=spec`` items (None: :data:`~spectune.studies.search_space.DEFAULT_SPACE`).
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
            :class:`~spectune.studies.backends.Backend`; the Ray cluster.
        run_fn: the run function (default :func:`spectune.tuning.recipe.tune`).

    Returns:
        The :class:`SearchResult` (also in ``search.json``).

    Raises:
        SpectuneError: Optuna missing, a bad space/objective/sampler, a changed search on
            resume (the fields are named), Ray unreachable.
    """
    try:
        import optuna  # an optional extra
    except ImportError:
        raise SpectuneError(
            "spectune search needs Optuna: pip install 'spectune[optuna]' (or pip install optuna)"
        ) from None
    s = _session(
        config_path,
        space,
        objectives,
        trials,
        sampler,
        seed,
        population,
        overrides,
        out,
        (backend, address),
        run_fn or recipe.tune,
        progress,
    )
    if s.backend.name == "ray":
        try:
            import ray.tune.search.optuna  # noqa: F401 - an optional extra
        except ImportError as exc:
            raise SpectuneError(
                f"--backend ray needs Ray Tune ({exc}): pip install 'spectune[ray]'"
            ) from None
        start_ray(s.backend)  # an unreachable cluster: nothing is written

    def before(folder: RunFolder) -> None:
        if not resume:
            return
        diff = changed_settings(s.out / SEARCH_CONFIG, s.raw, ignore=("search.trials",))
        if diff:
            raise SpectuneError(
                f"--resume: this search differs from the one {s.out} started with (in: "
                f"{', '.join(diff)}); resume with the same settings (only --trials may "
                "change) or start over with --overwrite"
            )
        if (s.root / STORAGE).exists():
            _check_storage(s.root / STORAGE)
        folder.resumed()

    held = HeldFolders()  # each run folder's lock, from its run's start to the search's end
    with opened_folder(
        s.out, "search", overwrite=overwrite, resume=resume, held=held, before=before
    ) as folder:
        return _search_in(s, folder, optuna, held)


def _session(
    config_path: str | Path | None,
    space: Sequence[str] | None,
    objectives: str | Sequence[str],
    trials: int | None,
    sampler: str | None,
    seed: int,
    population: int | None,
    overrides: Sequence[str] | None,
    out: str | Path | None,
    backend: tuple[str | Backend, str | None],
    run_fn: Callable[..., Any],
    progress: bool,
) -> _Session:
    """The search's settings, checked before anything is written (see :func:`search`)."""
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
        raise SpectuneError(
            f"--trials {trials}: the grid has {grid_size(params)} combinations; give at most "
            "that many"
        )
    out = Path(out if out is not None else base_config.output_dir)
    checked = Backend.of(*backend)
    trial_setup = TrialSetup(base, params, out.absolute() / "runs", source)
    for p in params:  # every value a dimension can take must be a valid setting on its own
        for v in p.choices or (p.low, p.high):
            try:
                TuneConfig.from_dict(
                    apply_overrides(base, [f"{p.key}={json.dumps(v)}"]),
                    source=source,
                    foreign_sections="drop",
                )
            except SpectuneError as exc:
                raise SpectuneError(f"--space {p.key}={v!r}: {exc}") from None
    settings = _settings_block(params, objs, sampler_name, seed, population, trials)
    return _Session(
        out,
        {**base, "search": settings},
        base_config,
        params,
        objs,
        sampler_name,
        sampler_obj,
        seed,
        population,
        trials,
        trial_setup,
        checked,
        run_fn,
        progress,
    )


def _check_storage(path: Path) -> None:
    """Refuse, before anything changes, a search storage that SQLite cannot read or that holds
    no Optuna study."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            bad = con.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise SpectuneError(
            f"--resume: {path} is not a readable Optuna storage ({exc}); start the search over "
            "with --overwrite"
        ) from None
    if bad is None or bad[0] != "ok" or "studies" not in tables:
        why = "holds no Optuna study" if bad and bad[0] == "ok" else "is damaged"
        raise SpectuneError(f"--resume: {path} {why}; start the search over with --overwrite")


def _open_study(s: _Session, optuna: Any) -> tuple[Any, Any]:
    """The Optuna study in the folder's storage (made or loaded) and the storage; a resumed
    study's sampler is seeded afresh (:func:`resumed_seed`)."""
    storage_path = s.root / STORAGE
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{storage_path}")
        study = optuna.create_study(
            storage=storage,
            sampler=s.sampler,
            study_name=STUDY_NAME,
            directions=[o.direction for o in s.objectives],
            load_if_exists=True,
        )
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors alike
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SpectuneError(
            f"{storage_path} cannot be opened as the search's Optuna study "
            f"({type(exc).__name__}: {first}); start the search over with --overwrite"
        ) from None
    if study.trials:  # a resumed search: a fresh random stream, or it repeats its points
        study.sampler = make_sampler(
            s.sampler_name, resumed_seed(s.seed, len(study.trials)), s.params, s.population
        )
    return study, storage


def _search_in(s: _Session, folder: RunFolder, optuna: Any, held: HeldFolders) -> SearchResult:
    """The search in its opened, locked folder (see :func:`search`)."""
    folder.own(
        SEARCH_CONFIG,
        STORAGE,
        "runs",
        "results.csv",
        "results.md",
        "comparison.json",
        "plots",
        "report.html",
        SEARCH_JSON,
        "pareto.json",
        "pareto.csv",
    )
    save_settings(
        s.out / SEARCH_CONFIG,
        s.raw,
        f"spectune search --resume --out {s.out} (the search's settings)",
    )
    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, storage = _open_study(s, optuna)
    retried = retry_unfinished(study)
    done, _ = counted_trials(study)
    n = max(0, s.trials - len(done))
    if s.progress:
        again = f" (again: {', '.join(retried)})" if retried else ""
        print(f"[search] {len(done)} trial(s) finished before, {n} to run{again}", file=sys.stderr)
    errors: dict[str, str] = {}
    if n and s.backend.name == "ray":
        run_ray(
            study,
            storage,
            study.sampler,
            s.trial_setup,
            s.objectives,
            n,
            s.backend,
            s.run_fn,
            s.progress,
            errors,
        )
    elif n:
        run_local(
            study,
            s.trial_setup,
            s.objectives,
            n,
            s.trials,
            len(done),
            s.run_fn,
            s.progress,
            folder,
            errors,
            held,
        )
    result = _write_search(s, study, errors, time.perf_counter() - start)
    folder.update(total_seconds=result.total_seconds, failed_runs=sorted(result.failed_runs))
    finish(folder, list(result.failed_runs), len(result.trials), "trials")
    return result


def _trial_records(
    out: Path, study: Any, params: Sequence[Param], errors: dict[str, str]
) -> list[TrialRecord]:
    """Every trial that counts, from the study, in order (a failed one with its reason)."""
    from optuna.trial import TrialState  # Optuna is an optional extra

    done, _ = counted_trials(study)
    records: list[TrialRecord] = []
    for t in sorted(done, key=lambda t: t.number):
        run = t.user_attrs.get("run") or f"trial-{t.number:03d}"
        values = {p.key: p.value(t.params[p.key]) for p in params if p.key in t.params}
        ok = t.state == TrialState.COMPLETE
        error = None
        if not ok:
            error = (
                errors.get(run)
                or t.user_attrs.get("error")
                or _run_error(out / "runs" / run)
                or "failed (no reason kept)"
            )
        records.append(
            TrialRecord(
                t.number,
                t.user_attrs.get("same_as") or run,
                "complete" if ok else "failed",
                values,
                list(t.values) if ok else None,
                t.user_attrs.get("same_as"),
                error,
            )
        )
    return records


def _mark_pareto(records: list[TrialRecord], objs: Sequence[Objective]) -> None:
    """Set ``pareto`` on the complete trials with runs of their own that no other beats."""
    own = [r.values if r.state == "complete" and r.same_as is None else None for r in records]
    front = pareto_set(own, [o.direction for o in objs])
    on_front = {r.run for r, f in zip(records, front, strict=True) if f}
    for r in records:
        r.pareto = r.state == "complete" and r.run in on_front


def _outcomes(
    out: Path, records: list[TrialRecord], objs: Sequence[Objective], base_method: str
) -> tuple[list[RunOutcome], dict[str, list[dict]], list[dict[str, Any]]]:
    """The outcome of every trial with a run of its own, the training logs, and the Pareto
    set's rows (pareto.csv)."""
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
        method = r.params.get("method", base_method)
        outcomes.append(RunOutcome(r.run, str(method), setting, metrics=metrics, error=error))
        if r.pareto:
            extra = {}
            if metrics is not None:
                row = metrics.row()
                keys = ("accuracy_after", "perplexity_change", "train_seconds", "trainable_percent")
                extra = {k: row.get(k) for k in keys}
            pareto.append({"run": r.run, "trial": r.number, **objective_cols, **r.params, **extra})
    return outcomes, logs, pareto


def _search_notes(
    s: _Session, records: list[TrialRecord], failed: dict[str, str], pareto: list[dict[str, Any]]
) -> list[str]:
    """The notes of the report: the trials, the objectives, the Pareto set, the storage."""
    objs, names = s.objectives, [o.name for o in s.objectives]
    n_same = sum(r.same_as is not None for r in records)
    population = f", population {s.population}" if s.population else ""
    same = (
        f", {n_same} trained what an earlier trial trained (its values, no run)" if n_same else ""
    )
    front = "; ".join(
        f"{p['run']} ({format_values(objs, [p[n] for n in names])}; "
        f"{format_params({k: p[k] for k in _keys(s.params)})})"
        for p in pareto
    )
    return [
        f"{len(records)} trial(s) with the {s.sampler_name} sampler (seed {s.seed}{population}), "
        f"on the {s.backend.name} backend: {sum(r.state == 'complete' for r in records)} "
        f"complete, {len(failed)} failed{same}",
        "objectives: "
        + ", ".join(f"{o.name} ({o.direction}: {OBJECTIVES[o.name][1]})" for o in objs),
        f"Pareto set ({len(pareto)} run(s), no other trial at least as good in every objective "
        f"and better in one): {front or 'none'}",
        f"the Optuna study is {STORAGE} (study {STUDY_NAME!r}): optuna.load_study(study_name="
        f"{STUDY_NAME!r}, storage='sqlite:///{STORAGE}') opens it; --resume continues it",
    ]


def _write_search(s: _Session, study: Any, errors: dict[str, str], seconds: float) -> SearchResult:
    """Read the study back, find the Pareto set, write every file of the folder."""
    out, objs = s.out, s.objectives
    records = _trial_records(out, study, s.params, errors)
    _mark_pareto(records, objs)
    outcomes, logs, pareto = _outcomes(out, records, objs, s.base_config.method)
    failed = {r.run: r.error or "failed" for r in records if r.state == "failed"}
    title = (
        f"Search over {', '.join(p.key for p in s.params)}: "
        f"{', '.join(f'{o.name} ({o.mode})' for o in objs)}"
    )
    notes = _search_notes(s, records, failed, pareto)
    meta = {
        "kind": "search",
        "title": title,
        "grid": {p.key: p.text() for p in s.params},
        "base_config": s.base_config.to_dict(),
        "runs": [o.name for o in outcomes],
        "objectives": [{"name": o.name, "direction": o.direction} for o in objs],
        "pareto": pareto,
        "notes": notes,
        "total_seconds": seconds,
    }
    write_comparison(out, outcomes, logs, meta)
    complete = [r for r in records if r.state == "complete" and r.same_as is None]
    save_figures(
        search_figures(complete, [o.name for o in objs], [o.direction for o in objs]), out / "plots"
    )
    result = SearchResult(
        title=title,
        objectives=meta["objectives"],
        sampler={"name": s.sampler_name, "seed": s.seed, "population": s.population},
        space=[p.to_dict() for p in s.params],
        trials=[asdict(r) for r in records],
        pareto=pareto,
        failed_runs=failed,
        backend=s.backend.name,
        notes=notes,
        total_seconds=seconds,
    )
    first = ["run", "trial", *(o.name for o in objs), *_keys(s.params)]
    write_text(out / "pareto.csv", csv_text(pareto, first, json_cells=True))
    write_json(out / "pareto.json", {"objectives": meta["objectives"], "pareto": pareto})
    write_json(out / SEARCH_JSON, result.to_dict())
    write_comparison_report(out)
    return result


def _keys(params: Sequence[Param]) -> list[str]:
    """The space's keys, in order."""
    return [p.key for p in params]


__all__ = ["SearchResult", "TrialRecord", "search"]
