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

Instead of ``methods:``, ``variants:`` names each candidate with its own settings
(:mod:`spectune.studies.variants`: ``lora-r64: {method: lora, lora.r: 64}``, a ``search:`` of
settings tried with the rates), and ``lr_search`` takes ``seeds`` (a curve per search seed)
and ``criterion`` (``accuracy`` then loss, or ``loss``).

What it does, in order:

1. **Matched budgets** (:func:`spectune.studies.variants.candidate_configs`): each variant's
   config (its overrides applied) at the LoRA reference's trainable count, per grid point.
2. **Learning-rate search** per variant (:mod:`spectune.studies.rate_search`): one short run
   per point (rate x searched settings) and search seed on a *validation split carved
   (seeded) from the training data*, never on the held-out test questions; the point with the
   best mean by the criterion wins. Runs in
   ``lr_search/<variant>-lr<rate>[-<key><value>...][-s<seed>]/``.
3. **The real runs**: every variant x grid point x seed at its chosen point, into
   ``runs/<name>/`` (the sweep layout: results.csv, results.md, plots/, report.html).
4. **The summary** (:func:`spectune.studies.summary.summarize_study`,
   :mod:`spectune.results.stats`): per-candidate
   accuracy gain and forgetting with intervals over seeds and questions, paired differences
   (resolved or within noise), the Pareto front, eta-squared of each varied parameter,
   Spearman correlations of the spectral columns with gain and forgetting (undetermined
   below 5 runs), and the advice (:mod:`spectune.studies.advice`). ``study.json``
   (:class:`StudyResult`), ``study.md``, plots in ``plots/``
   (:mod:`spectune.report.plots.study`), the notes of report.html.

The folder, the resume check, the backends and the comparison files are the runner's that
sweeps, the demo and searches share (:mod:`spectune.studies.runner`).

Resume (``resume=True``) keeps finished runs; a changed study config is refused with the
changed fields named, except for growth: rates added to ``lr_grid`` and seeds added to
``seeds`` or ``lr_search.seeds`` run only what is new (the study's own advice "extend
study.lr_grid.X" is a resume), and a real run whose variant's chosen point moved is run again
in its folder. A run that fails, whatever it raises (an ``OverflowError`` as much as a
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
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
from spectune.studies.questions import Answer, Evidence, Question, StudyPlan, get_question
from spectune.studies.rate_search import (
    LRSearch,
    fixed_point,
    point_name,
    search_learning_rate,
    search_points,
    search_space,
)
from spectune.studies.runner import (
    changed_settings,
    finish,
    opened_folder,
    outcomes_of,
    save_settings,
    write_comparison,
)
from spectune.studies.summary import OUTCOMES, layer_alpha_points, study_row, summarize_study
from spectune.studies.variants import (
    Candidate,
    StudySpec,
    candidate_configs,
    overrides_of,
    rate_name,
    short,
    split_study_config,
    study_plan,
)
from spectune.tuning import recipe
from spectune.tuning.config import (
    TuneConfig,
    apply_overrides,
    changed_fields,
    read_config_data,
    yaml_load,
)
from spectune.tuning.objectives.sft import load_instruction_data

STUDY_CONFIG = "study.yaml"
STUDY_JSON = "study.json"


# --------------------------------------------------------------------------- the search data


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
    #: 2: variants, searched settings and search seeds (``lr_search`` points and curves)
    schema_version: int = 2
    #: per run, Spearman over its layers of the base layer's alpha and the update's alpha
    layer_correlations: list[dict[str, Any]] = field(default_factory=list)
    #: the variants (name, method, overrides, search); empty before schema 2
    variants: list[dict[str, Any]] = field(default_factory=list)
    #: the question's answer (``Answer.to_dict()``); None without a question
    answer: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, folder: str | Path) -> StudyResult:
        path = Path(folder) / STUDY_JSON
        if not path.is_file():
            raise SpectuneError(f"{path} does not exist: {folder} holds no finished study")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- the study


@dataclass
class _Session:
    """A study being run: its settings, candidates and backend (see :func:`study`)."""

    out: Path
    raw: dict[str, Any]
    base: dict[str, Any]
    spec: StudySpec
    base_config: TuneConfig
    candidates: list[Candidate]
    execute: Executor
    resume: bool
    progress: bool
    plan: StudyPlan | None = None
    question: Question | None = None

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
    question = plan = None
    if spec.question is not None:  # a grid that cannot answer it: refused before the folder
        question = get_question(spec.question)
        plan = study_plan(spec, candidates)
        question.check(plan)
    held = HeldFolders()  # each run folder's lock, from its run's start to the study's end
    executor = make_executor(backend, None, run_fn, progress, held)  # unreachable Ray: nothing done
    session = _Session(
        out, raw, base, spec, base_config, candidates, executor, resume, progress, plan, question
    )
    earlier = 0.0  # the sessions before this one, as the last study.json recorded them

    def before(folder: RunFolder) -> None:
        nonlocal earlier
        if not resume:
            return
        saved = out / STUDY_CONFIG
        diff = _beyond_growth(saved, raw, changed_settings(saved, raw))
        if diff:
            raise SpectuneError(
                f"--resume: this study config differs from the one {out} started with (in: "
                f"{', '.join(diff)}); resume with {saved} or start over with --overwrite (a "
                "resume may only add rates to study.lr_grid and seeds to study.seeds or "
                "study.lr_search.seeds)"
            )
        folder.resumed()
        earlier = _earlier_seconds(out)

    with opened_folder(
        out, "study", overwrite=overwrite, resume=resume, held=held, before=before
    ) as folder:
        return _run_study(session, folder, earlier)


#: the study settings a resume may grow: what was run at the old values stays valid
_GROWABLE = ("study.lr_grid", "study.seeds", "study.lr_search.seeds")


def _beyond_growth(saved: Path, raw: dict[str, Any], diff: list[str]) -> list[str]:
    """The fields of ``diff`` (changed since ``saved``) a resume cannot take: all but rates
    added to a variant's grid and seeds added to the real runs or to the searches (from two
    or more search seeds: one names its runs without a seed)."""
    other = [k for k in diff if not any(k == g or k.startswith(g + ".") for g in _GROWABLE)]
    if len(other) == len(diff):
        return other
    try:
        _, old = split_study_config(yaml_load(saved.read_text(encoding="utf-8"), str(saved)))
        _, new = split_study_config(raw)
    except (OSError, SpectuneError):
        return diff
    beyond = [] if set(old.seeds) <= set(new.seeds) else ["study.seeds"]
    if not set(old.lr_seeds) <= set(new.lr_seeds) or len(old.lr_seeds) == 1 < len(new.lr_seeds):
        beyond.append("study.lr_search.seeds")
    for name, rates in old.lr_grid.items():
        if not set(rates) <= set(new.lr_grid.get(name, [])):
            beyond.append(f"study.lr_grid.{name}")
    return sorted(other + beyond)


def _earlier_seconds(out: Path) -> float:
    """The seconds of a study's earlier sessions: the marker's ``total_seconds``, written at
    the end of a session and after each of its runs (so an interrupted session's time counts
    up to its last finished run)."""
    try:
        return float((RunFolder(out, "study").read_marker() or {}).get("total_seconds") or 0)
    except (SpectuneError, ValueError, TypeError):
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
    execute = s.execute

    def clocked(jobs: list[Job], what: str | None = None, after: Any = None) -> Any:
        """The executor, keeping the study's seconds so far in its marker after each run (an
        interrupted session's time then counts on resume, not only a finished one's)."""

        def tick(job: Job, result: Any) -> None:
            folder.update(total_seconds=earlier + time.perf_counter() - start)
            if after is not None:
                after(job, result)

        return execute(jobs, what, tick)

    s.execute = clocked
    # 1. learning-rate search per variant (on the first grid point), on the validation split
    searches = _search_rates(s)
    folder.update(lr_chosen={m: r.chosen for m, r in searches.items()})
    # 2. the real runs: variant x grid point x seed at the chosen point
    jobs, settings, groups = _study_jobs(s, searches)
    outcomes, logs = outcomes_of(jobs, settings, s.execute(jobs, "run"))
    rows = [study_row(o, job.out) for o, job in zip(outcomes, jobs, strict=True)]
    failed = {o.name: o.error for o in outcomes if o.error is not None}
    folder.update(failed_runs=sorted(failed))
    spec = s.spec
    title = (
        f"spectune study: {', '.join(v.name for v in spec.variants)} over "
        f"{len(spec.seeds)} seed(s), per-method learning rates"
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
    answer = _answer(s, rows, groups, summaries, searches, notes)
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
        variants=[asdict(v) for v in spec.variants],
        answer=None if answer is None else answer.to_dict(),
    )
    write_comparison(
        out,
        outcomes,
        logs,
        {**meta, "total_seconds": total, "notes": notes, "answer": result.answer},  # fmt: skip
    )
    write_text(out / "results.csv", csv_text(rows))  # the study's columns on top of the sweep's
    save_figures(figs, out / "plots")
    write_json(out / STUDY_JSON, result.to_dict())
    md = f"# {title}\n\n" + "".join(f"- {n}\n" for n in notes)
    write_text(out / "study.md", md if answer is None else f"{md}\n{answer.markdown()}")
    write_comparison_report(out)
    folder.update(total_seconds=total)
    finish(folder, list(failed), len(outcomes))
    return result


def _answer(
    s: _Session,
    rows: list[dict[str, Any]],
    groups: dict[str, list[str]],
    summaries: list[dict[str, Any]],
    searches: dict[str, LRSearch],
    notes: list[str],
) -> Answer | None:
    """The question's answer from the finished study (None without a question); a question
    that fails (whatever it raises) costs its answer, never the study: the failure becomes a
    note."""
    if s.question is None or s.plan is None:
        return None
    evidence = Evidence(s.root, s.plan, rows, groups, summaries,
                        {name: r.evidence() for name, r in searches.items()})  # fmt: skip
    try:
        answer = s.question.answer(evidence)
        if not isinstance(answer, Answer):
            raise TypeError(f"answer() returned {type(answer).__name__}, not an Answer")
        return answer
    except Exception as exc:  # noqa: BLE001 - the finished runs are worth more than an answer
        notes.append(
            f"question {s.spec.question}: no answer ({failure(exc)}); the runs are kept: fix the "
            "question and run spectune study --resume to answer it without re-running them"
        )
        return None


def _search_jobs(s: _Session) -> list[Job]:
    """The runs of the searches: every point (rate x searched settings) of each variant with
    several, once per search seed, on the validation split carved from the training data."""
    spec = s.spec
    need = [v for v in spec.variants if len(search_space(spec.lr_grid[v.name], v.search)) > 1]
    if not need:
        return []
    split = _write_validation_split(s.base, spec, s.root / "lr_search" / "data")
    several = len(spec.lr_seeds) > 1
    jobs: list[Job] = []
    for variant in need:
        config = next(c.config for c in s.candidates if c.variant == variant.name)
        search_data = apply_overrides(
            config.to_dict(),
            [
                "eval.latency_prompts=0",
                "eval.spectra=false",
                *(f"data.{k}={json.dumps(v)}" for k, v in split.items()),
                *([f"train.max_steps={spec.lr_steps}"] if spec.lr_steps else []),
            ],
        )
        for point in search_space(spec.lr_grid[variant.name], variant.search):
            for seed in spec.lr_seeds:
                name = f"{variant.name}-lr{point_name(point, seed if several else None)}"
                data = apply_overrides(search_data, [f"seed={seed}", *_point_items(point)])
                jobs.append(Job(name, variant.method, data, s.root / "lr_search" / name, True))
    names = [j.name for j in jobs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpectuneError(
            f"study.variants: two search points get the run name {twice[0]!r}; give searched "
            "values that print apart"
        )
    return jobs


def _point_items(point: dict[str, Any]) -> list[str]:
    """A search point as overrides: its rate and searched settings."""
    rest = {k: v for k, v in point.items() if k != "learning_rate"}
    return [f"train.learning_rate={point['learning_rate']!r}", *overrides_of(rest)]


def _search_rates(s: _Session) -> dict[str, LRSearch]:
    """Stage 1: the search of every variant (one point: no search)."""
    spec = s.spec
    jobs = _search_jobs(s)
    done = {j.name: r for j, r in zip(jobs, s.execute(jobs, "lr search"), strict=True)}
    several = len(spec.lr_seeds) > 1
    searches: dict[str, LRSearch] = {}
    for v in spec.variants:
        rates = spec.lr_grid[v.name]
        if len(search_space(rates, v.search)) == 1:
            searches[v.name] = fixed_point(v.name, v.method, search_space(rates, v.search)[0])
            continue

        def one(point: dict[str, Any], seed: int, name: str = v.name) -> tuple[float, float]:
            metrics, error = done[f"{name}-lr{point_name(point, seed if several else None)}"]
            if metrics is None:
                raise RuntimeError(error)
            return metrics.after.accuracy.accuracy, metrics.after.heldout_loss.loss

        found = search_points(v.name, v.method, rates, v.search, spec.lr_seeds, one, spec.criterion)
        searches[v.name] = found
        s.say(
            f"[lr search] {v.name}: chose {point_name(found.chosen_point)}"
            if found.chosen_point
            else f"[lr search] {v.name}: every point failed"
        )
        if found.at_edge:
            s.say(
                f"[lr search] {v.name}: {found.chosen:g} is the {found.at_edge} rate of the "
                f"grid; the best may lie beyond it: extend study.lr_grid.{v.name}"
            )
    return searches


def _study_jobs(
    s: _Session, searches: dict[str, LRSearch]
) -> tuple[list[Job], list[dict[str, Any]], dict[str, list[str]]]:
    """Stage 2's jobs (every candidate x seed at its variant's chosen point), their settings,
    and each candidate's runs."""
    groups: dict[str, list[str]] = {}
    jobs: list[Job] = []
    settings: list[dict[str, Any]] = []
    for c in s.candidates:
        point = searches[c.variant].chosen_point
        lr = None if point is None else point["learning_rate"]
        searched = {k: v for k, v in (point or {}).items() if k != "learning_rate"}
        for seed in s.spec.seeds:
            name = f"{c.name}-s{seed}"
            groups.setdefault(c.name, []).append(name)
            settings.append(
                {
                    **c.point,
                    "variant": c.variant,
                    "candidate": c.name,
                    **searched,
                    "seed": seed,
                    "learning_rate": lr,
                }  # fmt: skip
            )
            data = (
                None
                if point is None
                else apply_overrides(c.config.to_dict(), [f"seed={seed}", *_point_items(point)])
            )
            why = None if point is not None else "learning-rate search: every point failed"
            out = s.root / "runs" / name
            moved = s.resume and data is not None and _moved_point(out, data, point)
            if moved:
                s.say(f"[run] {name}: the search now chooses {point_name(point)}: run again")
            jobs.append(Job(name, c.method, data, out, s.resume and not moved, why, moved))
    return jobs, settings, groups


def _moved_point(out: Path, data: dict[str, Any], point: dict[str, Any]) -> bool:
    """Whether ``out`` holds a run (finished or interrupted) at another search point than
    ``point`` (a grid grown on resume moved the choice): the point's settings in its resolved
    config differ. Resuming it would be refused; it is run again instead."""
    if not (out / "config.yaml").is_file():
        return False
    try:
        ran = yaml_load((out / "config.yaml").read_text(encoding="utf-8"), str(out))
    except (OSError, SpectuneError):
        return False
    keys = {item.split("=", 1)[0] for item in _point_items(point)}
    return bool(keys & set(changed_fields(ran, data)))


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
        f"curve of {k} skipped: the grid gives it one value ({short(v[0])}); a curve needs several"
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
        f"{m} {r.chosen:g}" + _searched_text(r) if r.chosen else f"{m} failed"
        for m, r in searches.items()
    )
    edges = [
        f"learning-rate search of {m}: the chosen {r.chosen:g} is the {r.at_edge} rate "
        f"of the grid {[float(f'{x:g}') for x in r.rates]}; the best may lie beyond it: "
        f"extend study.lr_grid.{m}"
        for m, r in searches.items()
        if r.at_edge
    ]
    how = "" if spec.criterion == "accuracy" else ", by the lowest validation loss"
    if len(spec.lr_seeds) > 1:
        how += f", mean over search seeds {', '.join(map(str, spec.lr_seeds))}"
    rates = (
        f"learning rates chosen on a validation split of {spec.validation} training examples "
        f"(seed {spec.lr_seed}{how}), never the held-out questions: {chosen}"
    )
    return [width, rates, *edges, *skipped, *findings]


def _searched_text(search: LRSearch) -> str:
    """`` (key=value, ...)``: the searched settings a search chose; empty without any."""
    rest = {k: v for k, v in (search.chosen_point or {}).items() if k != "learning_rate"}
    return f" ({', '.join(f'{k}={short(v)}' for k, v in rest.items())})" if rest else ""


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
