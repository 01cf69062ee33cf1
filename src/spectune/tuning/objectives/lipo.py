"""LiPO: listwise preference optimization (Liu et al. 2024, "LiPO: Listwise Preference
Optimization through Learning-to-Rank"), with DPO as its two-response special case.

Data: per prompt x a list of K responses y_1..y_K with graded labels psi_i (higher is better).
``data.train: tasks`` makes the lists from the bundled task set (:func:`make_lists`: the exact
answer, verbose answers, near misses and wrong answers, each labelled by :func:`grade`, the
task checker's graded form: 3 exact, 2 correct but verbose, 1 near miss, 0 wrong);
``lipo.lists: on_policy`` instead samples K - 1 answers per prompt from the base model and
adds the exact answer (all graded by the checker). A ``.jsonl`` file gives one list per line,
``{"prompt": ..., "responses": [...], "scores": [...]}`` (:func:`load_lists`): lists with
fewer than two responses or all-equal scores are skipped and counted (an error if none
remain), a score that is not a finite number a float holds (NaN, Infinity, 1e400, a 400-digit
integer) is an error naming the file and line, and a list longer
than ``lipo.list_size`` is cut to ``list_size`` responses (:func:`cut_list`; held-out lists
to ``lipo.eval_list_size``, 4 by default whatever K training uses, so runs compare).

Losses, over the implicit rewards s_i = beta * (log pi(y_i|x) - log pi_ref(y_i|x)) (sequence
log-probabilities: the sum over the response tokens and the end-of-turn token), per list, then
averaged over the lists of a batch (``lipo.loss``):

- ``lambda`` (LiPO-lambda): L = -sum_{psi_i > psi_j} Delta_ij log sigmoid(s_i - s_j) with the
  LambdaLoss weight Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|, gain G = 2^psi - 1
  (psi: the list's scores rescaled min-max to [0, K - 1], :func:`list_labels`, so scores of
  any finite scale work: Elo-like 1500/900, 0-100, 1e300; the paper's labels are bounded
  grades or win rates, and the task checker's grades 0-3 of a list of 4 stay as they are),
  discount D(tau) = log(1 + tau), tau_i the 1-based rank of s_i under the current rewards
  (descending; ties keep list order). The weights are constants of the step (no gradient
  through the ranks), and the sum over pairs is not normalized (the paper's formula).
- ``dpo``: the pairwise DPO logistic loss -log sigmoid(s_i - s_j) averaged over every pair
  with psi_i > psi_j; with K = 2 it is exactly DPO's sigmoid loss (tested against TRL).
- ``softmax``: the listwise softmax cross-entropy -sum_i w_i log softmax(s)_i with
  w = (psi - min psi) / sum(psi - min psi) (labels shifted so the worst response weighs 0).

Reference policy: the frozen base model the user starts from (float32, or the run's
``model_dtype``). Its
log-probabilities of every training and held-out response are computed **once**, before
training, with the untouched base (:meth:`LiPO.prepare`), and travel in the dataset next to
the tokens (as TRL's ``precompute_ref_log_probs``). So no reference model, no second copy of
the weights and no adapter switching exist during training, and the objective works the same
way with every registered method: LoRA and its variants, FROG (whose relevance-scaled init
need not start at the base), full fine-tuning (where a live reference would need a second
full model) and QLoRA (whose reference is the float base it was quantized from, so its
rewards at step 0 already hold what 4-bit quantization changed, as the recipe's "before"
judging does). The price is one forward pass per response before training (about a third of
a training step's work per response) and, on ``--resume``, doing it again (it is
deterministic: eval mode, no dropout). A live reference (a ``Method.reference(model)``
context that disables the adapter, zeroes FROG's deltas, or keeps a frozen copy for full
fine-tuning) would cost a second forward per response at every step, a hook in every method,
and for full fine-tuning a second model in memory; the precomputed one needs none of it.

Each list's prompt runs once per forward and its K responses continue from the prompt's KV
cache (:func:`shared_prompt_logps`; ``lipo.share_prompt``): on the task set the prompt is
most of every sequence, so a list of 4 costs about one sequence and a half, not four.

Judged (``Judging.extras``, before and after, on held-out lists made from the held-out
questions, or ``data.eval`` / an ``eval_fraction`` split of a lists file):

- ``reward_accuracy``: over every held-out pair with psi_i > psi_j, the fraction with
  s_i > s_j, a tie counting 1/2. Before training the policy is the reference, so every
  implicit reward is 0 and the accuracy is 0.5 by definition (chance);
- ``reward_ndcg``: NDCG of the list ordered by s (gain 2^psi - 1, psi rescaled to [0, K - 1],
  discount 1/log2(1 + rank)); tied scores get the mean discount of the ranks they share
  (the expected NDCG under a random order of the ties), so before training it is the NDCG of
  a random order;
- ``logp_accuracy``, ``logp_ndcg``: the same with the policy's own sequence log-probability
  as the score: how the model itself ranks the responses, meaningful before and after;
- ``n_lists``, ``n_pairs``.

The held-out instruction examples every run is judged on (exact-match accuracy, held-out loss)
are the task set's held-out questions, or for a lists file each held-out list's best response.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune import _check as check
from spectune.errors import SpectuneError
from spectune.tuning.objectives import register_objective
from spectune.tuning.objectives.base import JudgeContext, Objective, RunData, TrainData

if TYPE_CHECKING:
    import torch

    from spectune.data.instructions import InstructionExample
    from spectune.tuning.config import TuneConfig

LOSSES = ("lambda", "dpo", "softmax")
LIST_SOURCES = ("generated", "on_policy")


@dataclass
class LipoSection:
    """The ``lipo:`` section."""

    loss: str = field(
        default="lambda",
        metadata={
            "help": "'lambda' (LiPO-lambda), 'dpo' (pairwise DPO logistic over every pair; "
            "K = 2 is DPO) or 'softmax' (listwise softmax cross-entropy)."
        },
    )
    beta: float = field(
        default=0.1,
        metadata={"help": "beta of the implicit reward beta * log(pi / pi_ref)."},
    )
    list_size: int = field(
        default=4,
        metadata={
            "help": "K, responses per list: generated / sampled per prompt; longer lists of a "
            "file are cut to a seeded sample of K."
        },
    )
    eval_list_size: int = field(
        default=4,
        metadata={
            "help": "responses per held-out list the ranking metrics are judged on (the same "
            "for every loss and list_size, so runs compare); longer lists of a file are cut."
        },
    )
    lists: str = field(
        default="generated",
        metadata={
            "help": "task set only: 'generated' (exact, verbose, near-miss and wrong answers) "
            "or 'on_policy' (K - 1 answers sampled from the base model plus the exact one), "
            "graded by the checker."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "on_policy: sampling temperature."})
    max_new_tokens: int = field(
        default=24, metadata={"help": "on_policy: longest sampled answer (tokens)."}
    )
    share_prompt: bool = field(
        default=True,
        metadata={
            "help": "run each list's prompt once and continue its K responses from the KV "
            "cache (same log-probs, about K times less prompt work); false: every response "
            "with its prompt. Off by itself under activation checkpointing."
        },
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "sequences per forward pass for the reference and judged log-probs."},
    )
    memory_gb: float | None = field(
        default=None,
        metadata={
            "help": "memory a training batch may take (GB), checked before training; None: "
            "the machine's available memory."
        },
    )

    def __post_init__(self) -> None:
        check.choice("lipo.loss", self.loss, LOSSES)
        check.choice("lipo.lists", self.lists, LIST_SOURCES)
        self.beta = check.number("lipo.beta", self.beta)
        if not self.beta > 0:
            raise SpectuneError(f"lipo.beta must be > 0, got {self.beta!r}")
        self.list_size = check.integer("lipo.list_size", self.list_size, minimum=2)
        self.eval_list_size = check.integer("lipo.eval_list_size", self.eval_list_size, minimum=2)
        self.temperature = check.number("lipo.temperature", self.temperature)
        if not self.temperature > 0:
            raise SpectuneError(f"lipo.temperature must be > 0, got {self.temperature!r}")
        self.max_new_tokens = check.integer("lipo.max_new_tokens", self.max_new_tokens, minimum=1)
        self.batch_size = check.integer("lipo.batch_size", self.batch_size, minimum=1)
        if not isinstance(self.share_prompt, bool):
            raise SpectuneError(
                f"lipo.share_prompt must be true or false, got {self.share_prompt!r}"
            )
        if self.memory_gb is not None:
            self.memory_gb = check.number("lipo.memory_gb", self.memory_gb)
            if not self.memory_gb > 0:
                raise SpectuneError(f"lipo.memory_gb must be > 0 or null, got {self.memory_gb!r}")


# --------------------------------------------------------------------------- lists


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
        return {"prompt": self.prompt, "responses": list(self.responses),
                "scores": list(self.scores)}  # fmt: skip


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


def _keep(lst: RankedList, stats: ListStats) -> bool:
    if len(lst.responses) < 2:
        stats.n_too_short += 1
        return False
    if len(set(lst.scores)) < 2:
        stats.n_all_equal += 1
        return False
    return True


_VERBOSE = ("The answer is {}.", "Sure! The answer is: {}", "{}. I hope this helps!",
            "Let me think step by step. The result is {}.")  # fmt: skip


def grade(answer: str, reference: str) -> int:
    """The task checker's graded label of an answer.

    3: exact match (:func:`~spectune.data.tasks.answers_match`); 2: correct but verbose
    (the normalized reference stands in the answer as a whole word); 1: near miss (numbers
    within max(1, 10%) of the reference, text with a ``difflib`` similarity >= 0.6); 0: wrong.
    """
    from spectune.data.tasks import normalize_answer

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
    from spectune.data.tasks import WORDS

    return " ".join(rng.sample(WORDS, 2))


def make_lists(examples: list[InstructionExample], list_size: int, *, seed: int | str,
               ) -> tuple[list[RankedList], ListStats]:  # fmt: skip
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
        first = [rng.choice(_VERBOSE).format(ref), _near_miss(ref, rng),
                 _wrong(ref, by_cat[ex.category], rng)]  # fmt: skip
        more = [rng.choice(_VERBOSE).format(_near_miss(ref, rng)), _near_miss(ref, rng),
                _wrong(ref, by_cat[ex.category], rng), rng.choice(_VERBOSE).format(
                    _wrong(ref, by_cat[ex.category], rng)),
                _wrong(ref, by_cat[ex.category], rng)]  # fmt: skip
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
        lst = RankedList(ex.instruction, tuple(responses),
                         tuple(float(grade(r, ref)) for r in responses), ex.category, ref)  # fmt: skip
        stats.n_read += 1
        if _keep(lst, stats):
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


#: the highest label of a list: K - 1 for a list of K responses, at most this (2^30 - 1 is
#: the largest gain, exact in float32).
MAX_LABEL = 30


def list_labels(scores: list[float] | tuple[float, ...]) -> list[float]:
    """The labels psi of one list: its scores rescaled linearly (min-max) to [0, K - 1], K the
    number of responses (at most :data:`MAX_LABEL`): the lowest score gets 0, the highest
    K - 1, the others keep their relative gaps. So the gain 2^psi - 1 is at most 2^(K-1) - 1
    whatever the scores' scale (Elo-like 1500/900, 0-100, 1e300 or 1e-300), and the task
    checker's grades 0-3 of a list of 4 that holds a 0 and a 3 are unchanged. All-equal scores
    give all 0 (no pair)."""
    lo, hi = min(scores), max(scores)
    top = float(min(len(scores) - 1, MAX_LABEL))
    half = hi / 2 - lo / 2  # halves: the span of two finite floats may overflow, this cannot
    if not half > 0:
        return [0.0] * len(scores)
    return [min(top, max(0.0, (s / 2 - lo / 2) / half * top)) for s in scores]


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
    return RankedList(lst.prompt, tuple(lst.responses[i] for i in keep),
                      tuple(lst.scores[i] for i in keep), lst.category, lst.reference)  # fmt: skip


def cut_lists(lists: list[RankedList], list_size: int | None, *, seed: int | str,
              stats: ListStats | None = None) -> list[RankedList]:  # fmt: skip
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


def load_lists(path: str | os.PathLike[str], list_size: int | None = None, *,
               seed: int | str = 0) -> tuple[list[RankedList], ListStats]:  # fmt: skip
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
    from spectune.data.instructions import _read_text

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
            raise SpectuneError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno}); "
                                "each line must be one JSON object with prompt, responses "
                                "and scores") from None  # fmt: skip
        if not isinstance(rec, dict):
            raise SpectuneError(f"{where}: expected a JSON object with prompt, responses and "
                                f"scores, got {type(rec).__name__}")  # fmt: skip
        for key in ("prompt", "responses", "scores"):
            if key not in rec:
                raise SpectuneError(f"{where}: required field {key!r} is missing")
        prompt, responses, scores = rec["prompt"], rec["responses"], rec["scores"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise SpectuneError(f"{where}: field 'prompt' must be a non-empty string")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise SpectuneError(f"{where}: field 'responses' must be a list of strings")
        if not isinstance(scores, list):
            raise SpectuneError(f"{where}: field 'scores' must be a list of numbers, got "
                                f"{type(scores).__name__}")  # fmt: skip
        bad = [s for s in scores if not _number(s)]
        if bad:
            shown = repr(bad[0])
            if len(shown) > 40:
                shown = f"{shown[:24]}... ({len(shown)} characters)"
            raise SpectuneError(f"{where}: scores must be finite numbers of at most 1.8e308 "
                                f"in absolute value, got {shown}")  # fmt: skip
        if len(scores) != len(responses):
            raise SpectuneError(f"{where}: {len(responses)} responses but {len(scores)} scores; "
                                "give one score per response")  # fmt: skip
        stats.n_read += 1
        lst = RankedList(prompt, tuple(responses), tuple(float(x) for x in scores),
                         str(rec.get("category") or ""))  # fmt: skip
        if _keep(lst, stats):
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
    from spectune._io import write_text

    text = "".join(json.dumps(lst.to_json(), ensure_ascii=False) + "\n" for lst in lists)
    write_text(Path(path), text)
    return Path(path)


# --------------------------------------------------------------------------- losses


def _pairs(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, K, K) bool: entry (i, j) is a pair with psi_i > psi_j, both real."""
    both = mask[:, :, None] & mask[:, None, :]
    return (labels[:, :, None] > labels[:, None, :]) & both


def ranks(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1-based rank of each score in its list, descending (ties keep list order; padding
    last). Shapes (B, K) -> (B, K) float."""
    import torch

    filled = scores.detach().masked_fill(~mask, float("-inf"))
    order = torch.argsort(filled, dim=1, descending=True, stable=True)
    tau = torch.empty_like(order)
    pos = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order)
    tau.scatter_(1, order, pos)
    return tau.to(scores.dtype)


def graded_labels(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`list_labels` of every list of a batch: each row's real entries rescaled to
    [0, K - 1] (K its real entries, at most :data:`MAX_LABEL` + 1); padding 0. (B, K) ->
    (B, K), no gradient."""
    import torch

    with torch.no_grad():
        lo = labels.masked_fill(~mask, float("inf")).min(dim=1, keepdim=True)[0]
        hi = labels.masked_fill(~mask, float("-inf")).max(dim=1, keepdim=True)[0]
        top = (mask.sum(dim=1, keepdim=True) - 1).clamp(min=0, max=MAX_LABEL).to(labels.dtype)
        half = hi / 2 - lo / 2
        scaled = (labels / 2 - lo / 2) / torch.where(half > 0, half, torch.ones_like(half))
        scaled = torch.minimum(scaled.clamp(min=0.0) * top, top)
        return scaled.masked_fill(~mask | ~(half > 0), 0.0)


def lambda_weights(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LambdaLoss weights |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|, G = 2^psi - 1 with psi
    the labels rescaled to [0, K - 1] (:func:`graded_labels`), D(tau) = log(1 + tau), tau the
    ranks under ``scores``. (B, K) -> (B, K, K), no gradient."""
    import torch

    with torch.no_grad():
        gain = torch.pow(2.0, graded_labels(labels, mask)) - 1
        inv_d = 1.0 / torch.log1p(ranks(scores, mask))
        return (gain[:, :, None] - gain[:, None, :]).abs() * (
            inv_d[:, :, None] - inv_d[:, None, :]
        ).abs()


def lipo_loss(rewards: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
              *, loss: str = "lambda") -> torch.Tensor:  # fmt: skip
    """The list loss of a batch, averaged over its lists (see the module docstring).

    Args:
        rewards: implicit rewards s, (B, K).
        labels: psi, (B, K).
        mask: (B, K) bool, False on padding (lists shorter than K); None: all real.
        loss: ``"lambda"``, ``"dpo"`` or ``"softmax"``.

    Returns:
        A 0-d tensor. Lists without a pair (all-equal labels) do not count.
    """
    import torch
    import torch.nn.functional as F

    check.choice("loss", loss, LOSSES)
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    labels = labels.to(rewards.dtype)
    pairs = _pairs(labels, mask)
    n_pairs = pairs.sum(dim=(1, 2))
    valid = n_pairs > 0
    if loss == "softmax":
        shifted = graded_labels(labels, mask)  # psi - min psi, scaled: the weights are the same
        weights = shifted / shifted.sum(dim=1, keepdim=True).clamp(min=1e-12)
        logp = torch.log_softmax(rewards.masked_fill(~mask, float("-inf")), dim=1)
        per_list = -(weights * logp.masked_fill(~mask, 0.0)).sum(dim=1)
    else:
        diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K): s_i - s_j
        terms = -F.logsigmoid(diff).masked_fill(~pairs, 0.0)
        if loss == "lambda":
            per_list = (terms * lambda_weights(rewards, labels, mask)).sum(dim=(1, 2))
        else:
            per_list = terms.sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    if not bool(valid.any()):
        return rewards.sum() * 0.0
    return per_list[valid].mean()


# --------------------------------------------------------------------------- ranking metrics


def pair_accuracy(scores: list[float], labels: list[float]) -> tuple[float, int]:
    """(sum of correct pair outcomes, number of pairs) of one list: over pairs with
    psi_i > psi_j, 1 when s_i > s_j, 1/2 when equal."""
    hit, n = 0.0, 0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if labels[i] > labels[j]:
                n += 1
                hit += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return hit, n


def ndcg(scores: list[float], labels: list[float]) -> float:
    """NDCG of one list ordered by ``scores`` (gain 2^psi - 1, psi the labels rescaled to
    [0, K - 1] by :func:`list_labels`, discount 1/log2(1 + rank)); tied scores share the mean
    discount of their ranks. NaN for all-equal labels."""
    gains = [2.0**lab - 1 for lab in list_labels(labels)]
    disc = [1.0 / math.log2(1 + r) for r in range(1, len(scores) + 1)]
    ideal = sum(g * d for g, d in zip(sorted(gains, reverse=True), disc, strict=True))
    if ideal <= 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    dcg, pos = 0.0, 0
    while pos < len(order):
        end = pos
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[pos]]:
            end += 1
        mean_d = sum(disc[pos : end + 1]) / (end + 1 - pos)
        dcg += mean_d * sum(gains[order[k]] for k in range(pos, end + 1))
        pos = end + 1
    return dcg / ideal


def ranking_metrics(score_lists: list[list[float]], label_lists: list[list[float]],
                    prefix: str) -> dict[str, float]:  # fmt: skip
    """``<prefix>_accuracy`` (pairwise, over all pairs of all lists) and ``<prefix>_ndcg``
    (mean over lists)."""
    hit = n = 0.0
    ndcgs = []
    for s, lab in zip(score_lists, label_lists, strict=True):
        h, k = pair_accuracy(s, lab)
        hit, n = hit + h, n + k
        ndcgs.append(ndcg(s, lab))
    ndcgs = [v for v in ndcgs if not math.isnan(v)]
    return {f"{prefix}_accuracy": hit / n if n else float("nan"),
            f"{prefix}_ndcg": sum(ndcgs) / len(ndcgs) if ndcgs else float("nan")}  # fmt: skip


# --------------------------------------------------------------------------- log-probs


def sequence_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Sum of the log-probabilities of the labelled tokens of each row, (N, T) -> (N,); the
    output head runs only at labelled positions (for models :func:`decoder_and_head` splits)."""
    import torch
    import torch.nn.functional as F

    from spectune.models.forward import decoder_and_head
    from spectune.models.tokenizer import IGNORE_INDEX

    target = labels[:, 1:]
    keep = target != IGNORE_INDEX  # (N, T - 1)
    parts = decoder_and_head(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = head(hidden[:, :-1][keep]).float()  # (labelled tokens, vocab)
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        logits = out.logits[:, :-1][keep].float()
    token_logp = -F.cross_entropy(logits, target[keep], reduction="none")
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(target)
    out = torch.zeros(input_ids.shape[0], dtype=token_logp.dtype, device=token_logp.device)
    return out.index_add(0, rows[keep], token_logp)


def _cache_kwarg(decoder: Any) -> str | None:
    """The decoder's keyword for a KV cache (``cache`` from transformers 5.x, earlier
    ``past_key_values``); None: it takes none."""
    import inspect

    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def _checkpointing(model: Any) -> bool:
    from spectune.models.forward import unwrap_model as _inner

    inner = _inner(model)
    flag = getattr(type(inner), "is_activation_checkpointing", None)
    if flag is not None:
        return bool(inner.is_activation_checkpointing)
    return any(getattr(m, "gradient_checkpointing", False) for m in inner.modules())


def shared_prompt_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Sequence log-probs of every response with each list's prompt run **once**: the prompt
    (left-padded, B rows) goes through the decoder with a KV cache, the cache rows are picked
    for each response (``list_index``) and the responses (right-padded, N rows) continue from
    it. The same values as :func:`sequence_logps` on prompt + response (tested), and the
    gradient reaches the prompt's keys and values through the cache; a K-response list costs
    one prompt instead of K (the prompt is most of a task-set sequence).

    Methods with a per-forward effect see two forwards: FROG's guided noise (training only)
    is drawn once for the prompts and once for the responses.

    Returns:
        (N,), or None when the model cannot do it (no decoder/head split, no KV cache
        argument, activation checkpointing, which turns the cache off).
    """
    import torch
    import torch.nn.functional as F

    from spectune.models.forward import decoder_and_head
    from spectune.models.tokenizer import IGNORE_INDEX

    parts = decoder_and_head(model)
    if parts is None or "prompt_ids" not in batch or _checkpointing(model):
        return None
    decoder, head = parts
    kw = _cache_kwarg(decoder)
    if kw is None:
        return None
    from transformers import DynamicCache

    p_ids, p_mask = batch["prompt_ids"], batch["prompt_mask"]  # (B, Lp), left-padded
    a_ids, a_mask, a_lab = batch["answer_ids"], batch["answer_mask"], batch["answer_labels"]
    idx = batch["list_index"]  # (N,): the list of each response row
    cache = DynamicCache()
    p_pos = (p_mask.cumsum(1) - 1).clamp(min=0)
    out = decoder(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True,
                  **{kw: cache})  # fmt: skip
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
    if cache.get_seq_length() != p_ids.shape[1]:
        return None
    last = out.last_hidden_state[:, -1]  # (B, hidden): predicts each answer's first token
    cache.batch_select_indices(idx)
    lengths = p_mask.sum(1)[idx]  # (N,)
    a_pos = lengths[:, None] + torch.arange(a_ids.shape[1], device=a_ids.device)[None]
    mask = torch.cat([p_mask[idx], a_mask], dim=1)  # (N, Lp + La)
    out = decoder(input_ids=a_ids, attention_mask=mask, position_ids=a_pos, use_cache=True,
                  **{kw: cache})  # fmt: skip
    hidden = torch.cat([last[idx][:, None], out.last_hidden_state[:, :-1]], dim=1)  # (N, La)
    keep = a_lab != IGNORE_INDEX
    logits = head(hidden[keep]).float()  # (labelled tokens, vocab)
    token_logp = -F.cross_entropy(logits, a_lab[keep], reduction="none")
    rows = torch.arange(a_ids.shape[0], device=a_ids.device)[:, None].expand_as(a_lab)
    values = torch.zeros(a_ids.shape[0], dtype=token_logp.dtype, device=token_logp.device)
    return values.index_add(0, rows[keep], token_logp)


def list_logps(model: Any, batch: dict[str, torch.Tensor], *, share_prompt: bool = True,
               ) -> torch.Tensor:  # fmt: skip
    """Sequence log-probs of the responses of a :class:`ListCollator` batch, (N,): with the
    prompt shared (:func:`shared_prompt_logps`) where the model allows, else every response
    with its prompt (:func:`sequence_logps`). One forward of ``model`` (under DDP, of its
    wrapper: :func:`spectune.models.forward.as_forward`)."""
    from spectune.models.forward import as_forward

    def forward(module: Any) -> torch.Tensor:
        if share_prompt:
            shared = shared_prompt_logps(module, batch)
            if shared is not None:
                return shared
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        return sequence_logps(module, ids, mask, labels)

    return as_forward(model, forward)


def _prompt_length(feature: dict[str, Any]) -> int | None:
    """Length of the prompt every response of a tokenized list starts with (the tokens before
    the first label); None when they do not share one."""
    from spectune.models.tokenizer import IGNORE_INDEX

    lengths = {next(i for i, x in enumerate(lab) if x != IGNORE_INDEX) for lab in feature["labels"]}
    if len(lengths) != 1:
        return None
    n = lengths.pop()
    first = feature["input_ids"][0][:n]
    if n < 1 or any(ids[:n] != first for ids in feature["input_ids"]):
        return None
    return n


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    import torch

    length = max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def _batch(seqs: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    from spectune.models.tokenizer import IGNORE_INDEX

    return {"input_ids": _pad([s["input_ids"] for s in seqs], pad_id),
            "attention_mask": _pad([[1] * len(s["input_ids"]) for s in seqs], 0),
            "labels": _pad([s["labels"] for s in seqs], IGNORE_INDEX)}  # fmt: skip


def score_features(model: Any, features: list[dict[str, Any]], pad_id: int, *,
                   batch_size: int = 32, progress: bool = False, desc: str = "log-probs",
                   share_prompt: bool = True) -> list[list[float]]:  # fmt: skip
    """The model's sequence log-probability of every response of every tokenized list, in
    eval mode without gradients (mode restored afterwards)."""
    import torch

    from spectune._progress import track
    from spectune.models.forward import model_device as _device

    order = sorted(range(len(features)), key=lambda i: max(map(len, features[i]["input_ids"])))
    groups, size = [[]], 0  # lists in length order, about batch_size responses a forward
    for i in order:
        k = len(features[i]["input_ids"])
        if groups[-1] and size + k > batch_size:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += k
    collate = ListCollator(pad_id)
    out: list[list[float]] = [[] for _ in features]
    device = _device(model)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            for group in track(groups, len(groups), desc, enabled=progress, unit="batch"):
                batch = {k: v.to(device) for k, v in collate([features[i] for i in group]).items()}
                logps = list_logps(model, batch, share_prompt=share_prompt).tolist()
                pos = 0
                for i in group:
                    k = len(features[i]["input_ids"])
                    out[i] = logps[pos : pos + k]
                    pos += k
    finally:
        if was_training:
            model.train()
    return out


# --------------------------------------------------------------------------- features


def tokenize_lists(lists: list[RankedList], tokenizer: Any, *, max_length: int,
                   system: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """One feature per list: ``input_ids`` / ``labels`` (K token lists), ``scores`` (K): the
    list's labels, its scores rescaled to [0, K - 1] (:func:`list_labels`, after dropping).

    Responses longer than ``max_length`` are cut at the right; a response left without a
    labelled token is dropped, and a list left with fewer than two responses or all-equal
    scores is dropped (all counted).
    """
    from spectune.data.instructions import InstructionExample, tokenize_example
    from spectune.models.tokenizer import IGNORE_INDEX

    feats = []
    n_seq = n_trunc = n_resp_dropped = n_list_dropped = longest = n_tokens = 0
    for lst in lists:
        ids_k, lab_k, scores = [], [], []
        for response, score in zip(lst.responses, lst.scores, strict=True):
            n_seq += 1
            ids, labels = tokenize_example(tokenizer, InstructionExample(lst.prompt, response),
                                           system=system)  # fmt: skip
            longest = max(longest, len(ids))
            if len(ids) > max_length:
                n_trunc += 1
                ids, labels = ids[:max_length], labels[:max_length]
            if not any(lab != IGNORE_INDEX for lab in labels[1:]):
                n_resp_dropped += 1
                continue
            ids_k.append(ids)
            lab_k.append(labels)
            scores.append(float(score))
        if len(scores) < 2 or len(set(scores)) < 2:
            n_list_dropped += 1
            continue
        n_tokens += sum(len(i) for i in ids_k)
        feats.append({"input_ids": ids_k, "labels": lab_k, "scores": list_labels(scores)})
    info = {"n_lists": len(lists), "n_kept": len(feats), "n_sequences": n_seq,
            "n_truncated": n_trunc, "n_responses_dropped": n_resp_dropped,
            "n_dropped": n_list_dropped, "n_tokens": n_tokens, "max_length": int(max_length),
            "longest": longest}  # fmt: skip
    return feats, info


class ListCollator:
    """Batch tokenized lists: every response of every list as one row (right padding), plus
    ``scores`` / ``ref_logps`` / ``list_mask`` of shape (lists, K_max) (K_max: the longest
    list of the batch; rows are the lists' responses in order, list by list)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        if not features:
            raise SpectuneError("cannot collate an empty batch of lists")
        seqs = [{"input_ids": ids, "labels": lab} for f in features
                for ids, lab in zip(f["input_ids"], f["labels"], strict=True)]  # fmt: skip
        batch = _batch(seqs, self.pad_token_id)
        k_max = max(len(f["scores"]) for f in features)
        scores = torch.zeros(len(features), k_max)
        ref = torch.zeros(len(features), k_max)
        mask = torch.zeros(len(features), k_max, dtype=torch.bool)
        for b, f in enumerate(features):
            k = len(f["scores"])
            scores[b, :k] = torch.as_tensor(f["scores"], dtype=torch.float32)
            ref[b, :k] = torch.as_tensor(f.get("ref_logps", [0.0] * k), dtype=torch.float32)
            mask[b, :k] = True
        out = {**batch, "scores": scores, "ref_logps": ref, "list_mask": mask}
        n_prompt = [_prompt_length(f) for f in features]
        if all(n is not None for n in n_prompt):
            out.update(self._shared(features, n_prompt))
        return out

    def _shared(self, features: list[dict[str, Any]], n_prompt: list[int]) -> dict[str, Any]:
        """The prompts (left-padded) and answers (right-padded) apart, for
        :func:`shared_prompt_logps`."""
        import torch

        from spectune.models.tokenizer import IGNORE_INDEX

        prompts = [f["input_ids"][0][:n] for f, n in zip(features, n_prompt, strict=True)]
        width = max(len(p) for p in prompts)
        p_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        p_mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for b, p in enumerate(prompts):
            p_ids[b, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
            p_mask[b, width - len(p) :] = 1
        answers, labels, index = [], [], []
        for b, (f, n) in enumerate(zip(features, n_prompt, strict=True)):
            for ids, lab in zip(f["input_ids"], f["labels"], strict=True):
                answers.append(ids[n:])
                labels.append(lab[n:])
                index.append(b)
        return {"prompt_ids": p_ids, "prompt_mask": p_mask,
                "answer_ids": _pad(answers, self.pad_token_id),
                "answer_mask": _pad([[1] * len(a) for a in answers], 0),
                "answer_labels": _pad(labels, IGNORE_INDEX),
                "list_index": torch.as_tensor(index, dtype=torch.long)}  # fmt: skip


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no way to tell: do not check
        return None


def batch_memory_bytes(model_config: Any, n_sequences: int, length: int, n_labelled: int,
                       *, checkpointing: bool = False) -> int:  # fmt: skip
    """Rough bytes of one float32 training forward + backward of ``n_sequences`` rows of
    ``length`` tokens: activations kept for backward (Korthikanti et al.'s 34 h + 5 a T bytes
    per token and layer at 16 bits, doubled for float32; one layer's worth with activation
    checkpointing) plus the output head's logits and their gradient at the labelled tokens."""
    h = int(getattr(model_config, "hidden_size", 0) or 0)
    layers = int(getattr(model_config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(model_config, "num_attention_heads", 0) or 0)
    vocab = int(getattr(model_config, "vocab_size", 0) or 0)
    per_layer = n_sequences * length * (68 * h + 10 * heads * length)
    kept = per_layer * (2 if checkpointing else layers) + (n_sequences * length * h * 4 * layers
                                                           if checkpointing else 0)  # fmt: skip
    return kept + 3 * 4 * n_labelled * vocab


def _batch_shape(train: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(longest list K, longest sequence, most labelled tokens of a list) of tokenized lists."""
    k = max(len(f["scores"]) for f in train)
    t = max(len(ids) for f in train for ids in f["input_ids"])
    n_lab = max(sum(sum(1 for x in lab[1:] if x != -100) for lab in f["labels"])
                for f in train)  # fmt: skip
    return k, t, n_lab


@dataclass
class LipoState:
    """What :meth:`LiPO.prepare` makes once per run: the tokenized training and held-out lists
    with the reference log-probs, and how they were made."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    info: dict[str, Any]
    section: LipoSection = field(default_factory=LipoSection)
    validation: list[dict[str, Any]] = field(default_factory=list)


class LiPO(Objective):
    description = "listwise preference optimization (LiPO-lambda; DPO and softmax baselines)"
    sections = {"lipo": LipoSection}

    def check(self, config: TuneConfig) -> None:
        sec = config.section("lipo")
        if sec.lists == "on_policy" and config.data.train != "tasks":
            raise SpectuneError(
                "lipo.lists: on_policy grades sampled answers with the task checker, so it needs "
                "data.train: tasks; with a lists file use lipo.lists: generated (the default)"
            )

    # -- data ------------------------------------------------------------------------------

    def load_data(self, config: TuneConfig) -> RunData:
        from spectune.data.instructions import InstructionExample

        sec, d = config.section("lipo"), config.data
        if d.train == "tasks":
            from spectune.data.tasks import TASKS_VERSION, generate_task_set

            train_ex, heldout = generate_task_set(d.n_train, d.n_eval, seed=config.seed)
            held_lists, held_stats = make_lists(
                heldout, sec.eval_list_size, seed=f"{config.seed}:heldout"
            )
            if sec.lists == "on_policy":
                train, stats = list(train_ex), None  # sampled in prepare()
            else:
                train, stats = make_lists(train_ex, sec.list_size, seed=config.seed)
            info = {"source": "spectune task set", "version": TASKS_VERSION, "seed": config.seed,
                    "lists": sec.lists, "list_size": sec.list_size,
                    "eval_list_size": sec.eval_list_size, "n_train": len(train),
                    "n_eval": len(heldout), "heldout_lists": held_stats.to_dict()}  # fmt: skip
            if stats is not None:
                info["train_lists"] = stats.to_dict()
            return RunData(train, heldout, info, extra={"heldout_lists": held_lists})
        train, stats = load_lists(d.train, None, seed=config.seed)
        if d.eval is not None:
            held_lists, held_stats = load_lists(d.eval, sec.eval_list_size, seed=config.seed)
            split = f"file {d.eval}"
        else:
            if len(train) < 2:
                raise SpectuneError(f"lists file {d.train} holds {len(train)} usable list; a "
                                    "held-out split needs at least 2 (or give data.eval)")  # fmt: skip
            order = list(range(len(train)))
            random.Random(f"spectune-split:{config.seed}").shuffle(order)
            n_hold = min(len(train) - 1, max(1, math.ceil(d.eval_fraction * len(train))))
            held = set(order[:n_hold])
            held_lists = [lst for i, lst in enumerate(train) if i in held]
            train = [lst for i, lst in enumerate(train) if i not in held]
            held_stats = ListStats(n_read=len(held_lists))
            held_lists = cut_lists(held_lists, sec.eval_list_size, seed=config.seed,
                                   stats=held_stats)  # fmt: skip
            split = f"{n_hold} of the file's lists (eval_fraction {d.eval_fraction}, seeded)"
        train = cut_lists(train, sec.list_size, seed=config.seed, stats=stats)
        if not train:
            raise SpectuneError(f"lists file {d.train}: no training list keeps two different "
                                f"scores when cut to lipo.list_size={sec.list_size}")  # fmt: skip
        held_lists = held_lists[: d.n_eval]
        heldout = [InstructionExample(lst.prompt, lst.best(), category=lst.category)
                   for lst in held_lists]  # fmt: skip
        info = {"source": d.train, "heldout": split, "list_size": sec.list_size,
                "eval_list_size": sec.eval_list_size,
                "n_train": len(train), "n_eval": len(heldout), "train_lists": stats.to_dict()}  # fmt: skip
        info["heldout_lists"] = held_stats.to_dict()
        return RunData(train, heldout, info, extra={"heldout_lists": held_lists})

    # -- per-run state ---------------------------------------------------------------------

    def prepare(self, ctx: JudgeContext) -> LipoState:
        """Build on-policy lists (if asked), tokenize, and compute the reference log-probs of
        every training, validation and held-out response with the base model, once."""
        from spectune.models import hardware
        from spectune.models.tokenizer import pad_token_id
        from spectune.tuning.methods.base import load_float_base, resolve_model_dtype

        config, sec = ctx.config, ctx.config.section("lipo")
        # the base as the method loads it (model_dtype, attention kernel): rewards start at 0
        dtype, _ = resolve_model_dtype(config.model_dtype)
        base = load_float_base(ctx.model_dir, dtype, attn_implementation=config.attn_implementation)
        base = hardware.to_compute_device(base)
        info: dict[str, Any] = {}
        train_lists, val_lists = ctx.data.train, ctx.data.validation
        if sec.lists == "on_policy" and config.data.train == "tasks":
            train_lists, stats = sample_lists(base, ctx.tokenizer, ctx.data.train, sec,
                                              system=config.data.system, seed=config.seed,
                                              progress=ctx.progress)  # fmt: skip
            info["on_policy_lists"] = stats.to_dict()
            if val_lists:
                val_lists, _ = sample_lists(base, ctx.tokenizer, val_lists, sec,
                                            system=config.data.system, seed=config.seed + 1,
                                            progress=ctx.progress)  # fmt: skip
        kw = {"max_length": config.data.max_length, "system": config.data.system}
        train, tinfo = tokenize_lists(train_lists, ctx.tokenizer, **kw)
        heldout, hinfo = tokenize_lists(ctx.data.extra["heldout_lists"], ctx.tokenizer, **kw)
        validation, _ = tokenize_lists(val_lists, ctx.tokenizer, **kw) if val_lists else ([], {})
        if val_lists and not validation:
            raise SpectuneError(
                f"lipo: no validation list left after tokenization at data.max_length="
                f"{config.data.max_length}; raise data.max_length or data.n_validation"
            )
        if not train:
            raise SpectuneError(
                f"lipo: no training list left after tokenization ({tinfo['n_dropped']} of "
                f"{tinfo['n_lists']} lost their pairs at data.max_length="
                f"{config.data.max_length}); raise data.max_length"
            )
        if not (isinstance(ctx.data.extra, dict) and ctx.data.extra.get("memory_checked")):
            self._check_memory(config, base.config, *_batch_shape(train))
        pad = pad_token_id(ctx.tokenizer)
        kw2 = {
            "batch_size": sec.batch_size,
            "progress": ctx.progress,
            "share_prompt": sec.share_prompt,
        }
        for feats, desc in ((train, "reference log-probs (train)"),
                            (validation, "reference log-probs (validation)"),
                            (heldout, "reference log-probs (held-out)")):  # fmt: skip
            if not feats:
                continue
            for f, ref in zip(feats, score_features(base, feats, pad, desc=desc, **kw2),
                              strict=True):  # fmt: skip
                f["ref_logps"] = ref
        del base
        info.update(tokenize={**tinfo, "heldout": hinfo}, reference=f"base model ({dtype}), "
                    "log-probs precomputed once before training")  # fmt: skip
        return LipoState(train, heldout, info, sec, validation)

    def check_data(self, config: TuneConfig, data: RunData, tokenizer: Any,
                   model_dir: Path) -> None:  # fmt: skip
        """Before the results folder exists: the training lists survive tokenization and a
        training batch fits ``lipo.memory_gb`` (or the available memory). On-policy lists
        are checked at their largest: K - 1 answers of ``lipo.max_new_tokens`` tokens."""
        from transformers import AutoConfig

        from spectune.data.instructions import InstructionExample, tokenize_example
        from spectune.models.tokenizer import IGNORE_INDEX

        sec, d = config.section("lipo"), config.data
        kw = {"max_length": d.max_length, "system": d.system}
        if sec.lists == "on_policy" and d.train == "tasks":
            k, t, n_lab = sec.list_size, 0, 0
            for ex in data.train:
                ids, labels = tokenize_example(tokenizer, InstructionExample(ex.instruction,
                                               ex.response), system=d.system)  # fmt: skip
                lab = sum(1 for x in labels[1:] if x != IGNORE_INDEX) + sec.max_new_tokens
                t = max(t, min(d.max_length, len(ids) + sec.max_new_tokens))
                n_lab = max(n_lab, k * min(lab, d.max_length))
        else:
            train, tinfo = tokenize_lists(data.train, tokenizer, **kw)
            if not train:
                raise SpectuneError(
                    f"lipo: no training list left after tokenization ({tinfo['n_dropped']} of "
                    f"{tinfo['n_lists']} lost their pairs at data.max_length={d.max_length}); "
                    "raise data.max_length"
                )
            k, t, n_lab = _batch_shape(train)
        self._check_memory(config, AutoConfig.from_pretrained(model_dir), k, t, n_lab)
        if isinstance(data.extra, dict):
            data.extra["memory_checked"] = True

    def _check_memory(self, config: TuneConfig, model_config: Any, k: int, t: int,
                      n_lab: int) -> None:  # fmt: skip
        """Refuse a training batch of lists of ``k`` responses of up to ``t`` tokens (``n_lab``
        labelled tokens per list) bigger than ``lipo.memory_gb`` or the available memory."""
        sec = config.section("lipo")
        args = config.training_arguments()
        b = int(args["per_device_train_batch_size"])
        need = batch_memory_bytes(model_config, b * k, t, b * n_lab,
                                  checkpointing=config.checkpointing())  # fmt: skip
        limit = sec.memory_gb * 1e9 if sec.memory_gb is not None else _available_bytes()
        if limit is not None and need > limit:
            where = "lipo.memory_gb" if sec.memory_gb is not None else "available memory"
            raise SpectuneError(
                f"lipo: a training batch of {b} list(s) x {k} responses x {t} tokens needs about "
                f"{need / 1e9:.1f} GB of activations, more than the {limit / 1e9:.1f} GB allowed "
                f"({where}); lower train.per_device_train_batch_size (raise "
                "train.gradient_accumulation_steps to keep the batch), lipo.list_size or "
                "data.max_length, or set train.gradient_checkpointing: true"
            )

    def _state(self, config: TuneConfig, data: RunData, tokenizer: Any,
               ctx: JudgeContext | None) -> LipoState:  # fmt: skip
        if ctx is not None and isinstance(ctx.state, LipoState):
            return ctx.state
        from spectune.models.loading import resolve_model_dir

        model_dir = ctx.model_dir if ctx is not None else resolve_model_dir(config.model)
        return self.prepare(JudgeContext(config, tokenizer, data, model_dir))

    def features(self, config: TuneConfig, data: RunData, tokenizer: Any,
                 ctx: JudgeContext | None = None) -> TrainData:  # fmt: skip
        from spectune.models.tokenizer import pad_token_id

        state = self._state(config, data, tokenizer, ctx)
        info = {**state.info["tokenize"], **{k: v for k, v in state.info.items()
                                             if k != "tokenize"}}  # fmt: skip
        return TrainData(state.train, ListCollator(pad_token_id(tokenizer)), info)

    def validation_features(self, config: TuneConfig, data: RunData, tokenizer: Any,
                            ctx: JudgeContext | None = None) -> TrainData:  # fmt: skip
        """The validation lists, tokenized with their reference log-probs in ``prepare``."""
        from spectune.models.tokenizer import pad_token_id

        state = self._state(config, data, tokenizer, ctx)
        return TrainData(state.validation, ListCollator(pad_token_id(tokenizer)),
                         {"n_lists": len(state.validation)})  # fmt: skip

    # -- loss ------------------------------------------------------------------------------

    def compute_loss(self, trainer: Any, model: Any, inputs: dict[str, Any], *,
                     return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:  # fmt: skip
        """The list loss of the batch (``lipo.loss``) on the implicit rewards."""
        sec = _section_of(trainer)
        logps = list_logps(model, inputs, share_prompt=sec.share_prompt)
        mask = inputs["list_mask"]
        policy = logps.new_zeros(mask.shape)
        policy = policy.masked_scatter(mask, logps)  # rows are the lists' responses in order
        rewards = sec.beta * (policy - inputs["ref_logps"].to(policy.dtype))
        loss = lipo_loss(rewards, inputs["scores"], mask, loss=sec.loss)
        if num_items_in_batch is not None and getattr(trainer, "model_accepts_loss_kwargs", False):
            # the Trainer then takes the loss as already divided over gradient accumulation
            loss = loss / max(1, int(getattr(trainer, "current_gradient_accumulation_steps", 1)))
        return (loss, {"rewards": rewards.detach()}) if return_outputs else loss

    # -- judging ---------------------------------------------------------------------------

    def judge(self, ctx: JudgeContext, model: Any, phase: str) -> dict[str, Any]:
        """Ranking quality of held-out lists (see the module docstring): before training the
        policy is the reference (its log-probs are reused, implicit rewards all 0)."""
        from spectune.models.tokenizer import pad_token_id

        state = self._state(ctx.config, ctx.data, ctx.tokenizer, ctx)
        sec = ctx.config.section("lipo")
        feats = state.heldout
        if not feats:
            return {}
        refs = [f["ref_logps"] for f in feats]
        if phase == "before":
            policy = refs
        else:
            policy = score_features(model(), feats, pad_token_id(ctx.tokenizer),
                                    batch_size=sec.batch_size, progress=ctx.progress,
                                    desc="held-out list log-probs",
                                    share_prompt=sec.share_prompt)  # fmt: skip
        labels = [f["scores"] for f in feats]
        rewards = [[sec.beta * (p - r) for p, r in zip(ps, rs, strict=True)]
                   for ps, rs in zip(policy, refs, strict=True)]  # fmt: skip
        out = {
            **ranking_metrics(rewards, labels, "reward"),
            **ranking_metrics(policy, labels, "logp"),
        }
        out["n_lists"] = len(feats)
        out["n_pairs"] = sum(pair_accuracy([0.0] * len(lab), lab)[1] for lab in labels)
        return out


def _section_of(trainer: Any) -> LipoSection:
    """The ``lipo:`` section of the run a Trainer trains (through its objective state)."""
    state = getattr(trainer, "objective_state", None)
    sec = getattr(state, "section", None)
    if sec is None:
        raise SpectuneError("lipo: the Trainer has no LiPO state; run it through the recipe")
    return sec


def sample_lists(model: Any, tokenizer: Any, examples: list[InstructionExample],
                 sec: LipoSection, *, system: str | None, seed: int,
                 progress: bool = False) -> tuple[list[RankedList], ListStats]:  # fmt: skip
    """On-policy lists: K - 1 answers sampled from ``model`` per question (temperature
    ``sec.temperature``), plus the exact answer, each labelled by :func:`grade`."""
    import torch

    from spectune._progress import track
    from spectune.data.instructions import build_prompt
    from spectune.models.tokenizer import pad_token_id

    n = sec.list_size - 1
    torch.manual_seed(seed)
    stats = ListStats()
    lists = []
    per_batch = max(1, sec.batch_size // n)
    starts = range(0, len(examples), per_batch)
    pad = pad_token_id(tokenizer)
    model.eval()
    for start in track(starts, len(starts), "sampling on-policy lists", enabled=progress,
                       unit="batch"):  # fmt: skip
        chunk = examples[start : start + per_batch]
        prompts = [tokenizer(build_prompt(tokenizer, ex, system=system),
                             add_special_tokens=False)["input_ids"] for ex in chunk]  # fmt: skip
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                 temperature=sec.temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=sec.max_new_tokens, num_return_sequences=n,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        for i, ex in enumerate(chunk):
            answers = [ex.response] + [t.strip() for t in texts[i * n : (i + 1) * n]]
            lst = RankedList(ex.instruction, tuple(answers),
                             tuple(float(grade(a, ex.response)) for a in answers),
                             ex.category, ex.response)  # fmt: skip
            stats.n_read += 1
            if _keep(lst, stats):
                lists.append(lst)
    stats.n_kept = len(lists)
    if not lists:
        raise SpectuneError(
            f"lipo.lists: on_policy: all {stats.n_read} sampled lists got equal grades; raise "
            "lipo.temperature or use lipo.lists: generated"
        )
    return lists, stats


register_objective("lipo", LiPO())

__all__ = [
    "LOSSES",
    "LiPO",
    "LipoSection",
    "LipoState",
    "ListCollator",
    "ListStats",
    "RankedList",
    "batch_memory_bytes",
    "cut_list",
    "cut_lists",
    "grade",
    "graded_labels",
    "lambda_weights",
    "lipo_loss",
    "list_labels",
    "list_logps",
    "load_lists",
    "make_lists",
    "ndcg",
    "pair_accuracy",
    "ranking_metrics",
    "ranks",
    "sample_lists",
    "score_features",
    "sequence_logps",
    "shared_prompt_logps",
    "tokenize_lists",
    "write_lists",
]
