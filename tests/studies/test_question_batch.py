"""batch: effective batches and matched examples checked, the LoRA - full gap per batch and
its slope per doubling on planted predictions and losses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spectune.errors import SpectuneError
from spectune.studies.questions import get_question
from spectune.studies.questions.batch import batches, effective_batch
from tests.studies.question_plans import (
    make_evidence,
    make_plan,
    run_config,
    run_row,
    write_predictions,
)

#: effective batch -> (gradient accumulation, max_steps) at 256 examples, per-device batch 8
SHAPES = {8: (1, 32), 32: (4, 8), 128: (16, 2)}


def batch_plan(shapes=SHAPES, full_shapes=None, seeds=(0, 1, 2)):
    configs = {}
    for method, sh in (("lora", shapes), ("full", full_shapes or shapes)):
        for b, (acc, steps) in sh.items():
            configs[f"{method}-b{b}"] = run_config(
                method, gradient_accumulation_steps=acc, max_steps=steps
            )
    return make_plan(configs, seeds=list(seeds))


def test_effective_batches_and_matched_examples_pass():
    plan = batch_plan()
    assert effective_batch(plan.configs["lora-b32"]) == (32, 8)
    assert batches(plan) == {
        "lora": {8: "lora-b8", 32: "lora-b32", 128: "lora-b128"},
        "full": {8: "full-b8", 32: "full-b32", 128: "full-b128"},
    }
    get_question("batch").check(plan)


def test_unmatched_examples_name_the_variant_and_the_max_steps_that_would_match():
    plan = batch_plan(full_shapes={8: (1, 32), 32: (4, 10), 128: (16, 2)})
    with pytest.raises(SpectuneError, match=r"variant full-b32 sees 32 x 10 = 320 and lora-b8 "
                       r"256: set train.max_steps: 8 on full-b32$"):  # fmt: skip
        get_question("batch").check(plan)
    plan = batch_plan(full_shapes={8: (1, 32), 32: (4, 8), 96: (12, 3)})
    with pytest.raises(SpectuneError, match=r"96 x 3 = 288.*max_steps: 3 on full-b96 \(the "
                       r"nearest: 2.67 is not whole\)"):  # fmt: skip
        get_question("batch").check(plan)


def test_too_few_batches_or_two_at_one_batch_are_refused():
    plan = batch_plan(full_shapes={8: (1, 32), 32: (4, 8)})
    with pytest.raises(SpectuneError, match=r"3 effective batches or more .* full has \[8, 32\]"):
        get_question("batch").check(plan)
    plan = batch_plan()
    plan.configs["full-b32"] = run_config("full", per_device_train_batch_size=32, max_steps=8)
    plan.configs["full-b128"] = run_config("full", per_device_train_batch_size=4,
                                           gradient_accumulation_steps=8, max_steps=8)  # fmt: skip
    with pytest.raises(SpectuneError, match="full-b32 and full-b128 are both full at effective "
                       "batch 32"):  # fmt: skip
        get_question("batch").check(plan)


def _planted(tmp_path, plan, lora_right=(70, 60, 50), ratios=(1.0, 1.1, 1.21)):
    """3 seeds x 100 questions: full right on the first 70 at every batch, LoRA on the first
    ``lora_right`` (a subset); held-out loss full 0.5 (+ a little per seed), LoRA x ratio."""
    rows = []
    for seed in (0, 1, 2):
        for i, b in enumerate((8, 32, 128)):
            full_loss = 0.5 + 0.01 * seed
            lora_loss = full_loss * ratios[i] * (1 + 0.002 * seed * i)
            for method, right, loss in (
                ("full", 70, full_loss),
                ("lora", lora_right[i], lora_loss),
            ):
                name = f"{method}-b{b}"
                write_predictions(tmp_path, f"{name}-s{seed}", [q < right for q in range(100)])
                rows.append(run_row(name, seed, accuracy_gain=right / 100, heldout_loss_after=loss))
    return make_evidence(tmp_path, plan, rows)


def test_a_gap_that_grows_with_the_batch(tmp_path):
    answer = get_question("batch").answer(_planted(tmp_path, batch_plan()))
    slope, loss_slope, at_top = answer.findings
    ci = slope.figures["interval"]
    # gaps 0, -0.1, -0.2 at log2 batch 3, 5, 7: -0.05 per doubling
    assert ci["estimate"] == pytest.approx(-0.05) and ci["high"] < 0 < -ci["low"]
    assert ci["how"] == "bootstrap over 3 seed(s) and their 300 questions"
    assert slope.verdict == "agrees" and slope.ours.startswith("-5.0 [")
    # per seed s: log ratio = log(1.1) per 2 doublings plus the planted 0.002 s i drift
    per_seed = [np.polyfit([3, 5, 7], [math.log(r * (1 + 0.002 * s * i)) for i, r in
                                       enumerate((1.0, 1.1, 1.21))], 1)[0] for s in range(3)]  # fmt: skip
    assert loss_slope.figures["interval"]["estimate"] == pytest.approx(np.mean(per_seed))
    assert loss_slope.verdict == "agrees"
    assert at_top.figures["batch"] == 128 and at_top.verdict == "agrees"
    assert at_top.figures["interval"]["estimate"] == pytest.approx(-0.2)
    assert [r["effective batch"] for r in answer.table] == [8, 32, 128, 8, 32, 128]
    assert answer.notes[0].startswith("batch 8: lora-b8 - full-b8 accuracy gain +0.0 [+0.0, +0.0]")


def test_no_trend_is_undetermined_and_a_reversed_one_differs(tmp_path):
    flat = get_question("batch").answer(
        _planted(tmp_path / "a", batch_plan(), lora_right=(70, 70, 70), ratios=(1.0, 1.0, 1.0))
    )
    assert flat.findings[0].figures["interval"]["estimate"] == pytest.approx(0.0)
    assert flat.findings[0].verdict == "undetermined" and flat.findings[2].verdict == "undetermined"
    reversed_ = get_question("batch").answer(
        _planted(tmp_path / "b", batch_plan(), lora_right=(50, 60, 70), ratios=(1.2, 1.1, 1.0))
    )
    assert [f.verdict for f in reversed_.findings] == ["differs", "differs", "undetermined"]


def test_without_predictions_the_slope_comes_from_the_seeds(tmp_path):
    ev = _planted(tmp_path, batch_plan())
    for p in tmp_path.glob("runs/*/predictions.jsonl"):
        p.unlink()
    ci = get_question("batch").answer(ev).findings[0].figures["interval"]
    assert ci["how"] == "Student t over 3 seeds" and ci["estimate"] == pytest.approx(-0.05)
