"""Learning: held-out exact-match accuracy.

:func:`exact_match` answers every held-out question greedily (:func:`spectune.models.generate.
greedy_generate`) and compares each answer with the reference (normalized exact match,
:func:`spectune.data.tasks.answers_match`, or a checker of the caller's), overall and per
category: an :class:`AccuracyResult`. It counts the answers that reached ``max_new_tokens``
without the end-of-turn marker (``n_unterminated``) and warns, on stderr and in the result's
``warning``, when they are most of them: the model may not know where its turn ends (a template
or end-of-turn setting that does not fit it), and then a verdict of 0% on a model whose held-out
loss fell is a bug, not a result.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from spectune.data.examples import InstructionExample
from spectune.data.instructions import build_prompt
from spectune.data.tasks import answers_match
from spectune.errors import SpectuneError
from spectune.models.generate import generate_answers
from spectune.models.tokenizer import end_of_turn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class AccuracyResult:
    """Held-out exact-match accuracy.

    Attributes:
        accuracy: fraction of examples answered correctly (0..1).
        n: examples scored.
        n_correct: examples answered correctly.
        by_category: per category ``{"n", "n_correct", "accuracy"}`` (categories sorted).
        predictions: the model's answers, in example order.
        max_new_tokens: generation limit used.
        n_unterminated: answers that reached ``max_new_tokens`` without the end-of-turn
            marker (or EOS).
        fraction_unterminated: ``n_unterminated / n``.
        warning: what to check when most answers are unterminated (None otherwise).
    """

    accuracy: float
    n: int
    n_correct: int
    by_category: dict[str, dict[str, float]]
    predictions: list[str] = field(default_factory=list)
    max_new_tokens: int = 0
    n_unterminated: int = 0
    fraction_unterminated: float = 0.0
    warning: str | None = None

    def to_dict(self, *, predictions: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``predictions=False`` leaves the answers out."""
        out = asdict(self)
        if not predictions:
            out.pop("predictions")
        return out


def exact_match(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[InstructionExample],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    system: str | None = None,
    checker: Callable[[str, str], bool] = answers_match,
    progress: bool = False,
    warn: bool = True,
) -> AccuracyResult:
    """Held-out accuracy: greedy answers compared with each example's response.

    Args:
        model: a causal LM (see :mod:`spectune.models.quant` about 4-bit models).
        tokenizer: its tokenizer (with a chat template).
        examples: records whose ``response`` is the reference answer.
        max_new_tokens: longest answer generated (keep it a little above the longest reference).
        batch_size: prompts per forward pass.
        system: system message for the prompts (``None``: the template's default).
        checker: ``checker(prediction, reference) -> bool``; default normalized exact match.
        progress: show a progress bar.
        warn: print the result's ``warning`` on stderr (a base model judged on a template it
            was never taught runs past the limit as expected: its warning is only recorded).

    Returns:
        An :class:`AccuracyResult`.

    Raises:
        SpectuneError: no examples.
    """
    if not examples:
        raise SpectuneError("exact_match needs at least one example; the eval set is empty")
    prompts = [build_prompt(tokenizer, ex, system=system) for ex in examples]
    answers = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    predictions = answers.texts
    n_open = answers.ended.count(False)
    hits = [bool(checker(p, ex.response)) for p, ex in zip(predictions, examples, strict=True)]
    counts: dict[str, list[int]] = {}
    for hit, ex in zip(hits, examples, strict=True):
        c = counts.setdefault(ex.category, [0, 0])
        c[0] += 1
        c[1] += int(hit)
    by_category = {
        cat: {"n": n, "n_correct": k, "accuracy": k / n} for cat, (n, k) in sorted(counts.items())
    }
    return AccuracyResult(
        accuracy=sum(hits) / len(hits),
        n=len(hits),
        n_correct=sum(hits),
        by_category=by_category,
        predictions=predictions,
        max_new_tokens=max_new_tokens,
        n_unterminated=n_open,
        fraction_unterminated=n_open / len(hits),
        warning=unterminated_warning(tokenizer, n_open, len(hits), max_new_tokens, warn=warn),
    )


#: the share of unterminated answers above which the judge warns
UNTERMINATED_WARN = 0.5


def unterminated_warning(
    tokenizer: PreTrainedTokenizerBase,
    n_open: int,
    n: int,
    max_new_tokens: int,
    *,
    warn: bool = True,
) -> str | None:
    """The warning when most of ``n`` answers (``n_open``) reached ``max_new_tokens`` without
    the end-of-turn marker, printed on stderr with ``warn``; None when they did not."""
    if not n or n_open / n <= UNTERMINATED_WARN:
        return None
    eot = end_of_turn(tokenizer)
    marker = "no end-of-turn marker" if eot is None else f"the end-of-turn marker {eot.marker!r}"
    message = (
        f"{n_open} of {n} answers ({n_open / n:.0%}) reached eval.max_new_tokens={max_new_tokens} "
        f"without {marker}: the accuracy may be wrong rather than low (a verdict of 0% on a model "
        "whose held-out loss fell is a bug, not a result); check the predictions, data.template "
        "and data.end_of_turn, or raise eval.max_new_tokens"
    )
    if warn:
        print(f"warning: {message}", file=sys.stderr, flush=True)
    return message


__all__ = ["UNTERMINATED_WARN", "AccuracyResult", "exact_match", "unterminated_warning"]
