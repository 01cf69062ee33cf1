"""The space, the objectives and the sampler of a search (:mod:`spectune.studies.search`).

- :func:`parse_space`: ``key=spec`` items to :class:`Param` dimensions (``a,b,c``
  categorical; ``low..high`` uniform, ``:log`` on a log scale, ``:step=S`` on a grid);
- :func:`parse_objectives`: names of run metrics (:data:`OBJECTIVES`) to :class:`Objective`
  objects with their directions, and :func:`objective_values`, a finished run's values;
- :func:`make_sampler`: the seeded Optuna sampler (:data:`SAMPLERS`), and the seed a resumed
  search starts it from (:func:`resumed_seed`).

Optuna is an optional extra: only :func:`make_sampler` needs it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from spectune._check import choice, integer
from spectune.errors import SpectuneError
from spectune.results.metrics import RunMetrics
from spectune.studies.backends import TrialFailed
from spectune.studies.sweep import parse_grid
from spectune.tuning.config import parse_value

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
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
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
        extra = (
            [self.kind]
            + (["log"] if self.log else [])
            + ([f"step {self.step:g}"] if self.step else [])
        )
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
    params: list[Param] = []
    for item in items:
        key, sep, spec = item.partition("=")
        key = _ALIASES.get(key.strip(), key.strip())
        if not sep or not key or not spec.strip():
            raise SpectuneError(
                f"--space item {item!r} is not key=a,b,c or key=low..high[:log] "
                "(e.g. r=4,8,16 or learning_rate=1e-5..1e-3:log)"
            )
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
                    raise SpectuneError(
                        f"--space item {item!r}: unknown option {opt!r} (options: log, step=S)"
                    )
            if not lo < hi:
                raise SpectuneError(
                    f"--space item {item!r}: the low bound must be below the high "
                    "one (one value: give it as an override key=value)"
                )
            if log and step is not None:
                raise SpectuneError(f"--space item {item!r}: log and step exclude each other")
            if log and lo <= 0:
                raise SpectuneError(f"--space item {item!r}: a log range needs a low bound > 0")
            is_int = all(isinstance(v, int) for v in (lo, hi, step) if v is not None)
            params.append(
                Param(
                    key,
                    "int" if is_int else "float",
                    lo,
                    hi,
                    log,
                    step if step is None or not is_int else int(step),
                )
            )
            continue
        values = parse_grid([f"{key}={spec}"])[key]
        if len(values) < 2:
            raise SpectuneError(
                f"--space item {item!r} has one value: give it as an override "
                f"({key}={spec}) or list several (key=a,b)"
            )
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
            raise SpectuneError(
                f"--objectives: unknown objective {name!r} (known: {', '.join(OBJECTIVES)})"
            )
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
        raise TrialFailed(
            f"the run measured no {', '.join(missing)} (check its eval settings: "
            "eval.before judges the base model, eval.ppl_chars the general text)"
        )
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
    import optuna  # an optional extra

    choice("--sampler", name, SAMPLERS)
    if population is not None:
        if name != "nsga2":
            raise SpectuneError(
                "--population is NSGA-II's generation size: it goes with --sampler nsga2"
            )
        integer("--population", population, minimum=2)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population or 50, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    ranges = [p.key for p in params if p.kind != "categorical"]
    if ranges:
        raise SpectuneError(
            f"--sampler grid tries every combination of categorical values; "
            f"{', '.join(ranges)} is a range (list its values: key=a,b,c)"
        )
    return _GridSampler({p.key: p._encoded() for p in params}, seed=seed)


def resumed_seed(seed: int, n_trials: int) -> int:
    """The sampler's seed when a search resumes with ``n_trials`` in its storage: a seeded
    sampler started again from ``seed`` would propose the points it proposed first."""
    return int(hashlib.sha256(f"spectune-search:{seed}:{n_trials}".encode()).hexdigest()[:8], 16)


def grid_size(params: Sequence[Param]) -> int:
    """How many combinations a categorical space has."""
    return math.prod(len(p.choices) for p in params)


__all__ = [
    "DEFAULT_SPACE",
    "OBJECTIVES",
    "SAMPLERS",
    "Objective",
    "Param",
    "grid_size",
    "make_sampler",
    "objective_values",
    "parse_objectives",
    "parse_space",
    "resumed_seed",
]
