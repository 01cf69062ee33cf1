"""The typed results of a run: :class:`RunMetrics`, the one reader and writer of ``metrics.json``.

``metrics.json`` is :meth:`RunMetrics.to_dict` as JSON; :meth:`RunMetrics.load` reads it back
into the same types. Everything that shows a run (the HTML report, the sweep's tables, the
CLI) reads a :class:`RunMetrics`, never the raw keys.

Sections::

    schema_version   2 (a file without it was written by spectune 0.1.0's first layout, 1)
    run              RunInfo: name, method, objective, model, seed, device, processes...
    config           the resolved config (plain data, as in config.yaml)
    settings         the method's headline settings (r, lora_alpha... / frog_budget)
    data             where the data came from, how it was tokenized
    before, after    Judging: accuracy, held-out loss, perplexity, latency, general-text
                     cross-entropy, lm-eval harness scores (+ objective extras)
    learning         Learning: accuracy before / after / gain, held-out loss before / after
    forgetting       Forgetting: perplexity on general text before / after / change / ratio;
                     peft's forgetting (general-text cross-entropy after minus before)
    cost             Cost: train time, tokens/s, peak RSS, trainable parameters, adapter bytes
    training         Training: first / final loss, steps, epochs, per-device / global batch
    validation       Validation: the validation-loss curve, best step, the adapter's step,
                     early stopping (None without data.n_validation)
    spectra_curve    SpectraPoint per analysis during training (eval.spectra_every_steps)
    spectra          SpectraSummary of the adapter (or delta) spectra, or None
    method_extras    what the method reports (FROG: its plan)
    objective_extras what the objective reports
    notes            things the user should know

Version 1 files (no ``schema_version``; FROG's plan under ``frog``) load into the same types.
A file from a newer schema is refused with a message naming the version that wrote it. Fields
added since (the accuracy intervals, ``validation``, ``spectra_curve``) are optional: files
without them load with None / empty values, and older readers ignore them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune._io import write_json
from spectune.errors import SpectuneError
from spectune.judging.accuracy import AccuracyResult
from spectune.judging.forgetting import CrossEntropyResult, PerplexityResult
from spectune.judging.harness import HarnessResult
from spectune.judging.latency import LatencyResult
from spectune.judging.loss import LossResult
from spectune.results.stats import Interval, bootstrap_mean

if TYPE_CHECKING:
    from collections.abc import Sequence

SCHEMA_VERSION = 2
METRICS = "metrics.json"


#: field types that hold a number (null reads as "not measured": the report shows a dash)
_NUMBERS = {"int", "float", "int | None", "float | None"}


def _check_shapes(obj: Any, where: str) -> None:
    """Fields declared as mappings, lists or numbers must hold one, or null for a number (JSON
    from elsewhere may not: a ``"peak_rss_bytes": "big"`` is refused here, not divided
    later)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = str(f.type)
        if kind.startswith("dict") and not isinstance(value, dict):
            raise ValueError(f"{where}.{f.name} must be a mapping, got {type(value).__name__}")
        if kind.startswith("list") and not isinstance(value, list):
            raise ValueError(f"{where}.{f.name} must be a list, got {type(value).__name__}")
        if kind in _NUMBERS and not (
            value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        ):
            raise ValueError(
                f"{where}.{f.name} must be a number, got {type(value).__name__} {str(value)[:40]!r}"
            )
        if hasattr(value, "__dataclass_fields__"):
            _check_shapes(value, f"{where}.{f.name}")


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are fields of ``cls`` (older files may hold fewer)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class RunInfo:
    """Who ran what, where."""

    name: str
    method: str
    objective: str = "sft"
    model: str = ""
    model_dir: str = ""
    seed: int = 0
    device: str = ""
    threads: int = 0
    world_size: int = 1
    resumed: bool = False
    started: str | None = None
    merged: str | None = None
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Judging:
    """Every measurement of one model (the base before training, or the tuned one).

    Attributes:
        accuracy: held-out exact match (without the predictions, in ``predictions.jsonl``).
        heldout_loss: NLL of the held-out reference answers.
        perplexity: perplexity on general text (forgetting).
        latency: generation speed, None when skipped.
        seconds: wall time of each measurement.
        model: what was judged ("base model, float32"), when it is not the tuned model.
        extras: the objective's own metrics.
        general_ce: mean token cross-entropy on general-text documents (peft's forgetting
            loss, :func:`spectune.judging.forgetting.general_ce`), None when not measured.
        harness: lm-eval task scores (``eval.harness``), None when not run.
    """

    accuracy: AccuracyResult
    heldout_loss: LossResult
    perplexity: PerplexityResult
    latency: LatencyResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    general_ce: CrossEntropyResult | None = None
    harness: HarnessResult | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Judging:
        acc = dict(data["accuracy"])
        acc.setdefault("predictions", [])
        return cls(
            accuracy=AccuracyResult(**_known(AccuracyResult, acc)),
            heldout_loss=LossResult(**_known(LossResult, data["heldout_loss"])),
            perplexity=PerplexityResult(**_known(PerplexityResult, data["perplexity"])),
            latency=None
            if not data.get("latency")
            else LatencyResult(**_known(LatencyResult, data["latency"])),
            seconds=data.get("seconds", {}),
            model=data.get("model"),
            extras=data.get("extras", {}),
            general_ce=None
            if not data.get("general_ce")
            else CrossEntropyResult(**_known(CrossEntropyResult, data["general_ce"])),
            harness=None if not data.get("harness") else HarnessResult.from_dict(data["harness"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy.to_dict(predictions=False),
            "heldout_loss": self.heldout_loss.to_dict(),
            "perplexity": self.perplexity.to_dict(),
            "latency": None if self.latency is None else self.latency.to_dict(),
            "seconds": self.seconds,
            "model": self.model,
            "extras": self.extras,
            "general_ce": None if self.general_ce is None else self.general_ce.to_dict(),
            "harness": None if self.harness is None else self.harness.to_dict(),
        }


def _interval(data: Any) -> Interval | None:
    return None if not isinstance(data, dict) else Interval(**_known(Interval, data))


@dataclass
class Learning:
    """What the run learned: held-out accuracy and loss, before and after.

    ``accuracy_*_interval``: the 95% percentile bootstrap interval of the accuracy over the
    held-out questions (:func:`spectune.results.stats.bootstrap_mean`, seed 0, on the
    per-question results of ``predictions.jsonl``); one run is one seed, so it says nothing
    about the spread over seeds.
    """

    accuracy_before: float | None
    accuracy_after: float
    accuracy_gain: float | None
    heldout_loss_before: float | None
    heldout_loss_after: float
    accuracy_before_interval: Interval | None = None
    accuracy_after_interval: Interval | None = None

    @classmethod
    def compare(
        cls,
        before: Judging | None,
        after: Judging,
        *,
        correct_before: Sequence[bool] | None = None,
        correct_after: Sequence[bool] | None = None,
    ) -> Learning:
        """From the two judgings; ``correct_*``: the per-question results (for the
        intervals)."""

        def interval(correct: Sequence[bool] | None) -> Interval | None:
            return bootstrap_mean([float(c) for c in correct]) if correct else None

        acc0 = None if before is None else before.accuracy.accuracy
        return cls(
            accuracy_before=acc0,
            accuracy_after=after.accuracy.accuracy,
            accuracy_gain=None if acc0 is None else after.accuracy.accuracy - acc0,
            heldout_loss_before=None if before is None else before.heldout_loss.loss,
            heldout_loss_after=after.heldout_loss.loss,
            accuracy_before_interval=None if before is None else interval(correct_before),
            accuracy_after_interval=interval(correct_after),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Learning:
        d = _known(cls, data)
        for key in ("accuracy_before_interval", "accuracy_after_interval"):
            d[key] = _interval(d.get(key))
        return cls(**d)


@dataclass
class Forgetting:
    """What the run forgot: perplexity on general text, before and after; and forgetting as
    peft's method comparison defines it.

    ``forgetting_ce`` is peft's ``forgetting``: the mean token cross-entropy (nats) on fixed
    general-text documents after training minus before (``general_ce_after -
    general_ce_before``; positive: worse on general text). peft scores 100 finewiki articles
    at up to 768 tokens, spectune ``eval.ce_samples`` Python help topics at up to
    ``eval.ce_tokens`` tokens (:func:`spectune.judging.forgetting.general_ce`): the definition
    and sign agree, the texts do not. None where it was not measured.
    """

    perplexity_before: float | None
    perplexity_after: float
    perplexity_change: float | None
    perplexity_ratio: float | None
    general_ce_before: float | None = None
    general_ce_after: float | None = None
    forgetting_ce: float | None = None

    @classmethod
    def compare(cls, before: Judging | None, after: Judging) -> Forgetting:
        p0 = None if before is None else before.perplexity.perplexity
        p1 = after.perplexity.perplexity
        c0 = (
            None if before is None or before.general_ce is None else before.general_ce.cross_entropy
        )
        c1 = None if after.general_ce is None else after.general_ce.cross_entropy
        return cls(
            p0,
            p1,
            None if p0 is None else p1 - p0,
            None if p0 is None else p1 / p0,
            general_ce_before=c0,
            general_ce_after=c1,
            forgetting_ce=None if c0 is None or c1 is None else c1 - c0,
        )


@dataclass
class Cost:
    """What the run cost.

    ``train_seconds`` counts training across resumes (the time up to the checkpoint resumed
    from, plus this session); ``tokens`` and ``tokens_per_second`` are this session's.
    """

    train_seconds: float
    train_seconds_this_session: float
    steps: int
    tokens: int
    tokens_per_second: float | None
    peak_rss_bytes: int
    peak_rss_exact: bool
    trainable: int
    total: int
    trainable_percent: float
    adapter_bytes: int
    ms_per_token: float | None = None
    ms_per_token_before: float | None = None
    #: positions of the padded batches trained on (real tokens and padding), this session
    positions: int | None = None
    #: training products done, in FLOP (:mod:`spectune.models.flops`), this session
    train_flops: float | None = None
    #: this machine's GEMM rate on the run's own layer shapes (FLOP/s)
    gemm_flops_per_second: float | None = None
    #: ``train.torch_compile``: seconds of compiling within the training time (the first
    #: step's time beyond the median step); None when not compiled
    compile_seconds: float | None = None
    #: wall seconds of the run's phases this session (data, judge_before, build, train, save,
    #: judge_tuned, watch; not the report that writes this file): where the time went
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def padded_fraction(self) -> float | None:
        """The share of the trained positions that were padding."""
        if not self.positions:
            return None
        return 1.0 - self.tokens / self.positions

    @property
    def flops_per_second(self) -> float | None:
        """Training FLOP per second of this session's training time."""
        if self.train_flops is None or not self.train_seconds_this_session:
            return None
        return self.train_flops / self.train_seconds_this_session

    @property
    def utilisation(self) -> float | None:
        """:attr:`flops_per_second` over the machine's GEMM rate on the same shapes."""
        fps = self.flops_per_second
        if fps is None or not self.gemm_flops_per_second:
            return None
        return fps / self.gemm_flops_per_second


@dataclass
class Training:
    """The training loss curve's ends, and the batch each optimizer step saw.

    ``global_batch`` = ``per_device_batch`` x gradient accumulation steps x processes
    (``run.world_size``); None in files written before it was recorded.
    """

    first_loss: float | None
    final_loss: float | None
    global_step: int
    epochs: float | None
    per_device_batch: int | None = None
    global_batch: int | None = None
    #: "padding_free", "length_grouped" or "padded" (``data.batching``); None: written before
    batching: str | None = None


@dataclass
class ValidationPoint:
    """The validation loss at one step (a row of ``validation_log.csv``)."""

    step: int
    loss: float
    epoch: float | None = None
    seconds: float | None = None


@dataclass
class Validation:
    """Validation during training (``data.n_validation``).

    Attributes:
        n_examples: validation examples (carved from the training data, seeded; disjoint from
            the training and held-out examples).
        strategy: when it was evaluated (``train.eval_strategy``: "steps" or "epoch").
        every_steps: ``train.eval_steps`` (None for "epoch"); also at the last step.
        loss: what was measured: the objective's loss, batch means weighted by batch size.
        curve: the validation loss at every evaluation.
        best_step / best_loss: the evaluation with the lowest loss (the first of equals).
        adapter_step: the step whose weights the saved adapter holds.
        restored_best: the adapter is the best step's (``load_best_model_at_end``), restored
            from its checkpoint after training.
        early_stopping_patience / early_stopping_threshold: the early-stopping rule, or None.
        stopped_early: training stopped before ``max_steps`` because the loss stopped improving.
        seconds: time spent evaluating (inside the train time).
    """

    n_examples: int
    strategy: str
    every_steps: int | None
    curve: list[ValidationPoint] = field(default_factory=list)
    best_step: int | None = None
    best_loss: float | None = None
    adapter_step: int | None = None
    restored_best: bool = False
    early_stopping_patience: int | None = None
    early_stopping_threshold: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    loss: str = "the objective's loss, batch means weighted by batch size"

    @property
    def adapter_loss(self) -> float | None:
        """The validation loss of the step the adapter holds."""
        return next((p.loss for p in self.curve if p.step == self.adapter_step), None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Validation:
        d = _known(cls, data)
        d["curve"] = [ValidationPoint(**_known(ValidationPoint, p)) for p in d.get("curve", [])]
        return cls(**d)


@dataclass
class SpectraPoint:
    """The adapter's spectra at one step during training (``eval.spectra_every_steps``).

    Attributes:
        step: the optimizer step.
        mean_alpha: mean power-law alpha of the fitted matrices (None when none fitted).
        frac_alpha_below_2: fraction of the fitted matrices with alpha < 2.
        n_layers: matrices analyzed; n_fitted: those with a fitted alpha.
        seconds: time the analysis took (inside the train time).
    """

    step: int
    mean_alpha: float | None
    frac_alpha_below_2: float | None
    n_layers: int
    n_fitted: int
    seconds: float | None = None


@dataclass
class SpectraSummary:
    """Means over the adapter's (or delta's) fitted matrices, and counts."""

    n_layers: int | None = None
    n_analyzed: int | None = None
    alpha: float | None = None
    alpha_weighted: float | None = None
    log_norm: float | None = None
    stable_rank: float | None = None
    base_alpha: float | None = None
    rank90: float | None = None
    num_intruders: int | None = None
    layers_with_intruders: int | None = None
    n_overparameterized: int | None = None
    n_base_overparameterized: int | None = None
    n_overfit_adapters: int | None = None
    n_collapsed: int | None = None
    n_flow_bent: int | None = None
    status_counts: dict[str, int] = field(default_factory=dict)
    warning_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> SpectraSummary:
        """From :func:`spectune.watch.summarize`'s dict (other keys ignored)."""
        data = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in _known(cls, summary).items()
        }  # JSON has no NaN
        data.setdefault("status_counts", {})
        data.setdefault("warning_counts", {})
        return cls(**data)


@dataclass
class RunMetrics:
    """Everything a run measured (``metrics.json``); see the module docstring."""

    run: RunInfo
    config: dict[str, Any]
    data: dict[str, Any]
    before: Judging | None
    after: Judging
    learning: Learning
    forgetting: Forgetting
    cost: Cost
    training: Training
    spectra: SpectraSummary | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    method_extras: dict[str, Any] = field(default_factory=dict)
    objective_extras: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    validation: Validation | None = None
    spectra_curve: list[SpectraPoint] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    # -- serialization -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the content of ``metrics.json``)."""
        return {
            "schema_version": self.schema_version,
            "run": asdict(self.run),
            "config": self.config,
            "settings": self.settings,
            "data": self.data,
            "before": None if self.before is None else self.before.to_dict(),
            "after": self.after.to_dict(),
            "learning": asdict(self.learning),
            "forgetting": asdict(self.forgetting),
            "cost": {
                **asdict(self.cost),  # and the figures derived from it, for readers of the file
                "padded_fraction": self.cost.padded_fraction,
                "flops_per_second": self.cost.flops_per_second,
                "utilisation": self.cost.utilisation,
            },
            "training": asdict(self.training),
            "validation": None if self.validation is None else asdict(self.validation),
            "spectra_curve": [asdict(p) for p in self.spectra_curve],
            "spectra": None if self.spectra is None else asdict(self.spectra),
            "method_extras": self.method_extras,
            "objective_extras": self.objective_extras,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = METRICS) -> RunMetrics:
        """Read :meth:`to_dict` output, or a version-1 file.

        Raises:
            SpectuneError: a newer or unknown schema version, or a file missing a section.
        """
        if not isinstance(data, dict):
            raise SpectuneError(f"{source}: not a spectune metrics file (a JSON object expected)")
        version = data.get("schema_version", 1)
        run = data.get("run") if isinstance(data.get("run"), dict) else {}
        versions = run.get("versions") if isinstance(run.get("versions"), dict) else {}
        writer = versions.get("spectune") or run.get("spectune") or "an unknown version"
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise SpectuneError(
                f"{source} has metrics schema version {version!r} (written by spectune "
                f"{writer}); this spectune reads versions 1 to {SCHEMA_VERSION}: upgrade "
                "spectune, or re-run the run with this one"
            )
        try:
            metrics = cls._from_v2(_upgrade_v1(data) if version == 1 else data)
            _check_shapes(metrics, "metrics")
            return metrics
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SpectuneError(
                f"{source}: metrics of schema version {version} (written by spectune {writer}) "
                f"are incomplete or damaged ({type(exc).__name__}: {exc}); re-run the run "
                "(spectune tune --overwrite) to write them anew"
            ) from None

    @classmethod
    def _from_v2(cls, d: dict[str, Any]) -> RunMetrics:
        return cls(
            run=RunInfo(**_known(RunInfo, d["run"])),
            config=d["config"],
            settings=d.get("settings", {}),
            data=d.get("data", {}),
            before=None if d.get("before") is None else Judging.from_dict(d["before"]),
            after=Judging.from_dict(d["after"]),
            learning=Learning.from_dict(d["learning"]),
            forgetting=Forgetting(**_known(Forgetting, d["forgetting"])),
            cost=Cost(**_known(Cost, d["cost"])),
            training=Training(**_known(Training, d["training"])),
            validation=None
            if d.get("validation") is None
            else Validation.from_dict(d["validation"]),
            spectra_curve=[
                SpectraPoint(**_known(SpectraPoint, p)) for p in d.get("spectra_curve") or []
            ],
            spectra=None if d.get("spectra") is None else SpectraSummary.from_summary(d["spectra"]),
            method_extras=d.get("method_extras", {}),
            objective_extras=d.get("objective_extras", {}),
            notes=d.get("notes", []),
            schema_version=SCHEMA_VERSION,
        )

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> RunMetrics:
        """The metrics of the run in ``folder`` (its ``metrics.json``).

        Raises:
            SpectuneError: no metrics file, unreadable JSON, or an unknown schema version.
        """
        path = Path(folder) / METRICS
        if not path.is_file():
            raise SpectuneError(f"{path} does not exist: {folder} holds no finished spectune run")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SpectuneError(f"{path} cannot be read as JSON: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``metrics.json`` into ``folder`` atomically; returns its path."""
        path = Path(folder) / METRICS
        write_json(path, self.to_dict())
        return path

    # -- views ---------------------------------------------------------------------------

    def harness_rows(self) -> list[dict[str, Any]]:
        """The lm-eval scores before and after: one ``{"task", "metric", "before", "after",
        "change", "stderr_before", "stderr_after"}`` per task metric (empty without
        ``eval.harness``); before and its stderr are None without a judged base."""
        after = self.after.harness
        if after is None:
            return []
        before = None if self.before is None else self.before.harness
        rows = []
        for task, metrics in after.scores.items():
            for metric, score in metrics.items():
                b = {} if before is None else before.scores.get(task, {}).get(metric, {})
                v0, v1 = b.get("value"), score.get("value")
                rows.append(
                    {
                        "task": task,
                        "metric": metric,
                        "before": v0,
                        "after": v1,
                        "change": None if v0 is None or v1 is None else v1 - v0,
                        "stderr_before": b.get("stderr"),
                        "stderr_after": score.get("stderr"),
                    }
                )
        return rows

    def row(self) -> dict[str, Any]:
        """One flat row (results.csv of sweeps and the demo); with ``eval.harness`` a column
        ``harness_<task>_<metric>_<before|after|change>`` per lm-eval score
        (:meth:`harness_rows`)."""
        spectra = self.spectra or SpectraSummary()
        return {
            "name": self.run.name,
            "method": self.run.method,
            "objective": self.run.objective,
            **self.settings,
            "trainable": self.cost.trainable,
            "trainable_percent": self.cost.trainable_percent,
            "train_loss": self.training.final_loss,
            "accuracy_before": self.learning.accuracy_before,
            "accuracy_after": self.learning.accuracy_after,
            "accuracy_after_low": None
            if (ci := self.learning.accuracy_after_interval) is None
            else ci.low,
            "accuracy_after_high": None if ci is None else ci.high,
            "heldout_loss_after": self.learning.heldout_loss_after,
            "validation_loss": None if self.validation is None else self.validation.adapter_loss,
            "perplexity_before": self.forgetting.perplexity_before,
            "perplexity_after": self.forgetting.perplexity_after,
            "perplexity_change": self.forgetting.perplexity_change,
            "general_ce_before": self.forgetting.general_ce_before,
            "general_ce_after": self.forgetting.general_ce_after,
            "forgetting_ce": self.forgetting.forgetting_ce,
            "train_seconds": self.cost.train_seconds,
            "tokens_per_second": self.cost.tokens_per_second,
            "padded_fraction": self.cost.padded_fraction,
            "utilisation": self.cost.utilisation,
            "peak_rss_mib": self.cost.peak_rss_bytes / 2**20,
            "adapter_mib": self.cost.adapter_bytes / 2**20,
            "ms_per_token": self.cost.ms_per_token,
            "adapter_alpha": spectra.alpha,
            "base_alpha": spectra.base_alpha,
            "num_intruders": spectra.num_intruders,
            "n_base_overparameterized": spectra.n_base_overparameterized,
            "n_overfit_adapters": spectra.n_overfit_adapters,
            "n_collapsed": spectra.n_collapsed,
            "n_flow_bent": spectra.n_flow_bent,
            **{
                f"harness_{r['task']}_{r['metric']}_{when}": r[when]
                for r in self.harness_rows()
                for when in ("before", "after", "change")
            },
        }


def _upgrade_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A version-1 ``metrics.json`` (spectune 0.1.0's first layout) in the version-2 layout."""
    out = dict(d)
    run = dict(d["run"])
    run["versions"] = {
        k: run.pop(k)
        for k in list(run)
        if k in ("python", "spectune", "torch", "transformers", "peft", "bitsandbytes")
    }
    run.setdefault("objective", "sft")
    out["run"] = run
    out["method_extras"] = dict(d.get("frog") or {})
    config = d.get("config") or {}
    settings: dict[str, Any] = {}
    if run.get("method") in ("lora", "rslora", "dora", "qlora", "qdora"):  # v1 knew only these
        settings = {k: config.get(k) for k in ("r", "lora_alpha", "lora_dropout")}
    if d.get("frog"):
        settings = {"frog_budget": d["frog"].get("budget")}
    out["settings"] = settings
    return out


__all__ = [
    "METRICS",
    "SCHEMA_VERSION",
    "Cost",
    "Forgetting",
    "Judging",
    "Learning",
    "RunInfo",
    "RunMetrics",
    "SpectraPoint",
    "SpectraSummary",
    "Training",
    "Validation",
    "ValidationPoint",
]
