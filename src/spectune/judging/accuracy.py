"""Learning: held-out exact-match accuracy.

:func:`exact_match` answers every held-out question greedily (:func:`spectune.models.generate.
greedy_generate`) and compares each answer with the reference (normalized exact match,
:func:`spectune.data.tasks.answers_match`, or a checker of the caller's), overall and per
category: an :class:`AccuracyResult`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from spectune.data.instructions import InstructionExample, build_prompt
from spectune.data.tasks import answers_match
from spectune.errors import SpectuneError
from spectune.models.generate import greedy_generate

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
    """

    accuracy: float
    n: int
    n_correct: int
    by_category: dict[str, dict[str, float]]
    predictions: list[str] = field(default_factory=list)
    max_new_tokens: int = 0

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

    Returns:
        An :class:`AccuracyResult`.

    Raises:
        SpectuneError: no examples.
    """
    if not examples:
        raise SpectuneError("exact_match needs at least one example; the eval set is empty")
    prompts = [build_prompt(tokenizer, ex, system=system) for ex in examples]
    predictions = greedy_generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
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
    )


__all__ = ["AccuracyResult", "exact_match"]
