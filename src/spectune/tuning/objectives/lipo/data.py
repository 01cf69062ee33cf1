"""LiPO's ranked lists: made from the task set (graded by the checker), read from and written
to JSONL lists files, cut to a list size, and the labels psi of a list."""

from __future__ import annotations

import difflib
import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectune._io import write_text
from spectune.data.examples import InstructionExample, _read_text
from spectune.data.tasks import WORDS, normalize_answer
from spectune.errors import SpectuneError


@dataclass(frozen=True)
class RankedList:
    """One prompt and its graded responses.

    Attributes:
        prompt: the user turn.
        responses: K >= 2 responses.
        scores: their labels psi (higher is better), not all equal.
        category: task category (generated lists) or "".
        reference: the task's exact answer (generated lists), else None.
    """

    prompt: str
    responses: tuple[str, ...]
    scores: tuple[float, ...]
    category: str = ""
    reference: str | None = None

    def best(self) -> str:
        """The highest-scored response (the first of equals)."""
        return self.responses[max(range(len(self.scores)), key=lambda i: (self.scores[i], -i))]

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "responses": list(self.responses),
            "scores": list(self.scores),
        }


@dataclass
class ListStats:
    """What reading or making lists kept and skipped."""

    n_read: int = 0
    n_kept: int = 0
    n_too_short: int = 0
    n_all_equal: int = 0
    n_cut: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


def keep_list(lst: RankedList, stats: ListStats) -> bool:
    """Whether a list is usable (two responses or more, not all scores equal); a list that is
    not is counted in ``stats``."""
    if len(lst.responses) < 2:
        stats.n_too_short += 1
        return False
    if len(set(lst.scores)) < 2:
        stats.n_all_equal += 1
        return False
    return True


_VERBOSE = (
    "The answer is {}.",
    "Sure! The answer is: {}",
    "{}. I hope this helps!",
    "Let me think step by step. The result is {}.",
)


def grade(answer: str, reference: str) -> int:
    """The task checker's graded label of an answer.

    3: exact match (:func:`~spectune.data.tasks.answers_match`); 2: correct but verbose
    (the normalized reference stands in the answer as a whole word); 1: near miss (numbers
    within max(1, 10%) of the reference, text with a ``difflib`` similarity >= 0.6); 0: wrong.
    """
    a, r = normalize_answer(answer), normalize_answer(reference)
    if a == r:
        return 3
    if r and re.search(rf"(?<!\w){re.escape(r)}(?!\w)", a):
        return 2
    try:
        x, y = float(a), float(r)
    except ValueError:
        return int(difflib.SequenceMatcher(None, a, r).ratio() >= 0.6)
    return int(abs(x - y) <= max(1.0, 0.1 * abs(y)))


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?\d+", text) is not None


def _near_miss(ref: str, rng: random.Random) -> str:
    if _is_int(ref):
        y = int(ref)
        step = rng.randint(1, max(1, abs(y) // 10))
        return str(y + rng.choice((-1, 1)) * step)
    if ", " in ref:
        items = ref.split(", ")
        i = rng.randrange(len(items) - 1)
        items[i], items[i + 1] = items[i + 1], items[i]
        return ", ".join(items)
    if "_" in ref:
        return ref.replace("_", " ", 1)
    if len(ref) > 2:
        return ref[:-2] + ref[-1] + ref[-2] if ref[-1] != ref[-2] else ref[:-1]
    return ref + ref[-1:]


def _wrong(ref: str, others: list[str], rng: random.Random) -> str:
    pool = [o for o in others if o != ref]
    if pool:
        return rng.choice(pool)
    if _is_int(ref):
        return str(int(ref) * 3 + 17)
    return " ".join(rng.sample(WORDS, 2))


def make_lists(
    examples: list[InstructionExample],
    list_size: int,
    *,
    seed: int | str,
) -> tuple[list[RankedList], ListStats]:
    """Ranked lists from task-set examples (their ``response`` is the exact answer).

    Each list holds the exact answer and K - 1 distinct others drawn (seeded) from verbose
    answers, near misses and wrong answers (another question's answer of the same category),
    in a shuffled order, each labelled by :func:`grade`.

    Args:
        examples: task-set examples.
        list_size: K >= 2.
        seed: the seed (an int or a string).

    Returns:
        ``(lists, stats)``.
    """
    by_cat: dict[str, list[str]] = {}
    for ex in examples:
        by_cat.setdefault(ex.category, []).append(ex.response)
    stats = ListStats()
    lists = []
    for i, ex in enumerate(examples):
        rng = random.Random(f"spectune-lipo:{seed}:{i}")
        ref = ex.response
        first = [
            rng.choice(_VERBOSE).format(ref),
            _near_miss(ref, rng),
            _wrong(ref, by_cat[ex.category], rng),
        ]
        more = [
            rng.choice(_VERBOSE).format(_near_miss(ref, rng)),
            _near_miss(ref, rng),
            _wrong(ref, by_cat[ex.category], rng),
            rng.choice(_VERBOSE).format(_wrong(ref, by_cat[ex.category], rng)),
            _wrong(ref, by_cat[ex.category], rng),
        ]
        rng.shuffle(first)
        rng.shuffle(more)
        responses = [ref]
        for cand in first + more:
            if len(responses) == list_size:
                break
            if cand and cand not in responses:
                responses.append(cand)
        n_extra = 0
        while len(responses) < list_size:  # long lists: more verbose wrong answers
            cand = _VERBOSE[n_extra % len(_VERBOSE)].format(_wrong(ref, by_cat[ex.category], rng))
            n_extra += 1
            if cand not in responses or n_extra > 50:
                responses.append(cand)
        rng.shuffle(responses)
        lst = RankedList(
            ex.instruction,
            tuple(responses),
            tuple(float(grade(r, ref)) for r in responses),
            ex.category,
            ref,
        )
        stats.n_read += 1
        if keep_list(lst, stats):
            lists.append(lst)
    stats.n_kept = len(lists)
    return lists, stats


def _number(value: Any) -> bool:
    """A finite int or float that a float holds (a 400-digit integer does not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def cut_list(lst: RankedList, list_size: int, *, seed: int | str) -> RankedList:
    """``lst`` cut to ``list_size`` responses (in list order): one best and one worst response
    (seeded among ties, so the list keeps a pair) and a seeded sample of the others;
    unchanged when it is not longer."""
    if len(lst.responses) <= list_size:
        return lst
    rng = random.Random(f"spectune-lipo-cut:{seed}:{lst.prompt}")
    k = range(len(lst.responses))
    top = rng.choice([i for i in k if lst.scores[i] == max(lst.scores)])
    low = rng.choice([i for i in k if lst.scores[i] == min(lst.scores)])
    rest = [i for i in k if i not in (top, low)]
    keep = sorted({top, low, *rng.sample(rest, list_size - len({top, low}))})
    return RankedList(
        lst.prompt,
        tuple(lst.responses[i] for i in keep),
        tuple(lst.scores[i] for i in keep),
        lst.category,
        lst.reference,
    )


def cut_lists(
    lists: list[RankedList],
    list_size: int | None,
    *,
    seed: int | str,
    stats: ListStats | None = None,
) -> list[RankedList]:
    """:func:`cut_list` over ``lists``; a list left with all-equal scores is skipped (both
    counted in ``stats``)."""
    if list_size is None:
        return list(lists)
    out = []
    for lst in lists:
        short = cut_list(lst, list_size, seed=seed)
        if short is not lst and stats is not None:
            stats.n_cut += 1
        if len(set(short.scores)) < 2:
            if stats is not None:
                stats.n_all_equal += 1
            continue
        out.append(short)
    if stats is not None:
        stats.n_kept = len(out)
    return out


def load_lists(
    path: str | os.PathLike[str], list_size: int | None = None, *, seed: int | str = 0
) -> tuple[list[RankedList], ListStats]:
    """Read ranked lists from a JSONL file: one ``{"prompt", "responses", "scores"}`` per line.

    Args:
        path: the file.
        list_size: lists with more responses are cut to a seeded sample of this many (None:
            kept whole).
        seed: seed of that sample.

    Returns:
        ``(lists, stats)``: the usable lists, and how many were read, cut, and skipped for
        fewer than two responses or all-equal scores.

    Raises:
        SpectuneError: a missing file, malformed JSON, a missing or mistyped field, a score
            that is not a finite number, as many scores as responses not given (each naming
            the file and the line), or no usable list at all.
    """
    path = Path(path)
    text = _read_text(path)
    stats = ListStats()
    lists = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"lists file {path}, line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpectuneError(
                f"{where}: malformed JSON ({exc.msg} at column {exc.colno}); "
                "each line must be one JSON object with prompt, responses "
                "and scores"
            ) from None
        if not isinstance(rec, dict):
            raise SpectuneError(
                f"{where}: expected a JSON object with prompt, responses and "
                f"scores, got {type(rec).__name__}"
            )
        for key in ("prompt", "responses", "scores"):
            if key not in rec:
                raise SpectuneError(f"{where}: required field {key!r} is missing")
        prompt, responses, scores = rec["prompt"], rec["responses"], rec["scores"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise SpectuneError(f"{where}: field 'prompt' must be a non-empty string")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise SpectuneError(f"{where}: field 'responses' must be a list of strings")
        if not isinstance(scores, list):
            raise SpectuneError(
                f"{where}: field 'scores' must be a list of numbers, got {type(scores).__name__}"
            )
        bad = [s for s in scores if not _number(s)]
        if bad:
            shown = repr(bad[0])
            if len(shown) > 40:
                shown = f"{shown[:24]}... ({len(shown)} characters)"
            raise SpectuneError(
                f"{where}: scores must be finite numbers of at most 1.8e308 "
                f"in absolute value, got {shown}"
            )
        if len(scores) != len(responses):
            raise SpectuneError(
                f"{where}: {len(responses)} responses but {len(scores)} scores; "
                "give one score per response"
            )
        stats.n_read += 1
        lst = RankedList(
            prompt,
            tuple(responses),
            tuple(float(x) for x in scores),
            str(rec.get("category") or ""),
        )
        if keep_list(lst, stats):
            lists.append(lst)
    lists = cut_lists(lists, list_size, seed=seed, stats=stats)
    stats.n_kept = len(lists)
    if not lists:
        raise SpectuneError(
            f"lists file {path}: no usable list among {stats.n_read} ({stats.n_too_short} with "
            f"fewer than two responses, {stats.n_all_equal} with all-equal scores); a list "
            "needs at least two responses with different scores"
        )
    return lists, stats


def write_lists(path: str | os.PathLike[str], lists: list[RankedList]) -> Path:
    """Write lists as the JSONL :func:`load_lists` reads (atomically)."""
    text = "".join(json.dumps(lst.to_json(), ensure_ascii=False) + "\n" for lst in lists)
    write_text(Path(path), text)
    return Path(path)
