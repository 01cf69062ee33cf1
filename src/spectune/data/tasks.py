"""The bundled default task set: short instructions with exact, checkable answers.

spectune writes this data set itself, deterministically from a seed (no download). Each
category is a small generator of one question and its single correct answer:

============  =====================================================  ==================
category      example instruction                                    answer
============  =====================================================  ==================
largest       Which is the largest number: 34, 81, 17, 56?           81
convert       Convert 7 kilometers to meters. Answer with the ...    7000
last_word     What is the last word in this list: fox, lamp, tea?    tea
snake_case    Write in snake_case: Green Apple Tree                  green_apple_tree
reverse       Reverse the order of these words: fox, lamp, tea       tea, lamp, fox
next_number   What number comes next: 4, 7, 10, 13? Answer with ...  16
initials      Write the first letter of each word, joined ...: ...   fls
add           What is 23 + 58? Answer with the number only.          81
============  =====================================================  ==================

Why these: SmolLM2-135M-Instruct answers every one of them at length ("The largest number is
81.", "To solve this, we need to add..."), so its greedy exact-match accuracy before training
is about 0%; a few hundred CPU steps of LoRA teach it to answer with the bare result. The
first five categories are then nearly always right; ``next_number``, ``initials`` and ``add``
need arithmetic or spelling and stay partly wrong, so the set separates stronger from weaker
fine-tunes instead of saturating. Measured figures are in the project's report.

Train and held-out splits never share an instruction (within a category the first distinct
questions drawn go to the held-out split, the next ones to training). The same ``seed`` gives
the same examples and byte-identical files on every machine: generation uses only Python's
``random.Random`` seeded with a string (stable across platforms and Python versions).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spectune._io import write_json, write_text
from spectune.data.examples import InstructionExample
from spectune.errors import SpectuneError

#: Version of the generators; bumped whenever a change alters the generated examples.
TASKS_VERSION = 1

#: Common short English nouns used by the word-list categories (all lowercase, distinct).
WORDS = (
    "apple", "river", "stone", "cloud", "horse", "table", "chair", "bread", "glass", "paper",
    "music", "garden", "window", "candle", "mirror", "pencil", "button", "basket", "bottle",
    "forest", "island", "rocket", "tiger", "zebra", "lemon", "mango", "olive", "peach", "grape",
    "cherry", "violin", "guitar", "piano", "drum", "flute", "castle", "bridge", "tower", "valley",
    "desert", "ocean", "planet", "comet", "moon", "star", "sun", "rain", "snow", "wind", "storm",
    "cat", "dog", "fox", "wolf", "bear", "deer", "duck", "goat", "lion", "mouse", "owl", "frog",
    "fish", "bird", "ship", "boat", "train", "truck", "car", "bike", "road", "door", "lamp",
    "clock", "coin", "ring", "key", "box", "book", "pen", "cup", "hat", "shoe", "sock", "coat",
    "milk", "salt", "rice", "corn", "bean", "egg", "cake", "soup", "tea", "honey", "sugar",
)  # fmt: skip

#: Metric conversions ``(from, to, factor)`` used by the ``convert`` category.
UNITS = (
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("meters", "millimeters", 1000),
    ("centimeters", "millimeters", 10),
    ("kilograms", "grams", 1000),
    ("liters", "milliliters", 1000),
    ("tonnes", "kilograms", 1000),
)

NUMBER_ONLY = "Answer with the number only."

Generator = Callable[[random.Random], tuple[str, str]]


def _largest(rng: random.Random) -> tuple[str, str]:
    nums = rng.sample(range(10, 100), 4)
    return f"Which is the largest number: {', '.join(map(str, nums))}?", str(max(nums))


def _convert(rng: random.Random) -> tuple[str, str]:
    src, dst, factor = rng.choice(UNITS)
    n = rng.randint(2, 99)
    return f"Convert {n} {src} to {dst}. {NUMBER_ONLY}", str(n * factor)


def _last_word(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return f"What is the last word in this list: {', '.join(words)}?", words[-1]


def _snake_case(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(2, 3))
    return f"Write in snake_case: {' '.join(w.capitalize() for w in words)}", "_".join(words)


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return f"Reverse the order of these words: {', '.join(words)}", ", ".join(reversed(words))


def _next_number(rng: random.Random) -> tuple[str, str]:
    start, step = rng.randint(1, 60), rng.randint(2, 11)
    seq = ", ".join(str(start + i * step) for i in range(4))
    return f"What number comes next: {seq}? {NUMBER_ONLY}", str(start + 4 * step)


def _initials(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return (
        f"Write the first letter of each word, joined together: {' '.join(words)}",
        "".join(w[0] for w in words),
    )


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}? {NUMBER_ONLY}", str(a + b)


#: The categories, in the order they are generated and listed.
CATEGORIES: dict[str, Generator] = {
    "largest": _largest,
    "convert": _convert,
    "last_word": _last_word,
    "snake_case": _snake_case,
    "reverse": _reverse,
    "next_number": _next_number,
    "initials": _initials,
    "add": _add,
}

#: Distinct questions each category can produce (the most examples it can give, both splits).
CAPACITY = {
    "largest": math.perm(90, 4),
    "convert": len(UNITS) * 98,
    "last_word": sum(math.perm(len(WORDS), k) for k in (3, 4, 5)),
    "snake_case": sum(math.perm(len(WORDS), k) for k in (2, 3)),
    "reverse": sum(math.perm(len(WORDS), k) for k in (3, 4)),
    "next_number": 60 * 10,
    "initials": sum(math.perm(len(WORDS), k) for k in (3, 4)),
    "add": 90 * 90,
}


# --------------------------------------------------------------------------- answer checking


_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Normalize an answer for exact-match comparison.

    Unicode NFKC, lower case, whitespace runs collapsed to one space, then surrounding
    whitespace, quotes (``"'`\u201c\u201d\u2018\u2019``) and trailing periods removed. Inner
    punctuation is kept: ``"tea, lamp"`` and ``"tea lamp"`` differ.

    Args:
        text: a model answer or a reference.

    Returns:
        The normalized string.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _SPACES.sub(" ", text).strip()
    previous = None
    while previous != text:  # peel quotes and final periods in any nesting: '"81."' -> 81
        previous = text
        text = text.strip(" \"'`\u201c\u201d\u2018\u2019").rstrip(".").strip()
    return text


def answers_match(prediction: str, reference: str) -> bool:
    """Normalized exact match (:func:`normalize_answer` on both sides)."""
    return normalize_answer(prediction) == normalize_answer(reference)


# --------------------------------------------------------------------------- generation


def _split_counts(total: int, k: int) -> list[int]:
    """``total`` spread over ``k`` categories as evenly as possible, earlier ones first."""
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def _distinct(name: str, seed: int, count: int) -> list[tuple[str, str]]:
    """The first ``count`` distinct questions a category's generator draws for ``seed``."""
    rng = random.Random(f"spectune-tasks-v{TASKS_VERSION}:{seed}:{name}")
    generator = CATEGORIES[name]
    seen: dict[str, str] = {}
    draws = 0
    while len(seen) < count:
        question, answer = generator(rng)
        seen.setdefault(question, answer)
        draws += 1
        if draws > 50 * count + 1000:  # pragma: no cover - guarded by CAPACITY below
            raise SpectuneError(f"task category {name!r} ran out of distinct questions")
    return list(seen.items())


def generate_task_set(
    n_train: int,
    n_eval: int,
    seed: int = 0,
    categories: Sequence[str] | None = None,
) -> tuple[list[InstructionExample], list[InstructionExample]]:
    """Generate the default task set's train and held-out examples.

    Args:
        n_train: training examples in all (spread evenly over the categories).
        n_eval: held-out examples in all (spread evenly over the categories).
        seed: the seed; the same seed gives the same examples.
        categories: category names to use (default all of :data:`CATEGORIES`, in that order).

    Returns:
        ``(train, heldout)``; each example's ``category`` names its generator and its
        ``response`` is the exact answer. Train is shuffled; held-out is grouped by category.

    Raises:
        SpectuneError: negative counts, no examples asked for, unknown categories, or more
            examples than a category can make distinct.
    """
    if n_train < 0 or n_eval < 0 or n_train + n_eval == 0:
        raise SpectuneError(
            f"n_train and n_eval must be >= 0 and not both 0, got {n_train} and {n_eval}"
        )
    names = list(CATEGORIES) if categories is None else list(categories)
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown or not names or len(set(names)) != len(names):
        raise SpectuneError(
            f"categories must be distinct names from {', '.join(CATEGORIES)}; got {names}"
        )
    train_counts = _split_counts(n_train, len(names))
    eval_counts = _split_counts(n_eval, len(names))
    train: list[InstructionExample] = []
    heldout: list[InstructionExample] = []
    for name, n_tr, n_ev in zip(names, train_counts, eval_counts, strict=True):
        if n_tr + n_ev > CAPACITY[name] // 2:
            raise SpectuneError(
                f"task category {name!r} cannot make {n_tr + n_ev} distinct questions (at most "
                f"{CAPACITY[name] // 2}); ask for fewer examples"
            )
        items = _distinct(name, seed, n_tr + n_ev)
        heldout += [InstructionExample(q, a, category=name) for q, a in items[:n_ev]]
        train += [InstructionExample(q, a, category=name) for q, a in items[n_ev:]]
    random.Random(f"spectune-tasks-v{TASKS_VERSION}:{seed}:shuffle").shuffle(train)
    return train, heldout


@dataclass(frozen=True)
class TaskSetFiles:
    """Where :func:`write_task_set` put the task set.

    Attributes:
        train: Dolly-layout JSONL of the training examples.
        heldout: Dolly-layout JSONL of the held-out examples.
        manifest: JSON with the seed, counts, categories and generator version.
    """

    train: Path
    heldout: Path
    manifest: Path


def _jsonl(examples: Sequence[InstructionExample]) -> str:
    return "".join(json.dumps(ex.to_dolly(), ensure_ascii=False) + "\n" for ex in examples)


def write_task_set(
    out_dir: str | os.PathLike[str],
    n_train: int = 2000,
    n_eval: int = 200,
    seed: int = 0,
    categories: Sequence[str] | None = None,
) -> TaskSetFiles:
    """Write the default task set as Dolly-layout JSONL files (atomically).

    Files: ``train.jsonl``, ``heldout.jsonl`` and ``task_set.json`` (the manifest: seed,
    counts per split and category, generator version). Existing files of these names are
    replaced; nothing else in ``out_dir`` is touched. The same arguments always give
    byte-identical files.

    Args:
        out_dir: folder to write into (created if missing).
        n_train: training examples in all.
        n_eval: held-out examples in all.
        seed: the seed.
        categories: category names (default all).

    Returns:
        The paths, as a :class:`TaskSetFiles`.

    Raises:
        SpectuneError: see :func:`generate_task_set`; ``out_dir`` is a file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SpectuneError(f"task set folder {out} is a file; pass a folder")
    train, heldout = generate_task_set(n_train, n_eval, seed, categories)
    files = TaskSetFiles(out / "train.jsonl", out / "heldout.jsonl", out / "task_set.json")
    write_text(files.train, _jsonl(train))
    write_text(files.heldout, _jsonl(heldout))
    names = list(CATEGORIES) if categories is None else list(categories)
    write_json(
        files.manifest,
        {
            "name": "spectune default task set",
            "version": TASKS_VERSION,
            "seed": seed,
            "n_train": len(train),
            "n_eval": len(heldout),
            "categories": {
                c: {
                    "train": sum(ex.category == c for ex in train),
                    "heldout": sum(ex.category == c for ex in heldout),
                }
                for c in names
            },
            "format": "dolly",
            "checker": "normalized exact match (spectune.data.tasks.answers_match)",
        },
    )
    return files


# --------------------------------------------------------------------------- rationales

_NUMS = re.compile(r"\d+")


def _after_colon(instruction: str) -> str:
    return instruction.split(":", 1)[1].strip().rstrip("?").strip()


def task_rationale(example: InstructionExample) -> str | None:
    """How the answer of a task-set example is reached, in one or two sentences (the
    "rationale" of distilling step by step), or None for a category it does not know.

    The generator knows each answer's derivation; this rebuilds it from the instruction, so
    it works on files written by :func:`write_task_set` too. The rationale ends with the
    answer itself.

    Args:
        example: a task-set example (its ``category`` names the generator).

    Returns:
        The rationale text, e.g. ``"23 + 58: 20 + 50 = 70 and 3 + 8 = 11, so the sum is 81."``.
    """
    q, a, cat = example.instruction, example.response, example.category
    if cat == "largest":
        return f"Compare {_after_colon(q)} one by one: the largest is {a}."
    if cat == "convert":
        m = re.match(r"Convert (\d+) (\w+) to (\w+)\.", q)
        if not m:
            return None
        n, src, dst = m.groups()
        factor = int(a) // int(n) if int(n) else 0
        return f"One {src[:-1]} is {factor} {dst}, so {n} x {factor} = {a}."
    if cat == "last_word":
        return f"The list is {_after_colon(q)}; its last word is {a}."
    if cat == "snake_case":
        words = _after_colon(q).lower().split()
        return f"Lower-case {', '.join(words)} and join them with underscores: {a}."
    if cat == "reverse":
        return f"Read {_after_colon(q)} from the end: {a}."
    if cat == "next_number":
        nums = [int(x) for x in _NUMS.findall(q.split("?")[0])]
        if len(nums) < 2:
            return None
        step = nums[1] - nums[0]
        return f"Each number is {step} more than the one before, so {nums[-1]} + {step} = {a}."
    if cat == "initials":
        words = _after_colon(q).split()
        return f"The first letters of {', '.join(words)} are {', '.join(w[0] for w in words)}: {a}."
    if cat == "add":
        nums = [int(x) for x in _NUMS.findall(q)][:2]
        if len(nums) != 2:
            return None
        x, y = nums
        tens, ones = x // 10 * 10 + y // 10 * 10, x % 10 + y % 10
        return f"{x} + {y}: {x // 10 * 10} + {y // 10 * 10} = {tens} and {x % 10} + {y % 10} = {ones}, so {tens} + {ones} = {a}."
    return None


__all__ = [
    "CATEGORIES",
    "TASKS_VERSION",
    "TaskSetFiles",
    "answers_match",
    "generate_task_set",
    "normalize_answer",
    "task_rationale",
    "write_task_set",
]
