"""``targets``: attention-only vs MLP-only vs all-linear LoRA at one trainable count.

Published ("LoRA Without Regret", Thinking Machines 2025): at the same number of trainable
parameters, LoRA on the attention matrices only does worse than LoRA on every linear layer,
while LoRA on the MLP only comes close to it.

How we measure it. Each LoRA variant's targets are resolved on the model's shapes (no weights
read) and classified by where the matched modules sit: all under attention blocks
(``self_attn`` / ``attention``...) is attention-only, all under MLP blocks (``mlp`` /
``feed_forward``...) MLP-only, every attention and MLP Linear is all-linear. The three must
train within 5% of one another's parameter count (``study.match_budget: true`` matches each to
LoRA r=8 all-linear through the lora method's ``match_budget`` hook). Per variant: the accuracy
gain with the study's interval (over seeds and questions) and the held-out loss over seeds;
per pair: the accuracy gain a - b (paired bootstrap on the same questions) and the held-out
loss a / b (paired by seed, geometric mean; t-interval on the log from 3 seeds).

Verdicts. "Attention-only loses" agrees when the accuracy difference attention-only -
all-linear lies wholly below 0 (or the loss ratio wholly above 1), differs when wholly on the
other side. "MLP-only is close" agrees when the accuracy difference lies inside +-3 points and
the loss ratio inside [0.97, 1.03], differs when it lies wholly outside: 3 points is about the
smallest paired difference the shipped study resolves (200 questions x 3 seeds), 3% of the
loss a change of the same order; a difference our intervals cannot see is not "close".
"""

from __future__ import annotations

from typing import Any

from spectune.errors import SpectuneError
from spectune.results.stats import Interval
from spectune.studies.questions import (
    Answer,
    Evidence,
    Finding,
    Question,
    StudyPlan,
    register_question,
)
from spectune.studies.questions.measures import (
    band_verdict,
    check_no_grid,
    learning_columns,
    loss_ratio,
    method_kind,
    paired_accuracy,
    points,
    ratio_text,
    side_verdict,
)

SOURCE = "LoRA Without Regret (Thinking Machines, 2025)"
#: the three kinds the question compares, in its order
KINDS = ("attention-only", "MLP-only", "all-linear")
#: path parts of a module under an attention block / an MLP block
ATTENTION_PARTS = ("attn", "attention")
MLP_PARTS = ("mlp", "feed_forward", "ffn")
#: trainable counts may differ by this fraction of the smallest
TOLERANCE = 0.05
#: "close": accuracy difference (fraction) and loss ratio bands
CLOSE_ACCURACY = (-0.03, 0.03)
CLOSE_LOSS = (0.97, 1.03)


def module_block(name: str) -> str | None:
    """``"attention"``, ``"mlp"`` or None: the block a module's dotted name sits in."""
    parents = [p.lower() for p in name.split(".")[:-1]]
    if any(k in p for p in parents for k in ATTENTION_PARTS):
        return "attention"
    if any(k in p for p in parents for k in MLP_PARTS):
        return "mlp"
    return None


def classify(selected: list[str], linear: list[str]) -> str:
    """Which of :data:`KINDS` a set of target modules is, or ``"mixed"``.

    Args:
        selected: the modules the variant's target_modules select.
        linear: every Linear that all-linear selects on the same model.
    """
    blocks = {module_block(n) for n in selected}
    if blocks == {"attention"}:
        return "attention-only"
    if blocks == {"mlp"}:
        return "MLP-only"
    covered = {n for n in linear if module_block(n) is not None}
    if blocks == {"attention", "mlp"} and covered <= set(selected):
        return "all-linear"
    return "mixed"


def target_kinds(plan: StudyPlan) -> dict[str, str]:
    """LoRA-family variant -> its kind, from its resolved target modules (shapes only)."""
    from spectune.models.loading import resolve_model_dir
    from spectune.models.targets import ALL_LINEAR, match_modules
    from spectune.tuning.methods import meta_model

    models: dict[str, Any] = {}
    out = {}
    for v in plan.variants:
        if method_kind(v.method) != "lora":
            continue
        config = plan.configs[v.name]
        if config.model not in models:
            models[config.model] = meta_model(resolve_model_dir(config.model))
        model = models[config.model]
        selected = match_modules(model, config.target_modules, config.exclude_modules)
        out[v.name] = classify(selected, match_modules(model, ALL_LINEAR))
    return out


def _pick(kinds: dict[str, str]) -> dict[str, str]:
    """Kind -> the one variant of that kind (refusing none or two)."""
    shown = ", ".join(f"{n} ({k})" for n, k in kinds.items()) or "no LoRA-family variant"
    picked = {}
    for kind in KINDS:
        names = [n for n, k in kinds.items() if k == kind]
        if len(names) != 1:
            raise SpectuneError(
                f"question targets needs exactly one LoRA variant per kind (attention-only, "
                f"MLP-only, all-linear by their target_modules); {kind} has "
                f"{len(names)}: study.variants has {shown}"
            )
        picked[kind] = names[0]
    return picked


def _check_counts(plan: StudyPlan, picked: dict[str, str]) -> None:
    counts = {n: plan.trainable.get(n) for n in picked.values()}
    missing = [n for n, c in counts.items() if not c]
    if missing:
        raise SpectuneError(
            f"question targets compares at one trainable count, but the count of "
            f"{', '.join(missing)} is unknown; use a method that counts from shapes (lora)"
        )
    lo, hi = min(counts.values()), max(counts.values())  # type: ignore[type-var]
    if hi > lo * (1 + TOLERANCE):
        ref_name = picked["all-linear"]
        ref = counts[ref_name]
        ranks = {n: int(plan.configs[n].section("lora").r) for n in counts}
        shown = ", ".join(f"{n} {counts[n]:,} (lora.r={ranks[n]})" for n in counts)
        fix = ", ".join(
            f"{n}: lora.r={max(1, round(ref * ranks[n] / counts[n]))}"  # type: ignore[operator]
            for n in counts
            if n != ref_name
        )
        raise SpectuneError(
            f"question targets compares at one trainable count (within {TOLERANCE:.0%}), but "
            f"{shown}; the nearest ranks to {ref_name}'s {ref:,}: {fix} (or set "
            "study.match_budget: true)"
        )


class Targets(Question):
    """Attention-only vs MLP-only vs all-linear LoRA at one count (module docstring)."""

    title = "Where LoRA goes: attention-only vs MLP-only vs all-linear at one trainable count"
    source = SOURCE

    def check(self, plan: StudyPlan) -> None:
        check_no_grid(plan, "targets")
        _check_counts(plan, _pick(target_kinds(plan)))

    def answer(self, evidence: Evidence) -> Answer:
        plan = evidence.plan
        picked = _pick(target_kinds(plan))
        table = []
        for kind, name in picked.items():
            table.append({
                "variant": name,
                "targets": kind,
                "r": int(plan.configs[name].section("lora").r),
                "trainable": plan.trainable.get(name),
                **learning_columns(evidence, name),
            })  # fmt: skip
        attn, mlp, full = (picked[k] for k in KINDS)
        acc_attn, acc_mlp = (
            paired_accuracy(evidence, attn, full),
            paired_accuracy(evidence, mlp, full),
        )
        loss_attn, loss_mlp = loss_ratio(evidence, attn, full), loss_ratio(evidence, mlp, full)
        findings = [
            _finding("attention-only - all-linear, accuracy gain", "attention-only loses",
                     points(acc_attn) + " points", side_verdict(acc_attn, 0.0, "below"),
                     acc_attn, attn, full),
            _finding("attention-only / all-linear, held-out loss", "attention-only loses (higher loss)",
                     ratio_text(loss_attn), side_verdict(loss_attn, 1.0, "above"),
                     loss_attn, attn, full),
            _finding("MLP-only - all-linear, accuracy gain", "close",
                     points(acc_mlp) + " points", band_verdict(acc_mlp, *CLOSE_ACCURACY),
                     acc_mlp, mlp, full),
            _finding("MLP-only / all-linear, held-out loss", "close",
                     ratio_text(loss_mlp), band_verdict(loss_mlp, *CLOSE_LOSS),
                     loss_mlp, mlp, full),
        ]  # fmt: skip
        between = paired_accuracy(evidence, attn, mlp)
        notes = [f"{attn} - {mlp} (attention-only - MLP-only), accuracy gain: {points(between)}"]
        return Answer("targets", self.title, findings, table, notes)


def _finding(
    claim: str, published: str, ours: str, verdict: str, ci: Interval | None, a: str, b: str
) -> Finding:
    how = "no finished pair" if ci is None else ci.how
    return Finding(
        claim,
        published,
        SOURCE,
        ours if ci is not None else "undetermined (no finished pair of runs)",
        verdict,
        f"{a} against {b} ({how}); 'close' taken as within +-3 points of accuracy and 3% "
        "of the loss",
        {"a": a, "b": b, "interval": None if ci is None else ci.to_dict()},
    )


register_question("targets", Targets())

__all__ = ["KINDS", "Targets", "classify", "module_block", "target_kinds"]
