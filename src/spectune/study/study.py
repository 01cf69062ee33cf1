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

1. **Matched budgets** (:func:`spectune.study.demo.demo_runs`): each method's config at
   the LoRA reference's trainable count, per grid point.
2. **Learning-rate search** per method (:func:`search_learning_rate`): one short run per
   rate on a *validation split carved (seeded) from the training data*, never on the held-out
   test questions; the rate with the best validation accuracy (then the lowest validation
   loss) wins. Runs in ``lr_search/<method>-lr<rate>/``.
3. **The real runs**: every method x grid point x seed at its chosen rate, into
   ``runs/<name>/`` (the sweep layout: results.csv, results.md, plots/, report.html).
4. **The analysis** (:func:`analyze_study`, :mod:`spectune.results.stats`): per-method
   accuracy gain and forgetting with intervals over seeds and questions, paired differences
   (resolved or within noise), the Pareto front, eta-squared of each varied parameter,
   Spearman correlations of the spectral columns with gain and forgetting (undetermined
   below 5 runs), and the advice (:mod:`spectune.study.advice`). ``study.json``
   (:class:`StudyResult`), ``study.md``, plots in ``plots/``, the notes of report.html.

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

from spectune._io import write_json, write_text
from spectune.errors import SpectuneError
from spectune.study.backends import Backend, Job, make_executor
from spectune.tune.config import TuneConfig, apply_overrides, changed_fields, yaml_dump

STUDY_CONFIG = "study.yaml"
STUDY_JSON = "study.json"

#: spectral columns correlated with the outcomes (results.csv names)
SPECTRAL_COLUMNS = ("adapter_alpha", "base_alpha", "frac_alpha_below_2", "rank90",
                    "stable_rank", "log_norm", "num_intruders")  # fmt: skip
#: outcomes the spectral columns are correlated with
OUTCOMES = ("accuracy_gain", "forgetting")
#: metrics of the hyperparameter ranking (the LoRA parameter study's five measures)
EFFECT_METRICS = ("train_loss", "accuracy_after", "forgetting", "train_seconds", "ms_per_token")


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
        from spectune._check import integer
        from spectune.tune.methods import METHODS

        if not isinstance(data, dict):
            raise SpectuneError(f"{source}: the study: block must be a mapping of settings")
        known = {"methods", "seeds", "lr_grid", "lr_search", "grid", "match_budget"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpectuneError(f"{source}: study.{unknown[0]} is not a study setting "
                                f"(known: {', '.join(sorted(known))})")  # fmt: skip
        methods = data.get("methods")
        if not isinstance(methods, list) or not methods:
            raise SpectuneError(f"{source}: study.methods must list methods, e.g. [lora, full]")
        for m in methods:
            if m not in METHODS.names():
                raise SpectuneError(f"{source}: study.methods: unknown method {m!r} "
                                    f"(registered: {', '.join(METHODS.names())})")  # fmt: skip
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
            raise SpectuneError(f"{source}: study.seeds lists seed {repeated[0]} more than once "
                                "(its runs would share a folder); list each seed once")  # fmt: skip
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
                raise SpectuneError(f"{source}: study.lr_grid must be a list of positive rates "
                                    f"or a mapping method -> list (got {rates!r} for {m})")  # fmt: skip
            grid_lr[m] = sorted(float(r) for r in rates)
            twice = [r for r, nxt in itertools.pairwise(grid_lr[m]) if r == nxt]
            if twice:
                raise SpectuneError(f"{source}: study.lr_grid lists rate {twice[0]:g} more than "
                                    f"once for {m}; list each rate once")  # fmt: skip
        search = data.get("lr_search") or {}
        if not isinstance(search, dict) or set(search) - {"steps", "validation", "seed"}:
            raise SpectuneError(f"{source}: study.lr_search takes steps, validation and seed")
        grid = data.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise SpectuneError(f"{source}: study.grid must map keys to lists of values, "
                                "e.g. {lora.r: [4, 8]}")  # fmt: skip
        validation = search.get("validation", 64)
        if not isinstance(validation, int) or validation < 1:
            raise SpectuneError(f"{source}: study.lr_search.validation must be >= 1")
        steps = search.get("steps")
        if steps is not None:
            integer(f"{source}: study.lr_search.steps", steps, minimum=1)
        lr_seed = integer(f"{source}: study.lr_search.seed", search.get("seed", 0), minimum=0)
        match_budget = data.get("match_budget", True)
        if not isinstance(match_budget, bool):
            raise SpectuneError(f"{source}: study.match_budget must be true or false, got "
                                f"{match_budget!r}")  # fmt: skip
        return cls(methods=list(methods), seeds=seeds, lr_grid=grid_lr, lr_steps=steps,
                   validation=validation, lr_seed=lr_seed, grid=grid,
                   match_budget=match_budget)  # fmt: skip


def split_study_config(
    data: dict[str, Any], source: str = "study config"
) -> tuple[dict, StudySpec]:
    """``(base run config data, StudySpec)`` of a study config's raw data."""
    if not isinstance(data, dict) or "study" not in data:
        raise SpectuneError(f"{source}: a study config needs a study: block (methods, seeds, "
                            "lr_grid...); see configs/study.yaml")  # fmt: skip
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
            from spectune.study.backends import failure

            scores.append(None)
            errors[rate_name(lr)] = failure(exc)
    ok = [(s[0], -s[1] if math.isfinite(s[1]) else -math.inf, -lr)
          for lr, s in zip(rates, scores, strict=True) if s is not None]  # fmt: skip
    chosen = -max(ok)[2] if ok else None
    return LRSearch(method, rates, scores, chosen, errors)


def _write_validation_split(base: dict[str, Any], spec: StudySpec, folder: Path) -> dict[str, Any]:
    """Carve the validation split from the training data (seeded,
    :func:`spectune.data.instructions.split_validation`, as ``data.n_validation`` does in a run)
    and write both as Dolly files; returns the ``data`` changes of the search runs."""
    from spectune.data.instructions import split_validation
    from spectune.tune.objectives.sft import load_instruction_data

    config = TuneConfig.from_dict(apply_overrides(base, [f"seed={spec.lr_seed}"]),
                                  source="study", foreign_sections="drop")  # fmt: skip
    if config.objective != "sft":
        raise SpectuneError(
            f"study.lr_grid: the learning-rate search carves its validation split from "
            f"instruction data (objective sft), not from objective {config.objective!r}'s; give "
            "each method one rate (study.lr_grid: {method: [rate]})"
        )
    train, validation = split_validation(list(load_instruction_data(config).train),
                                         spec.validation, spec.lr_seed,
                                         label="study.lr_search.validation")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)

    def dump(rows: list[Any]) -> str:
        return "".join(json.dumps(ex.to_dolly(), ensure_ascii=False) + "\n" for ex in rows)

    write_text(folder / "train.jsonl", dump(train))
    write_text(folder / "validation.jsonl", dump(validation))
    return {"train": str(folder / "train.jsonl"), "eval": str(folder / "validation.jsonl"),
            "format": "dolly", "n_eval": spec.validation}  # fmt: skip


# --------------------------------------------------------------------------- results


@dataclass
class MethodSummary:
    """One method (at one grid point) over its seeds."""

    name: str
    method: str
    learning_rate: float | None
    runs: int
    failed: int
    accuracy_gain: dict[str, Any] | None
    accuracy_after: dict[str, Any] | None
    forgetting: dict[str, Any] | None
    train_seconds: float | None
    ms_per_token: float | None
    peak_rss_gib: float | None
    trainable: int | None
    pareto: bool = False


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


def _fitted_rows(run_dir: Path) -> list[tuple[float, dict[str, str]]]:
    """(alpha, row) of every layer of a run's ``spectra/details.csv`` whose fit succeeded with a
    finite alpha; empty without spectra."""
    import csv

    path = run_dir / "spectra" / "details.csv"
    if not path.is_file():
        return []
    fitted = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("status", "success") != "success":
                continue
            try:
                a = float(row.get("alpha", "nan"))
            except ValueError:
                continue
            if math.isfinite(a):
                fitted.append((a, row))
    return fitted


def _frac_below_2(run_dir: Path) -> float | None:
    alphas = [a for a, _row in _fitted_rows(run_dir)]
    return sum(a < 2 for a in alphas) / len(alphas) if alphas else None


def _layer_alphas(run_dir: Path) -> list[tuple[float, float]]:
    """(base alpha, update alpha) of every layer of a run's spectra whose two fits succeeded."""
    pairs = []
    for a, row in _fitted_rows(run_dir):
        if row.get("base_status") != "success":
            continue
        try:
            b = float(row.get("base_alpha", "nan"))
        except ValueError:
            continue
        if math.isfinite(b):
            pairs.append((b, a))
    return pairs


def layer_alpha_correlation(run_dir: Path) -> Any:
    """Does the base layer's alpha predict the alpha of what training changed in that layer
    (the WeightWatcher PEFT blog's question)? Spearman over the run's layers, with a
    bootstrap interval over layers; None when the run has no spectra with the base's."""
    from spectune.results.stats import spearman

    pairs = _layer_alphas(run_dir)
    if not pairs:
        return None
    base, tuned = zip(*pairs, strict=True)
    return spearman(base, tuned, names=("base_alpha", "adapter_alpha"), unit="layer")


def study_row(outcome: Any, run_dir: Path) -> dict[str, Any]:
    """A run's row of results.csv with the study's columns (gain, forgetting, spectra)."""
    row = {**outcome.row(), "name": outcome.name}  # the folder's name under runs/
    m = outcome.metrics
    if m is not None:
        s = m.spectra
        row.update({
            "accuracy_gain": m.learning.accuracy_gain,
            "forgetting": None if m.forgetting.perplexity_ratio is None
            else m.forgetting.perplexity_ratio - 1,
            "frac_alpha_below_2": _frac_below_2(run_dir),
            "rank90": None if s is None else s.rank90,
            "stable_rank": None if s is None else s.stable_rank,
            "log_norm": None if s is None else s.log_norm,
        })  # fmt: skip
    return row


def analyze_study(folder: Path, rows: list[dict[str, Any]], groups: dict[str, list[str]],
                  varied: list[str]) -> tuple[list, list, dict, list, Any, list[str], list]:  # fmt: skip
    """Summaries, paired differences, effects, correlations, advice, notes and per-layer
    correlations (base alpha against the update's alpha, one per run) of a study.

    Args:
        folder: the study folder (``runs/<name>/predictions.jsonl`` are read).
        rows: results.csv rows (:func:`study_row`) of every run.
        groups: candidate name -> its runs' names.
        varied: the parameters that take several values (for the ranking).
    """
    import numpy as np

    from spectune.results.stats import pareto_front, spearman, variance_explained
    from spectune.study.advice import Candidate, advise, paired_gain, read_predictions

    by_name = {r["name"]: r for r in rows}
    done = [r for r in rows if r.get("status") == "complete"]
    candidates, summaries = [], []
    for cname, names in groups.items():
        ok = [by_name[n] for n in names if by_name[n].get("status") == "complete"]
        scores = {}
        for r in ok:
            p = read_predictions(folder / "runs" / r["name"])
            if p is not None:
                scores[int(r["seed"])] = p

        def mean(col: str, rs: list = ok) -> float | None:
            v = [float(r[col]) for r in rs if r.get(col) is not None]
            return float(np.mean(v)) if v else None

        method = by_name[names[0]]["method"]
        cand = Candidate(cname, method, scores,
                         [float(r["forgetting"]) for r in ok if r.get("forgetting") is not None],
                         mean("train_seconds"), mean("ms_per_token"),
                         None if mean("peak_rss_mib") is None else mean("peak_rss_mib") / 1024,
                         None if mean("trainable") is None else int(mean("trainable")))  # fmt: skip
        if scores:
            candidates.append(cand)
        gain, fgt = cand.gain(), cand.forgetting_interval()
        after = None
        if scores:
            from spectune.results.stats import bootstrap_runs

            afters = []
            for r in ok:
                path = folder / "runs" / r["name"] / "predictions.jsonl"
                if path.is_file():
                    afters.append([float(bool(json.loads(x).get("correct_after")))
                                   for x in path.read_text().splitlines() if x.strip()])  # fmt: skip
            after = bootstrap_runs(afters).to_dict() if afters else None
        summaries.append(MethodSummary(
            cname, method, by_name[names[0]].get("learning_rate"), len(ok), len(names) - len(ok),
            None if gain is None else gain.to_dict(), after,
            None if fgt is None else fgt.to_dict(), cand.train_seconds, cand.ms_per_token,
            cand.peak_rss_gib, cand.trainable))  # fmt: skip
    front = pareto_front([None if s.accuracy_gain is None else s.accuracy_gain["estimate"]
                          for s in summaries],
                         [None if s.forgetting is None else s.forgetting["estimate"]
                          for s in summaries])  # fmt: skip
    for s, f in zip(summaries, front, strict=True):
        s.pareto = f
    diffs = []
    for a, b in itertools.combinations(candidates, 2):
        d = paired_gain(a, b)
        if d is not None:
            diffs.append(d.to_dict())
    effects = {m: [e.to_dict() for e in variance_explained(done, varied, m)]
               for m in (*EFFECT_METRICS, "accuracy_gain")} if varied else {}  # fmt: skip
    corrs, layer_notes = [], []
    for x in SPECTRAL_COLUMNS:
        for y in OUTCOMES:
            c = spearman([r.get(x) for r in done], [r.get(y) for r in done], names=(x, y))
            corrs.append(c.to_dict() | {"text": c.text()})
    layer_corrs = []
    for cname, names in groups.items():
        per_seed = []
        for n in names:
            r = by_name[n]
            if r.get("status") != "complete":
                continue
            c = layer_alpha_correlation(folder / "runs" / n)
            if c is not None:
                layer_corrs.append(c.to_dict() | {"candidate": cname, "method": r["method"],
                                                  "run": n, "seed": r.get("seed"),
                                                  "text": c.text()})  # fmt: skip
                per_seed.append(c)
        if per_seed:
            rhos = [c.rho for c in per_seed if c.rho is not None]
            mean = (
                f"mean {sum(rhos) / len(rhos):+.2f} over {len(rhos)} runs; "
                if len(rhos) > 1
                else ""
            )
            layer_notes.append(
                f"{cname}: base layer alpha vs the update's alpha over its {per_seed[0].n} "
                f"layers (Spearman, per run): {mean}" + "; ".join(c.text() for c in per_seed)
            )
    advice = advise(candidates) if candidates else None
    notes = []
    for s in summaries:
        g, f = s.accuracy_gain, s.forgetting
        gtxt = "-" if g is None else (f"{100 * g['estimate']:+.1f} points "
                                      f"[{100 * g['low']:+.1f}, {100 * g['high']:+.1f}]")  # fmt: skip
        ftxt = "-" if f is None else (f"{100 * f['estimate']:+.1f}% "
                                      f"[{100 * f['low']:+.1f}, {100 * f['high']:+.1f}]")  # fmt: skip
        lr = "-" if s.learning_rate is None else f"{float(s.learning_rate):.3g}"
        notes.append(f"{s.name} (lr {lr}, {s.runs} seed(s){', Pareto front' if s.pareto else ''}): "
                     f"accuracy gain {gtxt}; perplexity change {ftxt}")  # fmt: skip
    for d in diffs:
        notes.append(f"{d['a']} - {d['b']}: {100 * d['estimate']:+.1f} points "
                     f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]: {d['verdict']}")  # fmt: skip
    for metric, es in effects.items():
        top = [e for e in es if e["eta_squared"] is not None]
        if top:
            notes.append(f"{metric}: " + ", ".join(f"{e['parameter']} eta^2={e['eta_squared']:.2f}"
                                                   for e in top))  # fmt: skip
    for c in corrs:
        notes.append(f"Spearman {c['x']} vs {c['y']}: {c['text']}")
    notes += layer_notes
    if advice is not None:
        notes.append(advice.text().replace("\n\n", "\n"))
    return ([asdict(s) for s in summaries], diffs, effects, corrs,
            None if advice is None else advice.to_dict(), notes, layer_corrs)  # fmt: skip


# --------------------------------------------------------------------------- plots


def study_figures(summaries: list[dict], searches: list[LRSearch], rows: list[dict],
                  varied: list[str]) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """The study's figures (name -> Figure) and messages about curves skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, Any] = {}
    skipped: list[str] = []
    pts = [s for s in summaries if s["accuracy_gain"] and s["forgetting"]]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for s in pts:
            g, f = s["accuracy_gain"], s["forgetting"]
            x, y = 100 * f["estimate"], 100 * g["estimate"]
            ax.errorbar(x, y, xerr=[[x - 100 * f["low"]], [100 * f["high"] - x]],
                        yerr=[[y - 100 * g["low"]], [100 * g["high"] - y]], fmt="o",
                        capsize=3, color="C3" if s["pareto"] else "C0")  # fmt: skip
            ax.annotate(s["name"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        front = sorted((100 * s["forgetting"]["estimate"], 100 * s["accuracy_gain"]["estimate"])
                       for s in pts if s["pareto"])  # fmt: skip
        if len(front) > 1:
            ax.plot(*zip(*front, strict=True), "--", color="C3", label="Pareto front")
            ax.legend()
        ax.set_xlabel("perplexity increase on general text (%, forgetting)")
        ax.set_ylabel("held-out accuracy gain (points)")
        ax.set_title("Learning vs forgetting (95% intervals; red: Pareto front)")
        figs["pareto.png"] = fig
    multi = [s for s in searches if len(s.rates) > 1]
    if multi:
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in multi:
            xs = [r for r, v in zip(s.rates, s.scores, strict=True) if v is not None]
            ys = [100 * v[0] for v in s.scores if v is not None]
            ax.plot(
                xs, ys, "o-", label=f"{s.method} (chosen {s.chosen:g})" if s.chosen else s.method
            )
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title("Learning-rate search (validation split)")
        ax.legend(fontsize=8)
        figs["lr_search.png"] = fig
    else:
        skipped.append("learning-rate curves skipped: every lr_grid has one value")
    done = [r for r in rows if r.get("status") == "complete"]
    for p in varied:
        values = sorted({r.get(p) for r in done if r.get(p) is not None}, key=str)
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
        for ax, (col, label) in zip(axes, (("accuracy_gain", "accuracy gain"),
                                           ("forgetting", "perplexity increase"),
                                           ("train_seconds", "train s")), strict=True):  # fmt: skip
            for method in sorted({r["method"] for r in done}):
                ys = []
                for v in values:
                    vals = [float(r[col]) for r in done if r.get(p) == v and r["method"] == method
                            and r.get(col) is not None]  # fmt: skip
                    ys.append(sum(vals) / len(vals) if vals else float("nan"))
                ax.plot([str(v) for v in values], ys, "o-", label=method)
            ax.set_xlabel(p)
            ax.set_ylabel(label)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        figs[f"param_{p.replace('.', '_')}.png"] = fig
    if not varied:
        skipped.append("metric-vs-parameter curves skipped: the study grid gives every "
                       "parameter one value")  # fmt: skip
    xs = [r.get("adapter_alpha") for r in done]
    if sum(x is not None for x in xs) >= 2:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, y in zip(axes, OUTCOMES, strict=True):
            for method in sorted({r["method"] for r in done}):
                pts2 = [(r["adapter_alpha"], r[y]) for r in done if r["method"] == method
                        and r.get("adapter_alpha") is not None and r.get(y) is not None]  # fmt: skip
                if pts2:
                    ax.scatter(*zip(*pts2, strict=True), label=method, s=16)
            ax.set_xlabel("adapter alpha (mean)")
            ax.set_ylabel(y)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        figs["alpha_vs_outcomes.png"] = fig
    return figs, skipped


def layer_alpha_figure(folder: Path, rows: list[dict]) -> Any:
    """Base layer alpha against the update's alpha, layer by layer, for the first finished run
    of each method (the blog's scatter); None without spectra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firsts: dict[str, str] = {}
    for r in rows:
        if r.get("status") == "complete":
            firsts.setdefault(r["method"], r["name"])
    points = {m: _layer_alphas(folder / "runs" / n) for m, n in firsts.items()}
    points = {m: p for m, p in points.items() if p}
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m, p in points.items():
        ax.scatter(*zip(*p, strict=True), s=8, alpha=0.6, label=f"{m} ({firsts[m]})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(2, color="grey", lw=0.8, ls="--")
    ax.axvline(6, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("base layer alpha")
    ax.set_ylabel("alpha of the update (adapter)")
    ax.set_title("Does base alpha predict adapter alpha? (one point per layer)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the study


def _short(v: Any) -> str:
    return rate_name(v) if isinstance(v, float) else str(v)


def plan_configs(base: dict[str, Any], spec: StudySpec) -> list[tuple[str, str, dict, TuneConfig]]:
    """``(candidate name, method, grid point, config)`` for every method and grid point, at
    matched budgets when ``spec.match_budget``."""
    from spectune.study.demo import demo_runs

    keys = list(spec.grid)
    out, seen = [], set()
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        data = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in point.items()])
        if spec.match_budget:
            runs = demo_runs(tuple(spec.methods), base=data)
        else:
            runs = [(m, TuneConfig.from_dict(apply_overrides(data, [f"method={m}"]),
                                             source="study", foreign_sections="drop"), {})
                    for m in spec.methods]  # fmt: skip
        for method, config, _ in runs:
            key = json.dumps(config.relevant(), sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            suffix = "".join(f"-{k.split('.')[-1]}{_short(v)}" for k, v in point.items()
                             if len(spec.grid[k]) > 1)  # fmt: skip
            if any(name == f"{method}{suffix}" for name, *_ in out):
                raise SpectuneError(f"study.grid: two grid points get the run name "
                                    f"{method}{suffix!r}; give distinct values")  # fmt: skip
            out.append((f"{method}{suffix}", method, point, config))
    return out


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
        run_fn: the run function (default :func:`spectune.tune.recipe.tune`).
        backend: ``"local"`` (one run after another), ``"ray"`` (the runs of each stage as
            Ray Tune trials, as many at once as the cluster holds) or a
            :class:`~spectune.study.backends.Backend` (cluster, CPUs/GPUs per trial).
        address: the Ray cluster (``"auto"``, ``"ray://host:10001"``); None starts a local
            instance.

    Returns:
        The :class:`StudyResult` (also in ``study.json``).

    Raises:
        SpectuneError: a bad config, a changed config on resume, or every run failed.
    """
    from spectune.results.runfolder import HeldFolders, RunFolder, fail_on_exit
    from spectune.tune.config import read_config_data
    from spectune.tune.recipe import tune

    run_fn = run_fn or tune
    backend = Backend.of(backend, address)
    source = str(config_path or "study config")
    raw = copy.deepcopy(data) if data is not None else read_config_data(config_path)
    base, spec = split_study_config(raw, source)
    base_config = TuneConfig.from_dict(base, source=source, foreign_sections="drop")
    out = Path(out if out is not None else base_config.output_dir)
    plans = plan_configs(base, spec)  # checks the model and methods before the folder
    held = HeldFolders()  # each run folder's lock, from its run's start to the study's end
    executor = make_executor(backend, None, run_fn, progress, held)  # unreachable Ray: nothing done
    root = out.absolute()  # the runs' folders, wherever a Ray trial runs
    folder = RunFolder(out, "study").open(overwrite=overwrite, resume=resume)
    with folder, held:  # the locks are released however the study ends
        saved = out / STUDY_CONFIG
        if resume and saved.is_file():
            from spectune.tune.config import yaml_load

            old = yaml_load(saved.read_text(encoding="utf-8"), str(saved))
            diff = changed_fields(old, raw)
            if diff:
                raise SpectuneError(
                    f"--resume: this study config differs from the one {out} started with (in: "
                    f"{', '.join(diff)}); resume with {saved} or start over with --overwrite"
                )
        earlier = 0.0  # the sessions before this one, as the last study.json recorded them
        if resume:
            folder.resumed()
            try:
                earlier = float(json.loads((out / STUDY_JSON).read_text())["total_seconds"] or 0)
            except (OSError, ValueError, KeyError, TypeError):
                earlier = 0.0
        with fail_on_exit(folder):  # never left "running", whatever ends the study
            return _run_study(out, root, folder, raw, base, spec, base_config, plans, executor,
                              earlier=earlier, resume=resume, progress=progress)  # fmt: skip


def _run_study(out: Path, root: Path, folder: Any, raw: dict[str, Any], base: dict[str, Any],
               spec: StudySpec, base_config: TuneConfig, plans: list, executor: Any, *,
               earlier: float, resume: bool, progress: bool) -> StudyResult:  # fmt: skip
    """The study in its opened, locked folder (see :func:`study`)."""
    from spectune.report.files import save_figures
    from spectune.report.pages.comparison import write_comparison_report
    from spectune.study.sweep import RunOutcome, csv_text, write_comparison
    from spectune.tune.collect import log_rows

    saved = out / STUDY_CONFIG
    folder.own(STUDY_CONFIG, "lr_search", "runs", "results.csv", "results.md",
               "comparison.json", "plots", "report.html", STUDY_JSON, "study.md")  # fmt: skip
    write_text(saved, f"# spectune study {saved} --resume (the study's config)\n" + yaml_dump(raw))
    start = time.perf_counter()

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    # 1. learning-rate search per method (on the first grid point), on the validation split
    searches: dict[str, LRSearch] = {}
    need = [m for m in spec.methods if len(spec.lr_grid[m]) > 1]
    if need:
        split = _write_validation_split(base, spec, root / "lr_search" / "data")
    search_jobs: list[Job] = []
    for _cname, method, _point, config in plans:
        if method in {j.method for j in search_jobs} or len(spec.lr_grid[method]) == 1:
            continue
        search_data = apply_overrides(config.to_dict(), [
            f"seed={spec.lr_seed}", "eval.latency_prompts=0", "eval.spectra=false",
            *(f"data.{k}={json.dumps(v)}" for k, v in split.items()),
            *([f"train.max_steps={spec.lr_steps}"] if spec.lr_steps else [])])  # fmt: skip
        for lr in spec.lr_grid[method]:
            name = f"{method}-lr{rate_name(lr)}"
            search_jobs.append(Job(name, method, apply_overrides(
                search_data, [f"train.learning_rate={lr}"]), root / "lr_search" / name, True))  # fmt: skip
    done_search = {j.name: r for j, r in zip(search_jobs, executor(search_jobs, "lr search"),
                                              strict=True)}  # fmt: skip
    for _cname, method, _point, _config in plans:
        if method in searches:
            continue
        rates = spec.lr_grid[method]
        if len(rates) == 1:
            searches[method] = LRSearch(method, rates, [None], rates[0])
            continue

        def one(lr: float, method: str = method) -> tuple[float, float]:
            metrics, error = done_search[f"{method}-lr{rate_name(lr)}"]
            if metrics is None:
                raise RuntimeError(error)
            return metrics.after.accuracy.accuracy, metrics.after.heldout_loss.loss

        searches[method] = s = search_learning_rate(method, rates, one)
        say(f"[lr search] {method}: chose {s.chosen:g}" if s.chosen else
            f"[lr search] {method}: every rate failed")  # fmt: skip
        if s.at_edge:
            say(f"[lr search] {method}: {s.chosen:g} is the {s.at_edge} rate of the grid; the "
                f"best may lie beyond it: extend study.lr_grid.{method}")  # fmt: skip
    folder.update(lr_chosen={m: s.chosen for m, s in searches.items()})

    # 2. the real runs: method x grid point x seed at the chosen rate
    groups: dict[str, list[str]] = {}
    jobs: list[Job] = []
    settings: list[dict[str, Any]] = []
    for cname, method, point, config in plans:
        lr = searches[method].chosen
        for seed in spec.seeds:
            name = f"{cname}-s{seed}"
            groups.setdefault(cname, []).append(name)
            settings.append({**point, "seed": seed, "learning_rate": lr})
            data = None if lr is None else apply_overrides(
                config.to_dict(), [f"seed={seed}", f"train.learning_rate={lr}"])  # fmt: skip
            jobs.append(Job(name, method, data, root / "runs" / name, resume,
                            None if lr is not None else "learning-rate search: every rate failed"))  # fmt: skip
    outcomes: list[RunOutcome] = []
    rows: list[dict[str, Any]] = []
    logs: dict[str, list[dict]] = {}
    for job, setting, (metrics, error) in zip(jobs, settings, executor(jobs, "run"), strict=True):
        o = RunOutcome(job.name, job.method, setting, metrics=metrics, error=error)
        if metrics is not None:
            logs[job.name] = log_rows(job.out)
        outcomes.append(o)
        rows.append(study_row(o, job.out))
    failed = {o.name: o.error for o in outcomes if o.error is not None}
    folder.update(failed_runs=sorted(failed))
    varied = [k for k in spec.grid if len(spec.grid[k]) > 1]
    title = (f"spectune study: {', '.join(spec.methods)} over {len(spec.seeds)} seed(s), "
             "per-method learning rates")  # fmt: skip
    meta = {"kind": "study", "title": title, "grid": {**spec.grid, "seed": spec.seeds},
            "base_config": base_config.to_dict(), "runs": [o.name for o in outcomes]}  # fmt: skip
    write_comparison(out, outcomes, logs, {**meta, "total_seconds": None})
    if len(failed) == len(outcomes):
        folder.fail(f"every run failed ({len(outcomes)})")
        raise SpectuneError(
            f"every run of the study failed ({len(outcomes)}); first: "
            f"{next(iter(failed.items()))[0]}: {next(iter(failed.values()))}"
        )

    # 3. analysis, plots, report

    summaries, diffs, effects, corrs, advice, notes, layer_corrs = analyze_study(
        out, rows, groups, varied
    )
    figs, skipped = study_figures(summaries, list(searches.values()), rows, varied)
    fig = layer_alpha_figure(out, rows)
    if fig is not None:
        figs["layer_alpha_vs_base.png"] = fig
    skipped += [f"curve of {k} skipped: the grid gives it one value ({_short(v[0])}); a curve "
                "needs several" for k, v in spec.grid.items() if len(v) == 1]  # fmt: skip
    half = [s["accuracy_gain"]["half_width"] for s in summaries if s["accuracy_gain"]]
    notes = [f"held-out questions per run: {base_config.data.n_eval}; interval half-width of "
             f"a method's accuracy gain over its seeds: {100 * min(half):.1f} to "
             f"{100 * max(half):.1f} points" if half else "no interval: no run finished",
             "learning rates chosen on a validation split of "
             f"{spec.validation} training examples (seed {spec.lr_seed}), never the held-out "
             "questions: " + ", ".join(f"{m} {s.chosen:g}" if s.chosen else f"{m} failed"
                                        for m, s in searches.items()),
             *[f"learning-rate search of {m}: the chosen {s.chosen:g} is the {s.at_edge} rate "
               f"of the grid {[float(f'{r:g}') for r in s.rates]}; the best may lie beyond it: "
               f"extend study.lr_grid.{m}" for m, s in searches.items() if s.at_edge],
             *skipped, *notes]  # fmt: skip
    total = earlier + time.perf_counter() - start
    result = StudyResult(title, spec.methods, spec.seeds, [s.to_dict() for s in searches.values()],
                         rows, summaries, diffs, effects, corrs, advice, notes, failed, total,
                         layer_correlations=layer_corrs)  # fmt: skip
    write_comparison(out, outcomes, logs, {**meta, "total_seconds": total, "notes": notes})
    write_text(out / "results.csv", csv_text(rows))  # the study's columns on top of the sweep's
    save_figures(figs, out / "plots")
    write_json(out / STUDY_JSON, result.to_dict())
    write_text(out / "study.md", f"# {title}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    write_comparison_report(out)
    folder.update(total_seconds=total)
    if failed:  # not "complete": --resume runs the failed ones again
        folder.fail(f"{len(failed)} of {len(outcomes)} runs failed: {', '.join(failed)}")
    else:
        folder.finish()
    return result


__all__ = [
    "LRSearch",
    "MethodSummary",
    "StudyResult",
    "StudySpec",
    "analyze_study",
    "changed_fields",
    "layer_alpha_correlation",
    "layer_alpha_figure",
    "plan_configs",
    "rate_name",
    "search_learning_rate",
    "split_study_config",
    "study",
    "study_row",
]
