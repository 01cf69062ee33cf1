"""The bundled task set: correct answers, disjoint splits, determinism, the answer checker."""

from __future__ import annotations

import json
import re

import pytest

from spectune.data.examples import InstructionExample
from spectune.data.instructions import load_instructions
from spectune.data.tasks import (
    CAPACITY,
    CATEGORIES,
    UNITS,
    WORDS,
    answers_match,
    generate_task_set,
    normalize_answer,
    write_task_set,
)
from spectune.errors import SpectuneError


def _solve(ex: InstructionExample) -> str:
    """Answer a task instruction by parsing it, independently of the generators."""
    text = ex.instruction
    nums = [int(n) for n in re.findall(r"\d+", text)]
    after_colon = text.split(":", 1)[-1].strip().rstrip("?")
    if ex.category == "largest":
        assert len(nums) == 4 and len(set(nums)) == 4
        return str(max(nums))
    if ex.category == "convert":
        m = re.fullmatch(r"Convert (\d+) (\w+) to (\w+)\. Answer with the number only\.", text)
        factor = {(src, dst): f for src, dst, f in UNITS}[(m.group(2), m.group(3))]
        return str(int(m.group(1)) * factor)
    if ex.category == "last_word":
        return after_colon.split(", ")[-1]
    if ex.category == "snake_case":
        return "_".join(w.lower() for w in after_colon.split())
    if ex.category == "reverse":
        return ", ".join(after_colon.split(", ")[::-1])
    if ex.category == "next_number":
        seq = nums[:4]
        steps = {b - a for a, b in zip(seq, seq[1:], strict=False)}
        assert len(steps) == 1
        return str(seq[-1] + steps.pop())
    if ex.category == "initials":
        return "".join(w[0] for w in after_colon.split())
    if ex.category == "add":
        assert len(nums) == 2
        return str(nums[0] + nums[1])
    raise AssertionError(ex.category)


def test_answers_are_correct():
    train, heldout = generate_task_set(400, 160, seed=3)
    for ex in train + heldout:
        assert ex.response == _solve(ex), ex
        assert ex.context == ""
    assert {ex.category for ex in heldout} == set(CATEGORIES)


def test_words_are_plain_lowercase_and_distinct():
    assert len(set(WORDS)) == len(WORDS) >= 90
    assert all(w.isalpha() and w.islower() for w in WORDS)


def test_splits_are_disjoint_and_balanced():
    train, heldout = generate_task_set(2000, 200, seed=0)
    assert len(train) == 2000 and len(heldout) == 200
    train_q = [ex.instruction for ex in train]
    heldout_q = [ex.instruction for ex in heldout]
    assert len(set(train_q)) == len(train_q)
    assert len(set(heldout_q)) == len(heldout_q)
    assert not set(train_q) & set(heldout_q)
    for name in CATEGORIES:
        assert sum(ex.category == name for ex in train) == 250
        assert sum(ex.category == name for ex in heldout) == 25


def test_uneven_counts_and_category_subset():
    train, heldout = generate_task_set(10, 3, seed=1, categories=["add", "reverse", "largest"])
    assert [sum(ex.category == c for ex in train) for c in ("add", "reverse", "largest")] == [
        4,
        3,
        3,
    ]
    assert [ex.category for ex in heldout] == ["add", "reverse", "largest"]
    only_train, none = generate_task_set(5, 0, seed=1)
    assert len(only_train) == 5 and none == []


def test_same_seed_same_examples_and_heldout_stable_under_n_train():
    a = generate_task_set(100, 40, seed=7)
    assert generate_task_set(100, 40, seed=7) == a
    assert generate_task_set(100, 40, seed=8) != a
    # the held-out split does not depend on how much training data is asked for
    assert generate_task_set(300, 40, seed=7)[1] == a[1]


def test_write_task_set_byte_identical(tmp_path):
    f1 = write_task_set(tmp_path / "a", n_train=64, n_eval=16, seed=5)
    f2 = write_task_set(tmp_path / "b", n_train=64, n_eval=16, seed=5)
    f3 = write_task_set(tmp_path / "c", n_train=64, n_eval=16, seed=6)
    for name in ("train", "heldout", "manifest"):
        assert getattr(f1, name).read_bytes() == getattr(f2, name).read_bytes()
    assert f1.train.read_bytes() != f3.train.read_bytes()
    assert f1.train.name == "train.jsonl" and f1.heldout.name == "heldout.jsonl"
    # the files are Dolly JSONL that load back to the generated examples
    train, heldout = generate_task_set(64, 16, seed=5)
    assert load_instructions(f1.train, format="dolly") == train
    assert load_instructions(f1.heldout) == heldout
    first = json.loads(f1.train.read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == ["instruction", "context", "response", "category"]
    manifest = json.loads(f1.manifest.read_text())
    assert manifest["seed"] == 5 and manifest["n_train"] == 64 and manifest["n_eval"] == 16
    assert manifest["categories"]["add"] == {"train": 8, "heldout": 2}
    # rewriting replaces the files and leaves other files alone
    (tmp_path / "a" / "notes.txt").write_text("mine")
    write_task_set(tmp_path / "a", n_train=8, n_eval=8, seed=5)
    assert len(load_instructions(f1.train)) == 8
    assert (tmp_path / "a" / "notes.txt").read_text() == "mine"


def test_seed_zero_pinned():
    """Same seed, same data on every machine: pin a few seed-0 held-out questions."""
    _, heldout = generate_task_set(0, 8, seed=0)
    assert [(ex.category, ex.instruction, ex.response) for ex in heldout[:3]] == [
        ("largest", "Which is the largest number: 72, 39, 84, 60?", "84"),
        ("convert", "Convert 26 meters to millimeters. Answer with the number only.", "26000"),
        (
            "last_word",
            "What is the last word in this list: rocket, sugar, bread, forest?",
            "forest",
        ),
    ]


def test_bad_arguments(tmp_path):
    with pytest.raises(SpectuneError, match="not both 0"):
        generate_task_set(0, 0)
    with pytest.raises(SpectuneError, match=">= 0"):
        generate_task_set(-1, 5)
    with pytest.raises(SpectuneError, match="categories must be distinct names"):
        generate_task_set(5, 5, categories=["add", "poetry"])
    with pytest.raises(SpectuneError, match="categories must be distinct names"):
        generate_task_set(5, 5, categories=["add", "add"])
    with pytest.raises(SpectuneError, match="'convert' cannot make 400 distinct"):
        generate_task_set(400, 0, categories=["convert"])
    assert CAPACITY["convert"] // 2 == 343
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpectuneError, match="is a file"):
        write_task_set(tmp_path / "file", 4, 4)


@pytest.mark.parametrize(
    "prediction,reference,same",
    [
        ("81", "81", True),
        ("  81.  ", "81", True),
        ('"81."', "81", True),
        ("'Paris'", "paris", True),
        ("\u201cParis\u201d", "Paris", True),
        ("Tea, Lamp, FOX", "tea, lamp, fox", True),
        ("tea,  lamp,\nfox", "tea, lamp, fox", True),
        ("tea lamp fox", "tea, lamp, fox", False),
        ("\uff21\uff22\uff23", "abc", True),  # full-width letters (NFKC)
        ("3.5", "3.5", True),
        ("3.5", "35", False),
        ("81...", "81", True),
        ("The answer is 81.", "81", False),
        ("green_apple", "`green_apple`", True),
        ("green apple", "green_apple", False),
        ("", "81", False),
    ],
)
def test_answers_match(prediction, reference, same):
    assert answers_match(prediction, reference) is same


def test_normalize_answer():
    assert normalize_answer("  Hello   World.  ") == "hello world"
    assert normalize_answer("'\"x\"'") == "x"
    assert normalize_answer("a.b.") == "a.b"


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
@pytest.mark.real_weights
def test_base_model_scores_low_on_heldout():
    """SmolLM2-135M-Instruct answers at length, so exact match before training is near 0."""
    from spectune.judging.accuracy import exact_match
    from spectune.models.loading import load_default_model

    model, tok = load_default_model()
    _, heldout = generate_task_set(0, 40, seed=0)
    result = exact_match(model, tok, heldout, max_new_tokens=16, batch_size=20)
    assert result.n == 40
    assert result.accuracy <= 0.1, result.predictions
