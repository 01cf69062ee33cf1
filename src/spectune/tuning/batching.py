"""How a run's training examples make batches (``data.batching``): ``auto`` (the default)
trains padding-free rows where the objective and the model's attention allow it, else padded
batches in random order; ``padding_free`` falls back to padded batches grouped by length;
``length_grouped`` and ``padded`` are what they say.

Padding-free: the objective's collator concatenates a batch into one row with ``position_ids``
restarting at every example and no attention mask; transformers' masks then keep each
example's attention within itself (sdpa, eager and FlashAttention alike). No position is
padding, so the decoder's products run on real tokens only; the attention runs over the row
(its cost grows with the row's length squared, a small share at these lengths: the run's
FLOP count shows it). Whether the model honours the restarts is checked on the model itself
(:func:`spectune.models.forward.packing_works`): a model whose attention does not (its own
masking code, an implementation that ignores ``position_ids``) trains padded batches
(``auto``) or length-grouped ones (``padding_free``, saying why).

Length-grouped: transformers' ``LengthGroupedSampler`` (``train_sampling_strategy:
group_by_length``), which batches examples of similar length in a seeded random order of
groups; padded batches remain, with less padding.
"""

from __future__ import annotations

from typing import Any

from spectune.models.forward import packing_works

#: what a run's batches are (recorded in metrics.json ``training.batching``)
PADDING_FREE, LENGTH_GROUPED, PADDED = "padding_free", "length_grouped", "padded"


def choose_batching(mode: str, objective: Any, collator: Any, model: Any) -> tuple[str, str]:
    """``(batching, why)`` for ``data.batching`` = ``mode``: what the run's batches will be, and
    why they are not padding-free when ``padding_free`` was asked for (a note), "" otherwise.
    ``auto`` without padding-free batches is ``padded``: the same sums in another order is all
    padding-free rows change, while grouping by length changes which examples share a batch
    (the demo's QLoRA, grouped, diverged at the rate that trained it well padded and
    padding-free).

    Args:
        mode: ``auto``, ``padding_free``, ``length_grouped`` or ``padded``.
        objective: the run's objective (its ``padding_free`` says whether its loss takes a
            padding-free batch).
        collator: the objective's training collator (needs ``flattened()``).
        model: the model to train (checked with :func:`packing_works`).
    """
    if mode in (LENGTH_GROUPED, PADDED):
        return mode, ""
    if not getattr(objective, "padding_free", False) or not hasattr(collator, "flattened"):
        why = f"the {getattr(objective, 'name', '?')} objective takes padded batches only"
    elif not packing_works(model):
        why = (
            "this model's attention does not keep examples concatenated in one row apart "
            "(checked: packed and separate logits differ)"
        )
    else:
        return PADDING_FREE, ""
    if mode != PADDING_FREE:  # auto: the batches a run had before, in random order
        return PADDED, ""
    return LENGTH_GROUPED, (
        f"data.batching: padding_free is not possible here: {why}; batches are grouped by "
        "length instead (data.batching: padded for random batches)"
    )


__all__ = ["LENGTH_GROUPED", "PADDED", "PADDING_FREE", "choose_batching"]
