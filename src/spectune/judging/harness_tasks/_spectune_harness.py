"""The functions spectune's lm-eval task files call (``!function _spectune_harness.<name>``).

lm-eval imports this file by its path; it uses spectune's own task generator, user turn and
answer check, so an lm-eval score of a ``spectune_*`` task is spectune's exact match.
"""

from __future__ import annotations

from typing import Any

from spectune.data.examples import InstructionExample, user_message
from spectune.data.tasks import CATEGORIES, answers_match, generate_task_set

#: few-shot examples generated per category (the training split of the task set)
N_SHOTS = 16


def load_category(
    category: str, spectune_seed: int = 0, spectune_n_eval: int = 200, **_: Any
) -> Any:
    """The held-out examples (``test``) and a few training ones (``train``) of one category of
    the task set for ``spectune_seed`` and ``spectune_n_eval`` (the run's data.n_eval)."""
    import datasets

    train, heldout = generate_task_set(
        N_SHOTS * len(CATEGORIES), int(spectune_n_eval), int(spectune_seed)
    )

    def records(examples: list[InstructionExample]) -> datasets.Dataset:
        rows = [ex.to_dolly() for ex in examples if ex.category == category]
        return datasets.Dataset.from_list(rows)

    return datasets.DatasetDict({"test": records(heldout), "train": records(train)})


def doc_to_text(doc: dict[str, Any]) -> str:
    """spectune's user turn of an example."""
    return user_message(
        InstructionExample(doc["instruction"], doc["response"], doc.get("context") or "")
    )


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``exact_match``: spectune's normalized exact match of the answer."""
    return {"exact_match": float(answers_match(results[0], doc["response"]))}
