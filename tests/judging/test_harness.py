"""Harness tasks: spectune's lm-eval task files, run on a tiny model in memory and read back
from lm-eval's own result dict; their score against spectune's exact match, example by example;
the bad task name; the judge cache key; a tune run with eval.harness end to end."""

from __future__ import annotations

import json

import pytest
import torch

from spectune.data.instructions import build_prompt
from spectune.data.tasks import generate_task_set
from spectune.errors import SpectuneError
from spectune.judging.accuracy import exact_match
from tests.conftest import require, tiny_llama

require("lm_eval", "lm-evaluation-harness, eval.harness's engine")

from spectune.judging.harness import (  # noqa: E402
    SPECTUNE_TASKS,
    TASKS_DIR,
    HarnessResult,
    check_tasks,
    harness_result,
    run_harness,
)

#: the run's task set in these tests: 16 held-out examples, 2 per category
META = {"spectune_seed": 0, "spectune_n_eval": 16}


def _heldout(*categories: str):
    _, heldout = generate_task_set(0, META["spectune_n_eval"], META["spectune_seed"])
    return [ex for ex in heldout if ex.category in categories]


def test_task_folder_defines_spectune_tasks():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert set(manager.all_tasks) == set(SPECTUNE_TASKS)
    assert manager.all_groups == ["spectune_tasks"]
    assert len(SPECTUNE_TASKS) == 9


def test_unknown_task_is_one_line_naming_it_and_the_spectune_tasks():
    with pytest.raises(SpectuneError) as err:
        check_tasks(["spectune_tasks", "no_such_task_xyz"])
    text = str(err.value)
    assert "\n" not in text
    assert "'no_such_task_xyz'" in text and "spectune_add" in text and "spectune_tasks" in text
    assert "network" in text
    check_tasks(["spectune_add", "spectune_tasks"])  # spectune's own: no lm-eval index needed


def test_harness_on_tiny_model_reads_back_from_lm_evals_result(smol_tokenizer):
    tok = smol_tokenizer
    model = tiny_llama(len(tok), hidden=32)
    raw = run_harness(
        model, tok, tasks=["spectune_tasks"], limit=8, max_new_tokens=4, batch_size=8,
        metadata=META,
    )  # fmt: skip
    assert model.training is False
    result = harness_result(raw, tasks=["spectune_tasks"], limit=8)
    assert set(result.scores) == set(SPECTUNE_TASKS)
    for task, row in raw["results"].items():
        assert result.scores[task]["exact_match"]["value"] == row["exact_match,none"]
        assert result.scores[task]["exact_match"]["stderr"] == row["exact_match_stderr,none"]
    assert result.n_samples == {t: 2 for t in SPECTUNE_TASKS[1:]}  # 2 per category
    assert HarnessResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    # every answer lm-eval generated is spectune's greedy answer to the same example
    examples = _heldout("add")
    spectune = exact_match(model, tok, examples, max_new_tokens=4, batch_size=8).predictions
    samples = sorted(raw["samples"]["spectune_add"], key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in samples] == [build_prompt(tok, ex) for ex in examples]
    assert [s["filtered_resps"][0].strip() for s in samples] == spectune


def _overfit(model, tok, examples, steps: int = 30) -> None:
    """Teach ``model`` the answers of ``examples`` (loss on the answer and end of turn)."""
    rows = []
    for ex in examples:
        prompt = tok(build_prompt(tok, ex), add_special_tokens=False)["input_ids"]
        answer = tok(ex.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((prompt, answer))
    length = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), length), tok.eos_token_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
        mask[i, : len(p) + len(a)] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_harness_score_equals_spectune_accuracy_where_it_is_not_zero(smol_tokenizer):
    tok = smol_tokenizer
    model = tiny_llama(len(tok), hidden=32)
    examples = _heldout("add", "largest")  # 2 + 2
    _overfit(model, tok, [examples[0], examples[2]])  # one of each category learned
    acc = exact_match(model, tok, examples, max_new_tokens=4, batch_size=4)
    correct = [p.strip() == ex.response for p, ex in zip(acc.predictions, examples, strict=True)]
    assert 0 < acc.accuracy < 1 and correct[0] and correct[2]
    raw = run_harness(
        model, tok, tasks=["spectune_add", "spectune_largest"], max_new_tokens=4, batch_size=4,
        metadata=META,
    )  # fmt: skip
    result = harness_result(raw, tasks=["spectune_add", "spectune_largest"])
    by_task = {c: acc.by_category[c]["accuracy"] for c in ("add", "largest")}
    for c, value in by_task.items():
        assert result.scores[f"spectune_{c}"]["exact_match"]["value"] == value
    lm_eval_correct = [
        bool(s["exact_match"])
        for task in ("spectune_add", "spectune_largest")
        for s in sorted(raw["samples"][task], key=lambda s: s["doc_id"])
    ]
    assert lm_eval_correct == correct


def test_judge_cache_key_includes_harness_settings(tmp_path):
    from spectune.judging.cache import cache_key

    (tmp_path / "config.json").write_text("{}")
    heldout = _heldout("add")
    base = {"max_new_tokens": 4, "harness": None}
    harness = {"tasks": ["spectune_add"], "limit": 8, "num_fewshot": None,
               "chat_template": True, "metadata": META}  # fmt: skip
    keys = {
        json.dumps(h): cache_key(
            tmp_path, heldout, {**base, "harness": h}, dtype="float32", attn_implementation="sdpa"
        )
        for h in (None, harness, {**harness, "limit": 4}, {**harness, "num_fewshot": 2},
                  {**harness, "tasks": ["spectune_tasks"]})
    }  # fmt: skip
    assert len(set(keys.values())) == 5


def test_tune_with_harness_writes_before_and_after_scores(tiny_model_dir, tmp_path):
    from spectune.report.pages.run import render_run
    from spectune.results.metrics import RunMetrics
    from spectune.tuning.config import TuneConfig
    from spectune.tuning.recipe import tune
    from tests.conftest import tiny_run_config

    data = tiny_run_config(
        tiny_model_dir, eval__harness={"tasks": ["spectune_add", "spectune_largest"], "limit": 8}
    )
    data["eval"]["ce_samples"] = 3
    data["eval"]["ce_tokens"] = 32
    out = tmp_path / "run"
    tune(TuneConfig.from_dict(data), out=out, progress=False)
    raw = json.loads((out / "metrics.json").read_text())
    for when in ("before", "after"):
        scores = raw[when]["harness"]["scores"]
        assert set(scores) == {"spectune_add", "spectune_largest"}
        assert raw[when]["harness"]["n_samples"] == {"spectune_add": 1, "spectune_largest": 1}
        assert raw[when]["general_ce"]["n_samples"] == 3
    m = RunMetrics.load(out)
    # spectune's own tasks are the run's held-out questions: the same verdicts as its judge
    assert (
        m.after.harness.scores["spectune_add"]["exact_match"]["value"]
        == (m.after.accuracy.by_category["add"]["accuracy"])
    )
    assert (
        m.before.harness.scores["spectune_add"]["exact_match"]["value"]
        == (m.before.accuracy.by_category["add"]["accuracy"])
    )
    f = m.forgetting
    assert f.forgetting_ce == pytest.approx(f.general_ce_after - f.general_ce_before)
    assert f.general_ce_before == m.before.general_ce.cross_entropy
    row = m.row()
    assert (
        row["harness_spectune_add_exact_match_after"]
        == (m.after.harness.scores["spectune_add"]["exact_match"]["value"])
    )
    assert "harness_spectune_largest_exact_match_change" in row
    page = render_run(out)
    assert "Harness tasks" in page and "spectune_largest" in page
    assert "peft&#x27;s forgetting" in page or "peft's forgetting" in page
    assert RunMetrics.from_dict(m.to_dict()).to_dict() == m.to_dict()


def test_lm_evals_own_task_names_pass_the_check():
    check_tasks(["arc_easy", "spectune_add"])  # known to lm-eval; its data is not fetched here


def test_few_shot_examples_are_chat_turns_from_the_training_split(smol_tokenizer):
    tok = smol_tokenizer
    model = tiny_llama(len(tok), hidden=32)
    raw = run_harness(
        model, tok, tasks=["spectune_add"], limit=1, num_fewshot=2, max_new_tokens=2,
        metadata=META,
    )  # fmt: skip
    prompt = raw["samples"]["spectune_add"][0]["arguments"][0][0]
    assert prompt.count("<|im_start|>user") == 3 and prompt.count("<|im_start|>assistant") == 3
    train, heldout = generate_task_set(16 * 8, META["spectune_n_eval"], META["spectune_seed"])
    shots = [ex for ex in train if ex.category == "add" and ex.instruction in prompt]
    assert len(shots) == 2 and all(f"\n{ex.response}<|im_end|>" in prompt for ex in shots)
    asked = [ex for ex in heldout if ex.category == "add"]  # limit 1: the first is asked
    assert asked[0].instruction in prompt and asked[1].instruction not in prompt


def test_tune_refuses_an_unknown_task_before_taking_the_folder(tiny_model_dir, tmp_path):
    from spectune.tuning.config import TuneConfig
    from spectune.tuning.recipe import tune
    from tests.conftest import tiny_run_config

    data = tiny_run_config(tiny_model_dir, eval__harness={"tasks": ["spectune_ad"]})
    out = tmp_path / "run"
    with pytest.raises(
        SpectuneError,
        match="lm-eval has no task 'spectune_ad' \\(did you mean 'spectune_add'\\?\\)",
    ):
        tune(TuneConfig.from_dict(data), out=out, progress=False)
    assert not out.exists()
