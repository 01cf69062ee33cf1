"""Held-out exact match: greedy answers of a fake LM that knows its answers."""

from __future__ import annotations

import json

import pytest

from spectune.data.examples import InstructionExample
from spectune.data.instructions import build_prompt
from spectune.errors import SpectuneError
from spectune.judging.accuracy import exact_match
from tests.judging.conftest import OracleLM, token_ids


def test_exact_match_known_answers(tok):
    examples = [
        InstructionExample("What is 2 + 3?", "5", category="add"),
        InstructionExample("What is 10 + 7?", "17", category="add"),
        InstructionExample("Reverse: cat, dog", "dog, cat", category="reverse"),
        InstructionExample("Reverse: sun, moon, star", "star, moon, sun", category="reverse"),
        InstructionExample("Capital of France?", "Paris", category="geo"),
    ]
    said = [
        "5",
        "18",
        "Dog, cat.",
        "star moon sun",
        "  paris  ",
    ]  # right, wrong, right, wrong, right
    answers = {
        tuple(token_ids(tok, build_prompt(tok, ex))): token_ids(tok, s)
        for ex, s in zip(examples, said, strict=True)
    }
    model = OracleLM(answers, len(tok), tok.eos_token_id)
    model.train()
    result = exact_match(model, tok, examples, max_new_tokens=8, batch_size=2)
    assert model.training  # mode restored
    assert result.predictions == ["5", "18", "Dog, cat.", "star moon sun", "paris"]
    assert result.n == 5 and result.n_correct == 3
    assert result.accuracy == pytest.approx(0.6)
    assert result.by_category == {
        "add": {"n": 2, "n_correct": 1, "accuracy": 0.5},
        "geo": {"n": 1, "n_correct": 1, "accuracy": 1.0},
        "reverse": {"n": 2, "n_correct": 1, "accuracy": 0.5},
    }
    # generation stopped at EOS: longest answer + 1 step per batch, not max_new_tokens
    longest = max(len(token_ids(tok, s)) for s in said)
    assert model.calls <= 3 * (longest + 1)
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["n_correct"] == 3 and "predictions" not in result.to_dict(predictions=False)
    with pytest.raises(SpectuneError, match="eval set is empty"):
        exact_match(model, tok, [])


def test_exact_match_truncates_at_max_new_tokens(tok):
    ex = InstructionExample("Count.", "one two three four five six")
    answers = {tuple(token_ids(tok, build_prompt(tok, ex))): token_ids(tok, ex.response)}
    model = OracleLM(answers, len(tok), tok.eos_token_id)
    n = len(token_ids(tok, ex.response))
    assert exact_match(model, tok, [ex], max_new_tokens=n).accuracy == 1.0
    short = exact_match(model, tok, [ex], max_new_tokens=n - 1)
    assert short.accuracy == 0.0
    assert short.predictions == [tok.decode(token_ids(tok, ex.response)[: n - 1]).strip()]
