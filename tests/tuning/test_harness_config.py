"""eval.harness and eval.ce_*: parsed from the config and overrides, bad values named."""

from __future__ import annotations

import pytest

from spectune.errors import SpectuneError
from spectune.tuning.config import apply_overrides
from spectune.tuning.sections import EvalConfig, HarnessConfig


def test_harness_is_off_by_default_and_parsed_from_a_mapping():
    assert EvalConfig().harness is None
    e = EvalConfig(harness={"tasks": "spectune_tasks", "limit": 8, "num_fewshot": 0})
    assert e.harness == HarnessConfig(["spectune_tasks"], 8, 0, True)
    data = apply_overrides(
        {}, ["eval.harness.tasks=[spectune_add,arc_easy]", "eval.harness.limit=4"]
    )
    assert EvalConfig(**data["eval"]).harness.tasks == ["spectune_add", "arc_easy"]


@pytest.mark.parametrize(
    "value,match",
    [
        (
            {"tasks": ["spectune_add"], "limt": 8},
            r"eval.harness: unknown setting key.*'limt' -> 'limit'",
        ),
        ({"limit": 8}, "eval.harness.tasks must be"),
        ({"tasks": []}, "eval.harness.tasks must be"),
        ({"tasks": ["spectune_add", 3]}, "eval.harness.tasks must be"),
        ({"tasks": ["spectune_add"], "limit": 0}, "eval.harness.limit must be >= 1"),
        ({"tasks": ["spectune_add"], "num_fewshot": -1}, "eval.harness.num_fewshot must be >= 0"),
        ({"tasks": ["spectune_add"], "chat_template": "yes"}, "eval.harness.chat_template"),
        (["spectune_add"], "eval.harness must be a mapping"),
    ],
)
def test_bad_harness_settings_are_named(value, match):
    with pytest.raises(SpectuneError, match=match):
        EvalConfig(harness=value)


def test_ce_settings_are_checked():
    assert (EvalConfig().ce_samples, EvalConfig().ce_tokens) == (8, 256)
    assert EvalConfig(ce_samples=0).ce_samples == 0  # off
    with pytest.raises(SpectuneError, match="eval.ce_samples must be at most"):
        EvalConfig(ce_samples=1000)
    with pytest.raises(SpectuneError, match="eval.ce_tokens must be >= 2"):
        EvalConfig(ce_tokens=1)
