"""Which method when: a recommendation from a measured table and the user's constraints.

:func:`advise` takes one :class:`Candidate` per method (or per method and setting), each with
its measured accuracy gain (per question and seed, for paired intervals), forgetting (the
relative perplexity increase on general text, per run), train time, inference ms/token and
peak memory, and the user's :class:`Constraints`. It

1. drops the candidates that break a constraint, saying which number broke which limit;
2. picks the one with the highest accuracy gain;
3. compares it with every other remaining candidate by a paired bootstrap on the same
   questions (:func:`spectune.results.stats.paired_difference`); those it does not beat
   beyond noise are *tied* with it: the data cannot separate them, and the advice says so;
4. among tied candidates, prefers less forgetting, then (with little data) fewer trainable
   parameters, then less training time, and says which rule decided.

:func:`load_candidates` reads them from a study, sweep or demo folder (``runs/*/metrics.json``
and ``predictions.jsonl``). The numbers used are in :attr:`Advice.table` and the text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectune._check import integer, number
from spectune.errors import SpectuneError
from spectune.results.metrics import RunMetrics
from spectune.results.stats import Difference, Interval, bootstrap_mean, bootstrap_runs
from spectune.results.stats import paired_difference as _paired

#: fewer training examples than this count as "little data" (a tie-break for fewer parameters)
LITTLE_DATA = 1000


@dataclass
class Constraints:
    """What the user can afford (None: no limit).

    Attributes:
        memory_gib: peak resident memory of training, GiB.
        max_train_s: training wall time, seconds.
        max_ms_per_token: inference latency of the tuned model, ms per generated token.
        max_forgetting: relative perplexity increase on general text (0.05 = 5%).
        n_train: training examples the user has (little data favours fewer parameters).
    """

    memory_gib: float | None = None
    max_train_s: float | None = None
    max_ms_per_token: float | None = None
    max_forgetting: float | None = None
    n_train: int | None = None

    def check(self) -> Constraints:
        """Raises SpectuneError naming the limit that is not a finite number in its range
        (NaN, infinite or negative limits are refused)."""
        for flag, value in (
            ("--memory-gib", self.memory_gib),
            ("--max-train-s", self.max_train_s),
            ("--max-ms-per-token", self.max_ms_per_token),
        ):
            if value is not None and number(flag, value) <= 0:
                raise SpectuneError(f"{flag} must be > 0, got {value!r}")
        if self.max_forgetting is not None:
            number("--max-forgetting", self.max_forgetting, nonnegative=True)
        if self.n_train is not None:
            integer("--n-train", self.n_train, minimum=1)
        return self

    def describe(self) -> str:
        parts = []
        if self.memory_gib is not None:
            parts.append(f"memory <= {self.memory_gib:g} GiB")
        if self.max_train_s is not None:
            parts.append(f"train time <= {self.max_train_s:g} s")
        if self.max_ms_per_token is not None:
            parts.append(f"latency <= {self.max_ms_per_token:g} ms/token")
        if self.max_forgetting is not None:
            parts.append(f"perplexity increase <= {100 * self.max_forgetting:g}%")
        if self.n_train is not None:
            parts.append(f"{self.n_train} training examples")
        return ", ".join(parts) or "no constraints"


@dataclass
class Candidate:
    """One method (or method and setting) as measured.

    Attributes:
        name: what the advice calls it ("lora", "lora r=16").
        method: the method.
        scores: per seed, the per-question accuracy gain (correct after - correct before,
            each -1, 0 or 1), the same questions for every candidate at that seed.
        forgetting: per run, the relative perplexity increase (ratio - 1).
        train_seconds / ms_per_token / peak_rss_gib / trainable: per-run means.
    """

    name: str
    method: str
    scores: dict[int, np.ndarray]
    forgetting: list[float] = field(default_factory=list)
    train_seconds: float | None = None
    ms_per_token: float | None = None
    peak_rss_gib: float | None = None
    trainable: int | None = None

    @property
    def runs(self) -> int:
        return len(self.scores)

    def gain(self, seed: int = 0) -> Interval | None:
        """Accuracy gain with its interval (over seeds and questions)."""
        if not self.scores:
            return None
        return bootstrap_runs([self.scores[k] for k in sorted(self.scores)], seed=seed)

    def forgetting_interval(self, seed: int = 0) -> Interval | None:
        """Relative perplexity increase; an interval over runs when there are several."""
        f = [x for x in self.forgetting if x is not None and math.isfinite(x)]
        if not f:
            return None
        if len(f) == 1:
            return Interval(f[0], f[0], f[0], n=1, runs=1, how="one run (no interval)")
        ci = bootstrap_mean(f, seed=seed)
        ci.runs, ci.how = len(f), f"bootstrap over {len(f)} runs"
        return ci

    def row(self) -> dict[str, Any]:
        g, f = self.gain(), self.forgetting_interval()
        return {
            "name": self.name,
            "method": self.method,
            "runs": self.runs,
            "accuracy_gain": None if g is None else g.estimate,
            "gain_low": None if g is None else g.low,
            "gain_high": None if g is None else g.high,
            "forgetting": None if f is None else f.estimate,
            "forgetting_low": None if f is None else f.low,
            "forgetting_high": None if f is None else f.high,
            "train_seconds": self.train_seconds,
            "ms_per_token": self.ms_per_token,
            "peak_rss_gib": self.peak_rss_gib,
            "trainable": self.trainable,
        }


@dataclass
class Advice:
    """The recommendation and what it rests on.

    Attributes:
        choice: the recommended candidate's name, None when none meets the constraints.
        decided: the data separate the choice from every other candidate (no tie).
        tied: candidates the data cannot separate from the best by accuracy gain.
        reasons: the explanation, one sentence each, with the numbers used.
        excluded: candidate -> the constraint it breaks.
        differences: paired differences of the best against the others.
        table: one row per candidate (the numbers used).
        constraints: what the user asked.
    """

    choice: str | None
    decided: bool
    tied: list[str]
    reasons: list[str]
    excluded: dict[str, str]
    differences: list[Difference]
    table: list[dict[str, Any]]
    constraints: Constraints

    def text(self) -> str:
        head = (
            f"Recommendation: {self.choice}"
            if self.choice is not None
            else "Recommendation: none of the measured candidates meets the constraints"
        )
        if self.choice is not None and not self.decided:
            head += f" (the data cannot separate it from {', '.join(self.tied)})"
        lines = [head, f"Constraints: {self.constraints.describe()}", ""]
        lines += [f"- {r}" for r in self.reasons]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "choice": self.choice,
            "decided": self.decided,
            "tied": self.tied,
            "reasons": self.reasons,
            "excluded": self.excluded,
            "differences": [d.to_dict() for d in self.differences],
            "table": self.table,
            "constraints": asdict(self.constraints),
            "text": self.text(),
        }


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _gain_text(ci: Interval | None) -> str:
    if ci is None:
        return "no accuracy measured"
    return f"accuracy gain {_pts(ci.estimate)} points [{_pts(ci.low)}, {_pts(ci.high)}]"


def _violations(c: Candidate, k: Constraints) -> list[str]:
    out = []
    checks = [
        (k.memory_gib, c.peak_rss_gib, "peak memory", "GiB", 1.0),
        (k.max_train_s, c.train_seconds, "train time", "s", 1.0),
        (k.max_ms_per_token, c.ms_per_token, "latency", "ms/token", 1.0),
    ]
    for limit, value, what, unit, _ in checks:
        if limit is None:
            continue
        if value is None:
            out.append(f"{what} was not measured (limit {limit:g} {unit})")
        elif value > limit:
            out.append(f"{what} {value:.3g} {unit} > {limit:g} {unit}")
    if k.max_forgetting is not None:
        f = c.forgetting_interval()
        if f is None:
            out.append("forgetting was not measured")
        elif f.estimate > k.max_forgetting:
            out.append(f"perplexity increase {100 * f.estimate:.1f}% > {100 * k.max_forgetting:g}%")
    return out


def paired_gain(a: Candidate, b: Candidate, *, seed: int = 0) -> Difference | None:
    """Paired bootstrap of ``a``'s accuracy gain minus ``b``'s on the seeds both ran (the same
    questions per seed); None when they share no seed with the same questions."""
    seeds = [
        s for s in sorted(a.scores) if s in b.scores and a.scores[s].shape == b.scores[s].shape
    ]
    if not seeds:
        return None
    return _paired(
        [a.scores[s] for s in seeds],
        [b.scores[s] for s in seeds],
        names=(a.name, b.name),
        seed=seed,
    )


def advise(candidates: Sequence[Candidate], constraints: Constraints | None = None) -> Advice:
    """Recommend a candidate under ``constraints``; see the module docstring for the rules.

    Raises:
        SpectuneError: no candidate at all.
    """
    k = (constraints or Constraints()).check()
    if not candidates:
        raise SpectuneError("advise: no measured runs to choose from")
    table = [c.row() for c in candidates]
    excluded = {c.name: "; ".join(v) for c in candidates if (v := _violations(c, k))}
    ok = [c for c in candidates if c.name not in excluded and c.scores]
    reasons = [f"{c} excluded: {why}" for c, why in excluded.items()]
    if not ok:
        reasons.append(
            "no candidate meets every constraint; relax one of them (the table "
            "has the measured numbers)"
        )
        return Advice(None, False, [], reasons, excluded, [], table, k)
    gains = {c.name: c.gain() for c in ok}
    best = max(ok, key=lambda c: gains[c.name].estimate)
    reasons.append(
        f"highest accuracy gain among the candidates left: {best.name}, "
        f"{_gain_text(gains[best.name])} ({gains[best.name].how})"
    )
    diffs, tied = [], []
    for c in ok:
        if c is best:
            continue
        d = paired_gain(best, c)
        if d is None:
            tied.append(c)
            reasons.append(
                f"{c.name} was judged on other questions than {best.name}: no "
                f"paired comparison, counted as not separated"
            )
            continue
        diffs.append(d)
        ci = d.interval
        if d.resolved:
            reasons.append(
                f"{best.name} beats {c.name} by {_pts(ci.estimate)} points "
                f"[{_pts(ci.low)}, {_pts(ci.high)}] (resolved: {ci.how})"
            )
        else:
            tied.append(c)
            reasons.append(
                f"{best.name} vs {c.name}: {_pts(ci.estimate)} points "
                f"[{_pts(ci.low)}, {_pts(ci.high)}]: within noise ({ci.how})"
            )
    choice = best
    if tied:
        group = [best, *tied]
        little = k.n_train is not None and k.n_train < LITTLE_DATA

        def forget(c: Candidate) -> float:
            f = c.forgetting_interval()
            return math.inf if f is None else f.estimate

        def key(c: Candidate) -> tuple[float, ...]:
            params = float(c.trainable) if little and c.trainable is not None else 0.0
            return (round(forget(c), 4), params, c.train_seconds or math.inf)

        choice = min(group, key=key)
        names = ", ".join(c.name for c in group)
        rule = "less forgetting"
        if len({round(forget(c), 4) for c in group}) == 1:
            rule = "fewer trainable parameters (little data)" if little else "less training time"
        f = choice.forgetting_interval()
        ftxt = "" if f is None else f", perplexity increase {100 * f.estimate:.1f}%"
        reasons.append(
            f"the data cannot separate {names} by accuracy; among them "
            f"{choice.name} wins on {rule}{ftxt}, train time "
            f"{choice.train_seconds or float('nan'):.0f} s"
        )
        if little:
            reasons.append(
                f"with {k.n_train} training examples (< {LITTLE_DATA}), fewer "
                "trainable parameters are preferred between candidates the data "
                "cannot separate"
            )
    tied_names = [c.name for c in [best, *tied] if c is not choice]
    return Advice(choice.name, not tied, tied_names, reasons, excluded, diffs, table, k)


# --------------------------------------------------------------------------- reading folders


def read_predictions(run_dir: Path) -> np.ndarray | None:
    """Per-question accuracy gain of a run (correct after - before; after alone when the
    base was not judged), from ``predictions.jsonl``; None when the file is missing.

    Raises:
        SpectuneError: the file cannot be read, or a line is not a JSON object whose
            ``correct_after`` / ``correct_before`` are true, false or null (file and line
            named).
    """
    path = run_dir / "predictions.jsonl"
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpectuneError(
            f"{path} cannot be read ({exc}); re-run the run or move it out of the folder"
        ) from None
    out = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SpectuneError(
                f"{path}:{line_number}: not JSON ({exc}); the predictions are "
                "damaged: re-run the run or move it out of the folder"
            ) from None
        marks = (
            [row.get(k) for k in ("correct_after", "correct_before")]
            if isinstance(row, dict)
            else None
        )
        if marks is None or any(m is not None and not isinstance(m, bool) for m in marks):
            raise SpectuneError(
                f"{path}:{line_number}: expected a JSON object whose correct_after "
                "and correct_before are true or false; the predictions are "
                "damaged: re-run the run or move it out of the folder"
            )
        after = float(bool(row.get("correct_after")))
        before = float(bool(row.get("correct_before"))) if "correct_before" in row else 0.0
        out.append(after - before)
    return np.array(out)


def _group_key(metrics: Any) -> tuple[str, str]:
    settings = {k: v for k, v in sorted(metrics.settings.items()) if k != "seed"}
    train = metrics.config.get("train", {}) if isinstance(metrics.config, dict) else {}
    settings["lr"] = train.get("learning_rate")
    settings["steps"] = train.get("max_steps")
    return metrics.run.method, json.dumps(settings, sort_keys=True, default=str)


#: the group key of a study's run by its candidate (not JSON: never a sweep's settings)
_CANDIDATE = "candidate:"


def _study_candidates(folder: Path) -> dict[str, str]:
    """Run folder name -> ``candidate:<name>`` of a study with variants named apart from
    their methods (several can share a method and its headline settings); empty otherwise
    (grouped by method and settings, as before variants)."""
    try:
        data = json.loads((folder / "study.json").read_text(encoding="utf-8"))
        if all(v["name"] == v["method"] for v in data.get("variants") or []):
            return {}
        return {r["name"]: _CANDIDATE + r["candidate"] for r in data["runs"] if r.get("candidate")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def load_candidates(folder: str | Path, *, runs_dir: str = "runs") -> list[Candidate]:
    """One :class:`Candidate` per method and setting from a study, sweep or demo folder
    (runs that differ only in their seed are pooled).

    Raises:
        SpectuneError: the folder holds no finished run, or a run's metrics.json or
            predictions.jsonl is damaged (the file named; null numbers are "not measured").
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SpectuneError(f"{folder} does not exist: pass a study, sweep or demo folder")
    run_dirs = sorted(p.parent for p in (folder / runs_dir).glob("*/metrics.json"))
    if not run_dirs:
        raise SpectuneError(
            f"{folder} holds no finished run ({runs_dir}/*/metrics.json); "
            "pass a study, sweep or demo folder"
        )
    groups: dict[tuple[str, str], list[tuple[Path, Any]]] = {}
    named = _study_candidates(folder)
    for d in run_dirs:
        m = RunMetrics.load(d)
        key = _group_key(m) if d.name not in named else (m.run.method, named[d.name])
        groups.setdefault(key, []).append((d, m))
    seen: dict[str, list[dict[str, Any]]] = {}
    for method, settings in groups:
        if not settings.startswith(_CANDIDATE):
            seen.setdefault(method, []).append(json.loads(settings))
    out = []
    for (method, settings), runs in groups.items():
        if settings.startswith(_CANDIDATE):
            name = settings[len(_CANDIDATE) :]
        else:
            s = json.loads(settings)
            varying = [k for k in s if len({json.dumps(o.get(k)) for o in seen[method]}) > 1]
            name = " ".join(
                [
                    method,
                    *(
                        f"{k}={s[k]:g}" if isinstance(s[k], float) else f"{k}={s[k]}"
                        for k in varying
                    ),
                ]
            )
        scores: dict[int, np.ndarray] = {}
        for d, m in runs:
            p = read_predictions(d)
            if p is not None:
                scores[m.run.seed] = p
        forgetting = [
            m.forgetting.perplexity_ratio - 1
            for _, m in runs
            if m.forgetting.perplexity_ratio is not None
        ]

        def mean(values: list[Any]) -> float | None:
            """The mean of the measured values (null or non-finite: not measured)."""
            v = [float(x) for x in values if x is not None and math.isfinite(x)]
            return float(np.mean(v)) if v else None

        rss = mean([m.cost.peak_rss_bytes for _, m in runs])
        trainable = mean([m.cost.trainable for _, m in runs])
        out.append(
            Candidate(
                name,
                method,
                scores,
                forgetting,
                train_seconds=mean([m.cost.train_seconds for _, m in runs]),
                ms_per_token=mean([m.cost.ms_per_token for _, m in runs]),
                peak_rss_gib=None if rss is None else rss / 2**30,
                trainable=None if trainable is None else int(trainable),
            )
        )
    return out


__all__ = [
    "LITTLE_DATA",
    "Advice",
    "Candidate",
    "Constraints",
    "advise",
    "load_candidates",
    "paired_gain",
    "read_predictions",
]
