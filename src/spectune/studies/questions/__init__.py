"""Questions a preset study answers: a published finding, measured again on your model.

A study config may name one question (``study.question: lr-ratio``). The question is a
registered plug-in, one module each, like a method:

==============  ==========================================================================
question        what it asks (published answer)
==============  ==========================================================================
lr-ratio        LoRA's best learning rate over full fine-tuning's, at several ranks (about
                10x, nearly independent of rank: "LoRA Without Regret", 2025)
targets         attention-only vs MLP-only vs all-linear LoRA at one trainable count
                (attention-only loses: "LoRA Without Regret")
batch           LoRA against full fine-tuning as the effective batch grows at matched tokens
                (LoRA's gap grows with the batch: "LoRA Without Regret")
update-rank     rank that holds 90% of the update's energy, full fine-tuning vs LoRA, per
                matrix type (full's is 10-100x a typical LoRA rank: Biderman et al. 2024)
peers           the strongest methods at matched budgets: learning vs forgetting, the Pareto
                front (OFT's front is the most favourable: PEFT-Arena, 2026)
==============  ==========================================================================

A question has two hooks:

- :meth:`Question.check` sees the study's :class:`StudyPlan` before anything runs and
  refuses, with a :class:`~spectune.errors.SpectuneError` naming the setting and what to do, a
  grid that cannot answer it (one rate where a ratio needs a curve, one batch size where a
  trend needs three, budgets that do not match).
- :meth:`Question.answer` reads the finished study (:class:`Evidence`) and returns an
  :class:`Answer`: per published claim a :class:`Finding` with the published figure, ours
  with its interval, and a verdict (``agrees``, ``differs`` or ``undetermined`` when our
  interval cannot tell), never bent toward either side.

The answer is written into ``study.json`` (``answer``), ``study.md`` and the report, and
``bench/study_answers.py`` checks the README's statements against it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectune.tuning.registry import Registry

#: verdicts of a :class:`Finding`
VERDICTS = ("agrees", "differs", "undetermined")


@dataclass
class Variant:
    """A named candidate of a study: a method with its own settings.

    ``study.methods: [lora, full]`` is the plain form (each variant named after its method, no
    overrides); ``study.variants`` names them (``lora-r64: {method: lora, lora.r: 64}``).

    Attributes:
        name: the variant's name (run folders start with it).
        method: the registered method it runs.
        overrides: dotted config key -> value, applied to the base config before budgets are
            matched (``{"lora.r": 64}``, ``{"target_modules": ["q_proj", "v_proj"]}``).
        search: dotted config key -> values searched on the validation split together with
            the learning rate; the best combination is what the real runs use
            (``{"lora.init": ["default", "pissa", "eva"]}``: "LoRA at its best init").
    """

    name: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    search: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class StudyPlan:
    """What a question sees before the study runs (:meth:`Question.check`).

    Attributes:
        variants: the candidates, in the config's order.
        configs: variant name -> its resolved run config (a ``TuneConfig``: overrides applied,
            budget matched when ``match_budget``), at the first grid point.
        trainable: variant name -> trainable parameter count from the model's shapes (None
            when the method cannot count it without weights).
        seeds: seeds of the real runs.
        lr_grid: variant name -> learning rates (one rate: no search).
        lr_seeds: seeds of the learning-rate search runs (several: a curve per seed).
        criterion: what picks the rate: ``"accuracy"`` (then loss) or ``"loss"``.
        grid: dotted key -> values crossed with every variant.
        match_budget: whether budgets are matched to the reference's trainable count.
    """

    variants: list[Variant]
    configs: dict[str, Any]
    trainable: dict[str, int | None]
    seeds: list[int]
    lr_grid: dict[str, list[float]]
    lr_seeds: list[int]
    criterion: str
    grid: dict[str, list[Any]]
    match_budget: bool


@dataclass
class Evidence:
    """What a question reads once the study has run (:meth:`Question.answer`).

    Attributes:
        folder: the study folder (``runs/<run>/metrics.json``, ``runs/<run>/spectra/``,
            ``lr_search/<variant>-lr<rate>[-s<seed>]/metrics.json``).
        plan: the :class:`StudyPlan`.
        rows: one per real run: results.csv's row plus the study's columns (``name``,
            ``candidate``, ``variant``, ``method``, ``seed``, ``learning_rate``, ``status``,
            ``accuracy_gain``, ``forgetting``, ``heldout_loss_after``...).
        groups: candidate name -> its run names (one per seed).
        summaries: per candidate, the study's summary with intervals (accuracy_gain,
            forgetting... as in ``study.json``'s ``summaries``).
        searches: variant name -> its search as a dict: ``points``, the settings tried (each
            ``{"learning_rate": r, <searched key>: value...}``, in the order run);
            ``curves``, search seed -> per point ``[validation accuracy, validation loss]`` or
            None when that run failed; ``chosen``, the point the real runs use (None: every
            point failed); ``criterion``. A variant with one rate and nothing searched has
            one point and no curves.
    """

    folder: Path
    plan: StudyPlan
    rows: list[dict[str, Any]]
    groups: dict[str, list[str]]
    summaries: list[dict[str, Any]]
    searches: dict[str, dict[str, Any]]


@dataclass
class Finding:
    """One published claim set beside what this study measured.

    Attributes:
        claim: the claim in a few words ("LoRA's best rate / full fine-tuning's").
        published: the published figure ("about 10x").
        source: where it is published ("LoRA Without Regret (Thinking Machines, 2025)").
        ours: our figure with its interval ("12x [5x, 30x] over 3 seeds").
        verdict: ``agrees``, ``differs`` or ``undetermined`` (our interval cannot tell, or the
            grid's edge was hit).
        why: how ours was measured and what may explain a difference (a 135M model, a toy
            task, 25 steps).
        figures: the numbers behind ``ours`` (for the bench and the report).
    """

    claim: str
    published: str
    source: str
    ours: str
    verdict: str
    why: str
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class Answer:
    """A question's answer (``study.json``'s ``answer``).

    Attributes:
        question: the question's registered name.
        title: one line.
        findings: one per published claim.
        table: rows behind the findings (per variant or per matrix type), for study.md and
            the report.
        notes: caveats (grid edges, failed runs left out).
    """

    question: str
    title: str
    findings: list[Finding]
    table: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        return cls(**{**data, "findings": [Finding(**f) for f in data["findings"]]})

    def markdown(self) -> str:
        """The answer as study.md shows it: a findings table (claim, published, ours,
        verdict), then the rows and the notes."""
        lines = [
            f"## {self.title}",
            "",
            "| claim | published | ours | verdict |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {f.claim} | {f.published} ({f.source}) | {f.ours} | {f.verdict} |"
            for f in self.findings
        ]
        lines += ["", *(f"- {f.claim}: {f.why}" for f in self.findings)]
        if self.table:
            keys = list(self.table[0])
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in self.table]
        if self.notes:
            lines += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Question:
    """A published question a study can answer (see the module docstring).

    Attributes:
        name: the registered name (set by :func:`register_question`).
        title: one line for ``study.md``.
        source: the publication(s) it reproduces.
    """

    name: str = ""
    title: str = ""
    source: str = ""

    def check(self, plan: StudyPlan) -> None:
        """Refuse a plan that cannot answer the question (a :class:`SpectuneError` naming the
        setting, what it has and what it needs). Default: any plan."""

    def answer(self, evidence: Evidence) -> Answer:
        """The answer from the finished study."""
        raise NotImplementedError


#: modules that register the built-in questions when imported
BUILTIN_MODULES: tuple[str, ...] = ()

QUESTIONS = Registry("question", Question, BUILTIN_MODULES, ())


def register_question(name: str, question: Question) -> Question:
    """Register a study question under ``name``."""
    return QUESTIONS.register(name, question)


def get_question(name: str) -> Question:
    """The question called ``name``; an unknown name lists the registered ones."""
    return QUESTIONS.get(name)


__all__ = [
    "QUESTIONS",
    "VERDICTS",
    "Answer",
    "Evidence",
    "Finding",
    "Question",
    "StudyPlan",
    "Variant",
    "get_question",
    "register_question",
]
