"""``batch``: LoRA against full fine-tuning as the effective batch grows, at matched examples.

Published ("LoRA Without Regret", Thinking Machines 2025): LoRA is less tolerant of large
batches than full fine-tuning: at the same number of examples seen, its loss falls behind
full fine-tuning's as the effective batch grows, whatever the rank.

How we measure it. The effective batch of a variant is per_device_train_batch_size x
gradient_accumulation_steps x processes; every LoRA-family and full variant must see the same
number of examples (batch x max_steps), and each method needs three batch sizes or more. Per
variant: the accuracy gain with the study's interval and the held-out loss over seeds. Per
batch size: the gap LoRA - full in accuracy gain (paired bootstrap on the same questions) and
the loss ratio LoRA / full (paired by seed). Whether the gap grows: the least-squares slope of
the gap against log2(batch), "per doubling of the batch", its interval a bootstrap over seeds
and the same questions for every batch (from ``predictions.jsonl``; without them, the spread
of the per-seed slopes), and for the loss the per-seed slopes of log(LoRA / full).

Verdicts. "LoRA degrades more at large batch" agrees when the accuracy slope lies wholly below
0 (the gap widens against LoRA), or the loss slope wholly above 0; differs when wholly on the
other side; undetermined when the interval holds 0. At the largest batch, LoRA - full agrees
when wholly below 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spectune.errors import SpectuneError
from spectune.results.stats import N_BOOT, Interval
from spectune.studies.questions import (
    Answer,
    Evidence,
    Finding,
    Question,
    StudyPlan,
    register_question,
)
from spectune.studies.questions.measures import (
    check_no_grid,
    learning_columns,
    loss_ratio,
    method_kind,
    paired_accuracy,
    per_seed,
    points,
    question_scores,
    ratio_text,
    seed_interval,
    side_verdict,
)

SOURCE = "LoRA Without Regret (Thinking Machines, 2025)"
#: batch sizes each method needs
MIN_BATCHES = 3


def effective_batch(config: Any) -> tuple[int, int]:
    """(effective batch, max_steps) of a run config: per-device batch x gradient accumulation x
    processes (``WORLD_SIZE``; 1 without a launcher)."""
    from spectune.tuning.scale.distributed import world

    args = config.training_arguments()
    batch = int(args["per_device_train_batch_size"]) * int(args["gradient_accumulation_steps"])
    return batch * world().size, int(args["max_steps"])


def batches(plan: StudyPlan) -> dict[str, dict[int, str]]:
    """``"lora"`` / ``"full"`` -> effective batch -> variant (after :meth:`Batch.check`)."""
    out: dict[str, dict[int, str]] = {"lora": {}, "full": {}}
    for v in plan.variants:
        kind = method_kind(v.method)
        if kind is not None:
            out[kind].setdefault(effective_batch(plan.configs[v.name])[0], v.name)
    return {k: dict(sorted(b.items())) for k, b in out.items()}


def _check_examples(plan: StudyPlan, names: list[str]) -> None:
    """Every variant sees the examples the first one sees (batch x max_steps)."""
    sizes = {n: effective_batch(plan.configs[n]) for n in names}
    for n, (_b, steps) in sizes.items():
        if steps < 1:
            raise SpectuneError(
                f"question batch matches examples seen (batch x train.max_steps), but variant "
                f"{n} trains for epochs (train.max_steps={steps}); set train.max_steps"
            )
    ref = names[0]
    target = sizes[ref][0] * sizes[ref][1]
    for n, (b, steps) in sizes.items():
        if b * steps != target:
            fits = "" if target % b == 0 else f" (the nearest: {target / b:.3g} is not whole)"
            raise SpectuneError(
                f"question batch compares at matched examples seen, but variant {n} sees "
                f"{b} x {steps} = {b * steps} and {ref} {target}: set train.max_steps: "
                f"{max(1, round(target / b))} on {n}{fits}"
            )


class Batch(Question):
    """LoRA against full fine-tuning as the effective batch grows (module docstring)."""

    title = "LoRA against full fine-tuning as the effective batch grows, at matched examples"
    source = SOURCE

    def check(self, plan: StudyPlan) -> None:
        check_no_grid(plan, "batch")
        names = [v.name for v in plan.variants if method_kind(v.method) is not None]
        seen: dict[tuple[str, int], str] = {}
        for v in plan.variants:
            kind = method_kind(v.method)
            if kind is None:
                continue
            b = effective_batch(plan.configs[v.name])[0]
            if (kind, b) in seen:
                raise SpectuneError(
                    f"question batch: variants {seen[kind, b]} and {v.name} are both {kind} at "
                    f"effective batch {b}; keep one per method and batch"
                )
            seen[kind, b] = v.name
        for kind in ("lora", "full"):
            have = sorted(b for k, b in seen if k == kind)
            if len(have) < MIN_BATCHES:
                raise SpectuneError(
                    f"question batch needs LoRA and full fine-tuning each at {MIN_BATCHES} "
                    f"effective batches or more (per_device_train_batch_size x "
                    f"gradient_accumulation_steps x processes) to see a trend; {kind} has "
                    f"{have or 'none'}"
                )
        _check_examples(plan, names)

    def answer(self, evidence: Evidence) -> Answer:
        plan = evidence.plan
        by = batches(plan)
        table = []
        for kind, sizes in by.items():
            for b, name in sizes.items():
                table.append({
                    "variant": name,
                    "method": kind,
                    "effective batch": b,
                    "max_steps": effective_batch(plan.configs[name])[1],
                    **learning_columns(evidence, name),
                })  # fmt: skip
        shared = [b for b in by["lora"] if b in by["full"]]
        pairs = {b: (by["lora"][b], by["full"][b]) for b in shared}
        notes = []
        for b, (lo, fu) in pairs.items():
            notes.append(
                f"batch {b}: {lo} - {fu} accuracy gain {points(paired_accuracy(evidence, lo, fu))}"
                f" points; held-out loss {lo} / {fu} {ratio_text(loss_ratio(evidence, lo, fu))}"
            )
        acc_slope = accuracy_slope(evidence, pairs)
        loss_slope = loss_slope_interval(evidence, pairs)
        top = max(shared) if shared else None
        at_top = paired_accuracy(evidence, *pairs[top]) if top else None
        findings = [
            Finding(
                "LoRA - full accuracy gain, change per doubling of the batch",
                "LoRA falls further behind as the batch grows",
                SOURCE,
                "undetermined (fewer than 2 shared batches)" if acc_slope is None
                else f"{points(acc_slope)} points per doubling ({acc_slope.how})",
                side_verdict(acc_slope, 0.0, "below"),
                f"least-squares slope of the paired gap against log2(batch) over batches "
                f"{shared}; at matched examples seen",
                {"batches": shared, "interval": _dict(acc_slope)},
            ),
            Finding(
                "log(LoRA / full held-out loss), change per doubling of the batch",
                "LoRA's loss rises against full fine-tuning's as the batch grows",
                SOURCE,
                "undetermined (no seed with every batch)" if loss_slope is None
                else f"{_pct(loss_slope.estimate)} [{_pct(loss_slope.low)}, "
                f"{_pct(loss_slope.high)}] per doubling ({loss_slope.how})",
                side_verdict(loss_slope, 0.0, "above"),
                "per seed, the least-squares slope of log(LoRA / full held-out loss) against "
                "log2(batch), shown as the loss ratio's change per doubling",
                {"batches": shared, "interval": _dict(loss_slope)},
            ),
            Finding(
                f"LoRA - full accuracy gain at the largest batch ({top})",
                "LoRA behind full fine-tuning",
                SOURCE,
                "undetermined (no finished pair)" if at_top is None
                else f"{points(at_top)} points ({at_top.how})",
                side_verdict(at_top, 0.0, "below"),
                "paired on the same held-out questions and seeds",
                {"batch": top, "interval": _dict(at_top)},
            ),
        ]  # fmt: skip
        return Answer("batch", self.title, findings, table, notes)


def _pct(log_slope: float) -> str:
    return f"{100 * math.expm1(log_slope):+.1f}%"


def _dict(ci: Interval | None) -> dict[str, Any] | None:
    return None if ci is None else ci.to_dict()


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of ``y`` (batches along axis 0) against ``x``."""
    xc = x - x.mean()
    return np.tensordot(xc, y - y.mean(axis=0), axes=(0, 0)) / float(xc @ xc)


def accuracy_slope(
    evidence: Evidence, pairs: dict[int, tuple[str, str]], *, seed: int = 0
) -> Interval | None:
    """Slope of the accuracy gap LoRA - full against log2(batch): a bootstrap over seeds and
    the held-out questions (the same resample for every batch); without predictions, the
    per-seed slopes of the runs' ``accuracy_gain`` (:func:`seed_interval`)."""
    if len(pairs) < 2:
        return None
    x = np.log2(np.array(sorted(pairs), dtype=float))
    scores = {
        b: (question_scores(evidence, lo), question_scores(evidence, fu))
        for b, (lo, fu) in pairs.items()
    }
    seeds = sorted(set.intersection(*(set(a) & set(f) for a, f in scores.values())))
    seeds = [s for s in seeds if len({scores[b][i][s].shape for b in pairs for i in (0, 1)}) == 1]
    if not seeds:
        gaps = {
            b: (per_seed(evidence, lo, "accuracy_gain"), per_seed(evidence, fu, "accuracy_gain"))
            for b, (lo, fu) in pairs.items()
        }
        common = sorted(set.intersection(*(set(a) & set(f) for a, f in gaps.values())))
        if not common:
            return None
        slopes = [
            float(_slope(x, np.array([gaps[b][0][s] - gaps[b][1][s] for b in sorted(pairs)])))
            for s in common
        ]
        return seed_interval(slopes)
    # per seed: (batches, questions) of per-question gaps
    d = [np.stack([scores[b][0][s] - scores[b][1][s] for b in sorted(pairs)]) for s in seeds]
    estimate = float(_slope(x, np.mean([g.mean(axis=1) for g in d], axis=0)))
    rng = np.random.default_rng(seed)
    boot = np.zeros((len(x), N_BOOT))
    picks = rng.integers(0, len(d), (N_BOOT, len(d))) if len(d) > 1 else np.zeros((N_BOOT, 1), int)
    for j in range(picks.shape[1]):
        for i, g in enumerate(d):
            idx = rng.integers(0, g.shape[1], (N_BOOT, g.shape[1]))
            means = g[:, idx].mean(axis=2)  # (batches, N_BOOT)
            boot += np.where(picks[:, j] == i, means, 0.0)
    slopes = _slope(x, boot / picks.shape[1])
    low, high = (float(v) for v in np.percentile(slopes, [2.5, 97.5]))
    n = sum(g.shape[1] for g in d)
    return Interval(estimate, low, high, 0.95, n, len(d),
                    f"bootstrap over {len(d)} seed(s) and their {n} questions")  # fmt: skip


def loss_slope_interval(evidence: Evidence, pairs: dict[int, tuple[str, str]]) -> Interval | None:
    """Per-seed slope of log(LoRA / full held-out loss) against log2(batch), over the seeds
    where every batch finished both (:func:`seed_interval`)."""
    if len(pairs) < 2:
        return None
    x = np.log2(np.array(sorted(pairs), dtype=float))
    loss = {
        b: (
            per_seed(evidence, lo, "heldout_loss_after"),
            per_seed(evidence, fu, "heldout_loss_after"),
        )
        for b, (lo, fu) in pairs.items()
    }
    common = sorted(set.intersection(*(set(a) & set(f) for a, f in loss.values())))
    slopes = [
        float(_slope(x, np.array([math.log(loss[b][0][s] / loss[b][1][s]) for b in sorted(pairs)])))
        for s in common
        if all(loss[b][0][s] > 0 and loss[b][1][s] > 0 for b in pairs)
    ]
    return seed_interval(slopes) if slopes else None


register_question("batch", Batch())

__all__ = ["Batch", "accuracy_slope", "batches", "effective_batch", "loss_slope_interval"]
