"""Studies: methods compared with their own learning rates, over seeds, with intervals.

``spectune study CONFIG.yaml`` reads a run config with a ``study:`` block::

    model: default                 # the base run config every run starts from
    lora: {r: 8, lora_alpha: 16}
    data: {n_train: 2000, n_eval: 200}
    train: {max_steps: 25}
    study:
      methods: [lora, dora, qlora, frog, shira, full]
      seeds: 3                     # or a list [0, 1, 2]
      lr_grid: [3.0e-4, 1.0e-3, 3.0e-3]          # shared, or per method:
      # lr_grid: {lora: [...], full: [1.0e-5, 3.0e-5]}
      lr_search: {steps: 15, validation: 48, seed: 0}
      grid: {lora.r: [4, 8]}       # optional hyperparameters crossed with every method
      match_budget: true           # every method at LoRA's trainable count where it can

What it does, in order:

1. **Matched budgets** (:func:`spectune.studies.demo.demo_runs`): each method's config at
   the LoRA reference's trainable count, per grid point.
2. **Learning-rate search** per method (:func:`search_learning_rate`): one short run per
   rate on a *validation split carved (seeded) from the training data*, never on the held-out
   test questions; the rate with the best validation accuracy (then the lowest validation
   loss) wins. Runs in ``lr_search/<method>-lr<rate>/``.
3. **The real runs**: every method x grid point x seed at its chosen rate, into
   ``runs/<name>/`` (the sweep layout: results.csv, results.md, plots/, report.html).
4. **The summary** (:func:`spectune.studies.summary.summarize_study`,
   :mod:`spectune.results.stats`): per-method
   accuracy gain and forgetting with intervals over seeds and questions, paired differences
   (resolved or within noise), the Pareto front, eta-squared of each varied parameter,
   Spearman correlations of the spectral columns with gain and forgetting (undetermined
   below 5 runs), and the advice (:mod:`spectune.studies.advice`). ``study.json``
   (:class:`StudyResult`), ``study.md``, plots in ``plots/``
   (:mod:`spectune.report.plots.study`), the notes of report.html.

The folder, the resume check, the backends and the comparison files are the runner's that
sweeps, the demo and searches share (:mod:`spectune.studies.runner`).

Resume (``resume=True``) keeps finished runs; a changed study config is refused with the
changed fields named. A run that fails, whatever it raises (an ``OverflowError`` as much as a
:class:`SpectuneError`), is recorded with its reason and the study goes on; a study whose
runs all failed is an error. The study's ``run.json`` is never left "running": an
interruption (Ctrl-C) or an error outside the runs marks it failed with the reason, and
``--resume`` continues it. While the study runs, each run folder is locked from the moment its
run starts (:class:`~spectune.results.runfolder.HeldFolders`): another ``spectune tune
--overwrite`` of it, or any other process, is refused until the study ends.

Bad settings are refused before the folder exists: a seed or a rate listed twice,
``lr_search.steps`` or ``lr_search.seed`` that is not an integer in range. Rates that six
significant digits print alike (``1e-3`` and ``1.00000001e-3``) get folders named by their
exact values (:func:`rate_name`).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectune._check import integer
from spectune._io import write_json, write_text
from spectune.data.formats import examples_jsonl
from spectune.data.instructions import split_validation
from spectune.errors import SpectuneError
from spectune.report.files import save_figures
from spectune.report.pages.comparison import write_comparison_report
from spectune.report.plots.study import layer_alpha_figure, study_figures
from spectune.results.runfolder import HeldFolders, RunFolder
from spectune.results.table import csv_text
from spectune.studies.backends import Backend, Executor, Job, failure, make_executor
from spectune.studies.demo import demo_runs
from spectune.studies.runner import (
    changed_settings,
    finish,
    opened_folder,
    outcomes_of,
    save_settings,
    write_comparison,
)
from spectune.studies.summary import OUTCOMES, layer_alpha_points, study_row, summarize_study
from spectune.tuning import recipe
from spectune.tuning.config import TuneConfig, apply_overrides, read_config_data
from spectune.tuning.methods import METHODS
from spectune.tuning.objectives.sft import load_instruction_data

STUDY_CONFIG = "study.yaml"
STUDY_JSON = "study.json"


# --------------------------------------------------------------------------- the spec


@dataclass
class StudySpec:
    """The ``study:`` block, validated.

    Attributes:
        methods: registered methods to compare.
        seeds: seeds of the real runs.
        lr_grid: method -> learning rates searched (one rate: no search).
        lr_steps: max_steps of each search run (None: the base config's).
        validation: training examples carved out as the validation split of the search.
        lr_seed: seed of the search runs and of the validation split.
        grid: dotted key -> values, crossed with every method (``lora.r: [4, 8]``).
        match_budget: set every method to the reference's trainable count where it can.
    """

    methods: list[str]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lr_grid: dict[str, list[float]] = field(default_factory=dict)
    lr_steps: int | None = None
    validation: int = 64
    lr_seed: int = 0
    grid: dict[str, list[Any]] = field(default_factory=dict)
    match_budget: bool = True

    @classmethod
    def from_dict(cls, data: Any, base_lr: float, source: str = "study") -> StudySpec:
        """From the ``study:`` block; a shared ``lr_grid`` list applies to every method."""
        if not isinstance(data, dict):
            raise SpectuneError(f"{source}: the study: block must be a mapping of settings")
        known = {"methods", "seeds", "lr_grid", "lr_search", "grid", "match_budget"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpectuneError(
                f"{source}: study.{unknown[0]} is not a study setting "
                f"(known: {', '.join(sorted(known))})"
            )
        methods = data.get("methods")
        if not isinstance(methods, list) or not methods:
            raise SpectuneError(f"{source}: study.methods must list methods, e.g. [lora, full]")
        for m in methods:
            if m not in METHODS.names():
                raise SpectuneError(
                    f"{source}: study.methods: unknown method {m!r} "
                    f"(registered: {', '.join(METHODS.names())})"
                )
        seeds = data.get("seeds", 3)
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 1:
                raise SpectuneError(f"{source}: study.seeds must be >= 1, got {seeds}")
            seeds = list(range(seeds))
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        ):
            raise SpectuneError(f"{source}: study.seeds must be a count or a list of seeds")
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise SpectuneError(
                f"{source}: study.seeds lists seed {repeated[0]} more than once "
                "(its runs would share a folder); list each seed once"
            )
        raw = data.get("lr_grid", [base_lr])
        grid_lr: dict[str, list[float]] = {}
        for m in methods:
            rates = raw.get(m, [base_lr]) if isinstance(raw, dict) else raw
            if (
                not isinstance(rates, list)
                or not rates
                or not all(
                    isinstance(r, (int, float))
                    and not isinstance(r, bool)
                    and math.isfinite(r)
                    and r > 0
                    for r in rates
                )
            ):
                raise SpectuneError(
                    f"{source}: study.lr_grid must be a list of positive rates "
                    f"or a mapping method -> list (got {rates!r} for {m})"
                )
            grid_lr[m] = sorted(float(r) for r in rates)
            twice = [r for r, nxt in itertools.pairwise(grid_lr[m]) if r == nxt]
            if twice:
                raise SpectuneError(
                    f"{source}: study.lr_grid lists rate {twice[0]:g} more than "
                    f"once for {m}; list each rate once"
                )
        search = data.get("lr_search") or {}
        if not isinstance(search, dict) or set(search) - {"steps", "validation", "seed"}:
            raise SpectuneError(f"{source}: study.lr_search takes steps, validation and seed")
        grid = data.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise SpectuneError(
                f"{source}: study.grid must map keys to lists of values, e.g. {{lora.r: [4, 8]}}"
            )
        validation = search.get("validation", 64)
        if not isinstance(validation, int) or validation < 1:
            raise SpectuneError(f"{source}: study.lr_search.validation must be >= 1")
        steps = search.get("steps")
        if steps is not None:
            integer(f"{source}: study.lr_search.steps", steps, minimum=1)
        lr_seed = integer(f"{source}: study.lr_search.seed", search.get("seed", 0), minimum=0)
        match_budget = data.get("match_budget", True)
        if not isinstance(match_budget, bool):
            raise SpectuneError(
                f"{source}: study.match_budget must be true or false, got {match_budget!r}"
            )
        return cls(
            methods=list(methods),
            seeds=seeds,
            lr_grid=grid_lr,
            lr_steps=steps,
            validation=validation,
            lr_seed=lr_seed,
            grid=grid,
            match_budget=match_budget,
        )


def split_study_config(
    data: dict[str, Any], source: str = "study config"
) -> tuple[dict, StudySpec]:
    """``(base run config data, StudySpec)`` of a study config's raw data."""
    if not isinstance(data, dict) or "study" not in data:
        raise SpectuneError(
            f"{source}: a study config needs a study: block (methods, seeds, "
            "lr_grid...); see configs/study.yaml"
        )
    base = copy.deepcopy(data)
    block = base.pop("study")
    base_lr = TuneConfig.from_dict(
        base, source=source, foreign_sections="drop"
    ).training_arguments()["learning_rate"]
    return base, StudySpec.from_dict(block, base_lr, source)


# --------------------------------------------------------------------------- LR search


@dataclass
class LRSearch:
    """A learning-rate search of one method.

    Attributes:
        method: the method.
        rates: the rates tried, ascending.
        scores: per rate, (validation accuracy, validation loss), None when the run failed.
        chosen: the rate picked (None when every run failed).
        errors: rate -> why its run failed.
    """

    method: str
    rates: list[float]
    scores: list[tuple[float, float] | None]
    chosen: float | None
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def at_edge(self) -> str | None:
        """``"largest"`` / ``"smallest"`` when the chosen rate is the grid's largest or smallest
        of several: the best rate may lie beyond the grid. None otherwise."""
        if self.chosen is None or len(self.rates) < 2:
            return None
        if self.chosen == max(self.rates):
            return "largest"
        return "smallest" if self.chosen == min(self.rates) else None


def rate_name(lr: float) -> str:
    """A learning rate as run folders name it: ``0.001``, ``3e-05``; the exact value
    (``0.0010000001``) when six significant digits would give two rates one name."""
    short = f"{lr:g}"
    return short if float(short) == lr else repr(float(lr))


def search_learning_rate(
    method: str,
    rates: Sequence[float],
    run: Callable[[float], tuple[float, float]],
) -> LRSearch:
    """Try every rate with ``run`` and pick the best.

    Args:
        method: the method's name (recorded).
        rates: the learning rates.
        run: rate -> (validation accuracy, validation loss); an exception marks the rate
            failed.

    Returns:
        The :class:`LRSearch`; the chosen rate has the highest accuracy, ties broken by the
        lowest loss, then the smaller rate.
    """
    rates = sorted(float(r) for r in rates)
    scores: list[tuple[float, float] | None] = []
    errors: dict[str, str] = {}
    for lr in rates:
        try:
            acc, loss = run(lr)
            scores.append((float(acc), float(loss)))
        except Exception as exc:  # noqa: BLE001 - one rate's failure is not the search's
            scores.append(None)
            errors[rate_name(lr)] = failure(exc)
    ok = [
        (s[0], -s[1] if math.isfinite(s[1]) else -math.inf, -lr)
        for lr, s in zip(rates, scores, strict=True)
        if s is not None
    ]
    chosen = -max(ok)[2] if ok else None
    return LRSearch(method, rates, scores, chosen, errors)


def _write_validation_split(base: dict[str, Any], spec: StudySpec, folder: Path) -> dict[str, Any]:
    """Carve the validation split from the training data (seeded,
    :func:`spectune.data.instructions.split_validation`, as ``data.n_validation`` does in a run)
    and write both as Dolly files; returns the ``data`` changes of the search runs."""
    config = TuneConfig.from_dict(
        apply_overrides(base, [f"seed={spec.lr_seed}"]), source="study", foreign_sections="drop"
    )
    if config.objective != "sft":
        raise SpectuneError(
            f"study.lr_grid: the learning-rate search carves its validation split from "
            f"instruction data (objective sft), not from objective {config.objective!r}'s; give "
            "each method one rate (study.lr_grid: {method: [rate]})"
        )
    train, validation = split_validation(
        list(load_instruction_data(config).train),
        spec.validation,
        spec.lr_seed,
        label="study.lr_search.validation",
    )
    folder.mkdir(parents=True, exist_ok=True)

    train_text, fmt = examples_jsonl(train)
    validation_text, validation_fmt = examples_jsonl(validation)
    write_text(folder / "train.jsonl", train_text)
    write_text(folder / "validation.jsonl", validation_text)
    return {
        "train": str(folder / "train.jsonl"),
        "eval": str(folder / "validation.jsonl"),
        "format": fmt if fmt == validation_fmt else "auto",
        "n_eval": spec.validation,
    }


# --------------------------------------------------------------------------- results


@dataclass
class StudyResult:
    """Everything a study measured and concluded (``study.json``)."""

    title: str
    methods: list[str]
    seeds: list[int]
    lr_search: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    differences: list[dict[str, Any]]
    effects: dict[str, list[dict[str, Any]]]
    correlations: list[dict[str, Any]]
    advice: dict[str, Any] | None
    notes: list[str]
    failed_runs: dict[str, str]
    #: wall-clock seconds of the sessions that ran the study (a resumed one adds its own)
    total_seconds: float | None = None
    schema_version: int = 1
    #: per run, Spearman over its layers of the base layer's alpha and the update's alpha
    layer_correlations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, folder: str | Path) -> StudyResult:
        path = Path(folder) / STUDY_JSON
        if not path.is_file():
            raise SpectuneError(f"{path} does not exist: {folder} holds no finished study")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- the study


def _short(v: Any) -> str:
    return rate_name(v) if isinstance(v, float) else str(v)


def candidate_configs(
    base: dict[str, Any], spec: StudySpec
) -> list[tuple[str, str, dict, TuneConfig]]:
    """``(candidate name, method, grid point, config)`` for every method and grid point, at
    matched budgets when ``spec.match_budget``."""
    keys = list(spec.grid)
    out, seen = [], set()
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        data = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in point.items()])
        if spec.match_budget:
            runs = demo_runs(tuple(spec.methods), base=data)
        else:
            runs = [
                (
                    m,
                    TuneConfig.from_dict(
                        apply_overrides(data, [f"method={m}"]),
                        source="study",
                        foreign_sections="drop",
                    ),
                    {},
                )
                for m in spec.methods
            ]
        for method, config, _ in runs:
            key = json.dumps(config.relevant(), sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            suffix = "".join(
                f"-{k.split('.')[-1]}{_short(v)}" for k, v in point.items() if len(spec.grid[k]) > 1
            )
            if any(name == f"{method}{suffix}" for name, *_ in out):
                raise SpectuneError(
                    f"study.grid: two grid points get the run name {method}{suffix!r}; give "
                    "distinct values"
                )
            out.append((f"{method}{suffix}", method, point, config))
    return out


@dataclass
class _Session:
    """A study being run: its settings, candidates and backend (see :func:`study`)."""

    out: Path
    raw: dict[str, Any]
    base: dict[str, Any]
    spec: StudySpec
    base_config: TuneConfig
    candidates: list[tuple[str, str, dict, TuneConfig]]
    execute: Executor
    resume: bool
    progress: bool

    @property
    def root(self) -> Path:
        """The study folder, absolute: the runs' folders, wherever a Ray trial runs."""
        return self.out.absolute()

    def say(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr, flush=True)


def study(
    config_path: str | Path | None = None,
    *,
    data: dict[str, Any] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    run_fn: Callable[..., Any] | None = None,
    backend: str | Backend = "local",
    address: str | None = None,
) -> StudyResult:
    """Run a study (see the module docstring) into ``out``.

    Args:
        config_path: the study YAML (or give ``data``).
        data: the raw study config (base run config + ``study:``).
        out: the study folder (default: the base config's output_dir).
        overwrite / resume: as for sweeps.
        progress: progress output.
        run_fn: the run function (default :func:`spectune.tuning.recipe.tune`).
        backend: ``"local"`` (one run after another), ``"ray"`` (the runs of each stage as
            Ray Tune trials, as many at once as the cluster holds) or a
            :class:`~spectune.studies.backends.Backend` (cluster, CPUs/GPUs per trial).
        address: the Ray cluster (``"auto"``, ``"ray://host:10001"``); None starts a local
            instance.

    Returns:
        The :class:`StudyResult` (also in ``study.json``).

    Raises:
        SpectuneError: a bad config, a changed config on resume, or every run failed.
    """
    run_fn = run_fn or recipe.tune
    backend = Backend.of(backend, address)
    source = str(config_path or "study config")
    raw = copy.deepcopy(data) if data is not None else read_config_data(config_path)
    base, spec = split_study_config(raw, source)
    base_config = TuneConfig.from_dict(base, source=source, foreign_sections="drop")
    out = Path(out if out is not None else base_config.output_dir)
    candidates = candidate_configs(base, spec)  # checks the model and methods before the folder
    held = HeldFolders()  # each run folder's lock, from its run's start to the study's end
    executor = make_executor(backend, None, run_fn, progress, held)  # unreachable Ray: nothing done
    session = _Session(out, raw, base, spec, base_config, candidates, executor, resume, progress)
    earlier = 0.0  # the sessions before this one, as the last study.json recorded them

    def before(folder: RunFolder) -> None:
        nonlocal earlier
        if not resume:
            return
        saved = out / STUDY_CONFIG
        diff = changed_settings(saved, raw)
        if diff:
            raise SpectuneError(
                f"--resume: this study config differs from the one {out} started with (in: "
                f"{', '.join(diff)}); resume with {saved} or start over with --overwrite"
            )
        folder.resumed()
        earlier = _earlier_seconds(out)

    with opened_folder(
        out, "study", overwrite=overwrite, resume=resume, held=held, before=before
    ) as folder:
        return _run_study(session, folder, earlier)


def _earlier_seconds(out: Path) -> float:
    """The seconds of a study's earlier sessions, as its last ``study.json`` recorded them."""
    try:
        return float(json.loads((out / STUDY_JSON).read_text())["total_seconds"] or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _run_study(s: _Session, folder: RunFolder, earlier: float) -> StudyResult:
    """The study in its opened, locked folder (see :func:`study`)."""
    out = s.out
    saved = out / STUDY_CONFIG
    folder.own(
        STUDY_CONFIG,
        "lr_search",
        "runs",
        "results.csv",
        "results.md",
        "comparison.json",
        "plots",
        "report.html",
        STUDY_JSON,
        "study.md",
    )
    save_settings(saved, s.raw, f"spectune study {saved} --resume (the study's config)")
    start = time.perf_counter()
    # 1. learning-rate search per method (on the first grid point), on the validation split
    searches = _search_rates(s)
    folder.update(lr_chosen={m: r.chosen for m, r in searches.items()})
    # 2. the real runs: method x grid point x seed at the chosen rate
    jobs, settings, groups = _study_jobs(s, searches)
    outcomes, logs = outcomes_of(jobs, settings, s.execute(jobs, "run"))
    rows = [study_row(o, job.out) for o, job in zip(outcomes, jobs, strict=True)]
    failed = {o.name: o.error for o in outcomes if o.error is not None}
    folder.update(failed_runs=sorted(failed))
    spec = s.spec
    title = (
        f"spectune study: {', '.join(spec.methods)} over {len(spec.seeds)} seed(s), "
        "per-method learning rates"
    )
    meta = {
        "kind": "study",
        "title": title,
        "grid": {**spec.grid, "seed": spec.seeds},
        "base_config": s.base_config.to_dict(),
        "runs": [o.name for o in outcomes],
    }
    write_comparison(out, outcomes, logs, {**meta, "total_seconds": None})
    if len(failed) == len(outcomes):
        folder.fail(f"every run failed ({len(outcomes)})")
        raise SpectuneError(
            f"every run of the study failed ({len(outcomes)}); first: "
            f"{next(iter(failed.items()))[0]}: {next(iter(failed.values()))}"
        )
    # 3. what the runs say together, the figures, the files
    varied = [k for k in spec.grid if len(spec.grid[k]) > 1]
    summaries, diffs, effects, corrs, advice, notes, layer_corrs = summarize_study(
        out, rows, groups, varied
    )
    figs, skipped = study_figures(summaries, list(searches.values()), rows, varied, OUTCOMES)
    fig = layer_alpha_figure(*layer_alpha_points(out, rows))
    if fig is not None:
        figs["layer_alpha_vs_base.png"] = fig
    notes = _study_notes(s, summaries, searches, skipped, notes)
    total = earlier + time.perf_counter() - start
    result = StudyResult(
        title,
        spec.methods,
        spec.seeds,
        [r.to_dict() for r in searches.values()],
        rows,
        summaries,
        diffs,
        effects,
        corrs,
        advice,
        notes,
        failed,
        total,
        layer_correlations=layer_corrs,
    )
    write_comparison(out, outcomes, logs, {**meta, "total_seconds": total, "notes": notes})
    write_text(out / "results.csv", csv_text(rows))  # the study's columns on top of the sweep's
    save_figures(figs, out / "plots")
    write_json(out / STUDY_JSON, result.to_dict())
    write_text(out / "study.md", f"# {title}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    write_comparison_report(out)
    folder.update(total_seconds=total)
    finish(folder, list(failed), len(outcomes))
    return result


def _search_jobs(s: _Session) -> list[Job]:
    """The runs of the learning-rate searches: every rate of each method with several, on the
    validation split carved from the training data."""
    spec = s.spec
    need = [m for m in spec.methods if len(spec.lr_grid[m]) > 1]
    if need:
        split = _write_validation_split(s.base, spec, s.root / "lr_search" / "data")
    jobs: list[Job] = []
    for _cname, method, _point, config in s.candidates:
        if method in {j.method for j in jobs} or len(spec.lr_grid[method]) == 1:
            continue
        search_data = apply_overrides(
            config.to_dict(),
            [
                f"seed={spec.lr_seed}",
                "eval.latency_prompts=0",
                "eval.spectra=false",
                *(f"data.{k}={json.dumps(v)}" for k, v in split.items()),
                *([f"train.max_steps={spec.lr_steps}"] if spec.lr_steps else []),
            ],
        )
        for lr in spec.lr_grid[method]:
            name = f"{method}-lr{rate_name(lr)}"
            data = apply_overrides(search_data, [f"train.learning_rate={lr}"])
            jobs.append(Job(name, method, data, s.root / "lr_search" / name, True))
    return jobs


def _search_rates(s: _Session) -> dict[str, LRSearch]:
    """Stage 1: the learning-rate search of every method (one rate: no search)."""
    jobs = _search_jobs(s)
    done = {j.name: r for j, r in zip(jobs, s.execute(jobs, "lr search"), strict=True)}
    searches: dict[str, LRSearch] = {}
    for _cname, method, _point, _config in s.candidates:
        if method in searches:
            continue
        rates = s.spec.lr_grid[method]
        if len(rates) == 1:
            searches[method] = LRSearch(method, rates, [None], rates[0])
            continue

        def one(lr: float, method: str = method) -> tuple[float, float]:
            metrics, error = done[f"{method}-lr{rate_name(lr)}"]
            if metrics is None:
                raise RuntimeError(error)
            return metrics.after.accuracy.accuracy, metrics.after.heldout_loss.loss

        searches[method] = found = search_learning_rate(method, rates, one)
        s.say(
            f"[lr search] {method}: chose {found.chosen:g}"
            if found.chosen
            else f"[lr search] {method}: every rate failed"
        )
        if found.at_edge:
            s.say(
                f"[lr search] {method}: {found.chosen:g} is the {found.at_edge} rate of the grid; "
                f"the best may lie beyond it: extend study.lr_grid.{method}"
            )
    return searches


def _study_jobs(
    s: _Session, searches: dict[str, LRSearch]
) -> tuple[list[Job], list[dict[str, Any]], dict[str, list[str]]]:
    """Stage 2's jobs (every candidate x seed at its chosen rate), their settings, and each
    candidate's runs."""
    groups: dict[str, list[str]] = {}
    jobs: list[Job] = []
    settings: list[dict[str, Any]] = []
    for cname, method, point, config in s.candidates:
        lr = searches[method].chosen
        for seed in s.spec.seeds:
            name = f"{cname}-s{seed}"
            groups.setdefault(cname, []).append(name)
            settings.append({**point, "seed": seed, "learning_rate": lr})
            data = (
                None
                if lr is None
                else apply_overrides(
                    config.to_dict(), [f"seed={seed}", f"train.learning_rate={lr}"]
                )
            )
            why = None if lr is not None else "learning-rate search: every rate failed"
            jobs.append(Job(name, method, data, s.root / "runs" / name, s.resume, why))
    return jobs, settings, groups


def _study_notes(
    s: _Session,
    summaries: list[dict[str, Any]],
    searches: dict[str, LRSearch],
    skipped: list[str],
    findings: list[str],
) -> list[str]:
    """The notes of study.md and the report: the intervals' width, the chosen rates, rates at
    the grid's edge, figures skipped, then the findings (:func:`summarize_study`)."""
    spec = s.spec
    skipped = skipped + [
        f"curve of {k} skipped: the grid gives it one value ({_short(v[0])}); a curve needs several"
        for k, v in spec.grid.items()
        if len(v) == 1
    ]
    half = [x["accuracy_gain"]["half_width"] for x in summaries if x["accuracy_gain"]]
    width = (
        f"held-out questions per run: {s.base_config.data.n_eval}; interval half-width of "
        f"a method's accuracy gain over its seeds: {100 * min(half):.1f} to "
        f"{100 * max(half):.1f} points"
        if half
        else "no interval: no run finished"
    )
    chosen = ", ".join(
        f"{m} {r.chosen:g}" if r.chosen else f"{m} failed" for m, r in searches.items()
    )
    edges = [
        f"learning-rate search of {m}: the chosen {r.chosen:g} is the {r.at_edge} rate "
        f"of the grid {[float(f'{x:g}') for x in r.rates]}; the best may lie beyond it: "
        f"extend study.lr_grid.{m}"
        for m, r in searches.items()
        if r.at_edge
    ]
    rates = (
        f"learning rates chosen on a validation split of {spec.validation} training examples "
        f"(seed {spec.lr_seed}), never the held-out questions: {chosen}"
    )
    return [width, rates, *edges, *skipped, *findings]


__all__ = [
    "LRSearch",
    "StudyResult",
    "StudySpec",
    "candidate_configs",
    "rate_name",
    "search_learning_rate",
    "split_study_config",
    "study",
]
