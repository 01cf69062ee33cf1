"""A study's settings: its variants, seeds, rate grids and search, validated
(:class:`StudySpec`), and the candidates they give (:func:`candidate_configs`).

A variant is a method with its own settings (:class:`~spectune.studies.questions.Variant`)::

    study:
      variants:
        lora-r64: {method: lora, lora.r: 64}                  # dotted overrides of the base
        attn:     {method: lora, target_modules: [q_proj, v_proj]}
        lora:     {method: lora, search: {lora.init: [default, pissa]}}
        full:     {method: full}

``methods: [lora, full]`` is the plain form (each variant named after its method). A
candidate is a variant at one point of ``study.grid``; with ``match_budget`` its config (the
variant's overrides applied first) is set to LoRA's trainable count at the base config
through its method's ``match_budget`` hook (:func:`spectune.studies.demo.matched_configs`).
:func:`study_plan` is what a study's question checks before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from spectune._check import integer
from spectune.errors import SpectuneError
from spectune.studies.demo import matched_configs, trainable_count
from spectune.studies.questions import StudyPlan, Variant, get_question
from spectune.tuning.config import TuneConfig, apply_overrides
from spectune.tuning.methods import METHODS

#: what picks a variant's learning rate (and searched settings) on the validation split
CRITERIA = ("accuracy", "loss")
#: a variant's name: it starts run folders
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+]*(-[A-Za-z0-9_.+]+)*")
#: keys a variant may not set: the study sets them per run
_STUDY_KEYS = {"seed": "study.seeds", "train.learning_rate": "study.lr_grid", "method": "method"}


@dataclass
class StudySpec:
    """The ``study:`` block, validated.

    Attributes:
        methods: the registered methods of the variants, in order, each once.
        seeds: seeds of the real runs.
        lr_grid: variant name -> learning rates searched (one rate, nothing searched: no
            search).
        lr_steps: max_steps of each search run (None: each variant's own).
        validation: training examples carved out as the validation split of the search.
        lr_seed: seed of the validation split (and of the search runs without ``lr_seeds``).
        grid: dotted key -> values, crossed with every variant (``lora.r: [4, 8]``).
        match_budget: set every variant to the reference's trainable count where it can.
        variants: the candidates' variants (default: one per method, named after it).
        lr_seeds: seeds of the search runs: each point runs once per seed (default
            ``[lr_seed]``).
        criterion: ``"accuracy"`` (then loss) or ``"loss"``: what picks the point.
        question: the registered question the study answers (None: none).
    """

    methods: list[str]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lr_grid: dict[str, list[float]] = field(default_factory=dict)
    lr_steps: int | None = None
    validation: int = 64
    lr_seed: int = 0
    grid: dict[str, list[Any]] = field(default_factory=dict)
    match_budget: bool = True
    variants: list[Variant] = field(default_factory=list)
    lr_seeds: list[int] = field(default_factory=list)
    criterion: str = "accuracy"
    question: str | None = None

    def __post_init__(self) -> None:
        if not self.variants:
            self.variants = [Variant(m, m) for m in self.methods]
        if not self.lr_seeds:
            self.lr_seeds = [self.lr_seed]

    def variant(self, name: str) -> Variant:
        """The variant called ``name``."""
        return next(v for v in self.variants if v.name == name)

    @classmethod
    def from_dict(
        cls, data: Any, base_lr: float, source: str = "study", base: dict | None = None
    ) -> StudySpec:
        """From the ``study:`` block; a shared ``lr_grid`` list applies to every variant.
        ``base`` (the base run config's data) checks the variants' overrides."""
        if not isinstance(data, dict):
            raise SpectuneError(f"{source}: the study: block must be a mapping of settings")
        known = {"methods", "variants", "seeds", "lr_grid", "lr_search", "grid",
                 "match_budget", "question"}  # fmt: skip
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpectuneError(
                f"{source}: study.{unknown[0]} is not a study setting "
                f"(known: {', '.join(sorted(known))})"
            )
        grid = data.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise SpectuneError(
                f"{source}: study.grid must map keys to lists of values, e.g. {{lora.r: [4, 8]}}"
            )
        variants = _variants(data, source, base, grid)
        names = [v.name for v in variants]
        seeds = _seeds(data.get("seeds", 3), f"{source}: study.seeds")
        grid_lr = _lr_grid(data.get("lr_grid", [base_lr]), names, base_lr, source)
        search = data.get("lr_search") or {}
        allowed = {"steps", "validation", "seed", "seeds", "criterion"}
        if not isinstance(search, dict) or set(search) - allowed:
            raise SpectuneError(
                f"{source}: study.lr_search takes {', '.join(sorted(allowed))}"
                + (f" (not {sorted(set(search) - allowed)[0]})" if isinstance(search, dict) else "")
            )
        validation = search.get("validation", 64)
        if not isinstance(validation, int) or validation < 1:
            raise SpectuneError(f"{source}: study.lr_search.validation must be >= 1")
        steps = search.get("steps")
        if steps is not None:
            integer(f"{source}: study.lr_search.steps", steps, minimum=1)
        lr_seed = integer(f"{source}: study.lr_search.seed", search.get("seed", 0), minimum=0)
        lr_seeds = (
            _seeds(search["seeds"], f"{source}: study.lr_search.seeds")
            if "seeds" in search
            else [lr_seed]
        )
        criterion = search.get("criterion", "accuracy")
        if criterion not in CRITERIA:
            raise SpectuneError(
                f"{source}: study.lr_search.criterion must be one of {', '.join(CRITERIA)}, "
                f"got {criterion!r}"
            )
        match_budget = data.get("match_budget", True)
        if not isinstance(match_budget, bool):
            raise SpectuneError(
                f"{source}: study.match_budget must be true or false, got {match_budget!r}"
            )
        question = data.get("question")
        if question is not None:
            try:
                get_question(question)
            except SpectuneError as exc:
                raise SpectuneError(f"{source}: study.question: {exc}") from None
        return cls(
            methods=list(dict.fromkeys(v.method for v in variants)),
            seeds=seeds,
            lr_grid=grid_lr,
            lr_steps=steps,
            validation=validation,
            lr_seed=lr_seed,
            grid=grid,
            match_budget=match_budget,
            variants=variants,
            lr_seeds=lr_seeds,
            criterion=criterion,
            question=question,
        )


def _seeds(seeds: Any, label: str) -> list[int]:
    """A count (``3``: seeds 0, 1, 2) or a list of distinct seeds."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SpectuneError(f"{label} must be >= 1, got {seeds}")
        seeds = list(range(seeds))
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise SpectuneError(f"{label} must be a count or a list of seeds")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise SpectuneError(
            f"{label} lists seed {repeated[0]} more than once (its runs would share a "
            "folder); list each seed once"
        )
    return list(seeds)


def _lr_grid(raw: Any, names: list[str], base_lr: float, source: str) -> dict[str, list[float]]:
    """Variant name -> its rates, ascending, from a shared list or a mapping by name."""
    if isinstance(raw, dict):
        stray = [k for k in raw if k not in names]
        if stray:
            raise SpectuneError(
                f"{source}: study.lr_grid.{stray[0]}: no variant {stray[0]!r} in the study "
                f"(variants: {', '.join(names)})"
            )
    grid_lr: dict[str, list[float]] = {}
    for name in names:
        rates = raw.get(name, [base_lr]) if isinstance(raw, dict) else raw
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
                f"or a mapping variant -> list (got {rates!r} for {name})"
            )
        grid_lr[name] = sorted(float(r) for r in rates)
        twice = [r for r, nxt in itertools.pairwise(grid_lr[name]) if r == nxt]
        if twice:
            raise SpectuneError(
                f"{source}: study.lr_grid lists rate {twice[0]:g} more than "
                f"once for {name}; list each rate once"
            )
    return grid_lr


def _variants(data: dict, source: str, base: dict | None, grid: dict) -> list[Variant]:
    """``study.variants`` (or the plain ``study.methods``), each checked."""
    if ("methods" in data) == ("variants" in data):
        raise SpectuneError(
            f"{source}: the study: block needs exactly one of study.methods (e.g. [lora, full]) "
            "and study.variants (name -> {method: ..., overrides...})"
        )
    registered = ", ".join(METHODS.names())
    if "methods" in data:
        methods = data["methods"]
        if not isinstance(methods, list) or not methods:
            raise SpectuneError(f"{source}: study.methods must list methods, e.g. [lora, full]")
        for m in methods:
            if m not in METHODS.names():
                raise SpectuneError(
                    f"{source}: study.methods: unknown method {m!r} (registered: {registered})"
                )
        return [Variant(m, m) for m in dict.fromkeys(methods)]
    block = data["variants"]
    if not isinstance(block, dict) or not block:
        raise SpectuneError(
            f"{source}: study.variants must map names to variants, e.g. "
            "{lora-r64: {method: lora, lora.r: 64}}"
        )
    out = []
    for name, body in block.items():
        where = f"{source}: study.variants.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SpectuneError(
                f"{source}: study.variants: {name!r} is not a variant name (letters, digits, "
                "_ . + and single dashes, e.g. lora-r64): it names run folders"
            )
        if not isinstance(body, dict) or "method" not in body:
            raise SpectuneError(f"{where} must be a mapping with a method, e.g. {{method: lora}}")
        body = dict(body)
        method = body.pop("method")
        if method not in METHODS.names():
            raise SpectuneError(
                f"{where}.method: unknown method {method!r} (registered: {registered})"
            )
        search = body.pop("search", None) or {}
        if not isinstance(search, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and v for k, v in search.items()
        ):
            raise SpectuneError(
                f"{where}.search must map dotted keys to lists of values, e.g. "
                "{lora.init: [default, pissa]}"
            )
        for key in [*body, *search]:
            if key in _STUDY_KEYS:
                raise SpectuneError(
                    f"{where}.{key}: the study sets {key} per run; use {_STUDY_KEYS[key]}"
                )
            if key in grid:
                raise SpectuneError(
                    f"{where}.{key}: study.grid varies {key} for every variant; drop one"
                )
        both = sorted(set(body) & set(search))
        if both:
            raise SpectuneError(f"{where}: {both[0]} is both set and searched; keep one")
        variant = Variant(name, method, body, {k: list(v) for k, v in search.items()})
        if base is not None:
            _check_overrides(variant, base, where)
        out.append(variant)
    return out


def overrides_of(settings: dict[str, Any]) -> list[str]:
    """``key=value`` items (JSON values) of dotted settings."""
    return [f"{k}={json.dumps(v)}" for k, v in settings.items()]


def _check_overrides(variant: Variant, base: dict, where: str) -> None:
    """The base config takes the variant's overrides and each searched value (else the
    config's own error after ``study.variants.<name>``)."""
    data = apply_overrides(base, [f"method={variant.method}", *overrides_of(variant.overrides)])
    TuneConfig.from_dict(data, source=where, foreign_sections="drop")
    for key, values in variant.search.items():
        for value in values:
            TuneConfig.from_dict(
                apply_overrides(data, overrides_of({key: value})),
                source=f"{where}.search",
                foreign_sections="drop",
            )


def split_study_config(
    data: dict[str, Any], source: str = "study config"
) -> tuple[dict, StudySpec]:
    """``(base run config data, StudySpec)`` of a study config's raw data."""
    if not isinstance(data, dict) or "study" not in data:
        raise SpectuneError(
            f"{source}: a study config needs a study: block (methods or variants, seeds, "
            "lr_grid...); see configs/study.yaml"
        )
    base = copy.deepcopy(data)
    block = base.pop("study")
    base_lr = TuneConfig.from_dict(
        base, source=source, foreign_sections="drop"
    ).training_arguments()["learning_rate"]
    return base, StudySpec.from_dict(block, base_lr, source, base)


# --------------------------------------------------------------------------- candidates


def short(v: Any) -> str:
    """A value as run folders name it (rates: :func:`rate_name`)."""
    return rate_name(v) if isinstance(v, float) else str(v)


def rate_name(lr: float) -> str:
    """A learning rate as run folders name it: ``0.001``, ``3e-05``; the exact value
    (``0.0010000001``) when six significant digits would give two rates one name."""
    short_ = f"{lr:g}"
    return short_ if float(short_) == lr else repr(float(lr))


@dataclass
class Candidate:
    """A variant at one grid point, its config resolved.

    Attributes:
        name: ``<variant>[-<grid suffix>]`` (runs are ``<name>-s<seed>``).
        variant: the variant's name.
        method: its method.
        point: the grid point (dotted key -> value).
        config: the run config (overrides applied, budget matched).
    """

    name: str
    variant: str
    method: str
    point: dict[str, Any]
    config: TuneConfig


def candidate_configs(base: dict[str, Any], spec: StudySpec) -> list[Candidate]:
    """Every variant at every grid point, at matched budgets when ``spec.match_budget``;
    a variant whose config is the same at two grid points runs once."""
    keys = list(spec.grid)
    out: list[Candidate] = []
    seen = set()
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        data = apply_overrides(base, overrides_of(point))
        named = [(v.name, v.method, overrides_of(v.overrides)) for v in spec.variants]
        configs = matched_configs(named, data, match=spec.match_budget, source="study")
        for variant, (name, config) in zip(spec.variants, configs, strict=True):
            key = (name, json.dumps(config.relevant(), sort_keys=True, default=str))
            if key in seen:
                continue
            seen.add(key)
            suffix = "".join(
                f"-{k.split('.')[-1]}{short(v)}" for k, v in point.items() if len(spec.grid[k]) > 1
            )
            if any(c.name == f"{name}{suffix}" for c in out):
                raise SpectuneError(
                    f"study.grid: two grid points get the run name {name}{suffix!r}; give "
                    "distinct values"
                )
            out.append(Candidate(f"{name}{suffix}", name, variant.method, point, config))
    return out


def study_plan(spec: StudySpec, candidates: list[Candidate]) -> StudyPlan:
    """What the study's question checks: each variant's config at the first grid point and
    its trainable count from the model's shapes."""
    firsts: dict[str, TuneConfig] = {}
    for c in candidates:
        firsts.setdefault(c.variant, c.config)
    return StudyPlan(
        variants=list(spec.variants),
        configs=firsts,
        trainable={name: trainable_count(config) for name, config in firsts.items()},
        seeds=list(spec.seeds),
        lr_grid={k: list(v) for k, v in spec.lr_grid.items()},
        lr_seeds=list(spec.lr_seeds),
        criterion=spec.criterion,
        grid={k: list(v) for k, v in spec.grid.items()},
        match_budget=spec.match_budget,
    )


__all__ = [
    "CRITERIA",
    "Candidate",
    "StudySpec",
    "candidate_configs",
    "overrides_of",
    "rate_name",
    "short",
    "split_study_config",
    "study_plan",
]
