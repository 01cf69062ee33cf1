"""Learning: held-out loss, the mean negative log-likelihood of the reference answers.

:func:`heldout_loss` scores the tokens a trained model is taught to write (the response and the
end-of-turn token, tokenized as for training: :func:`spectune.data.instructions.
tokenize_examples`): a :class:`LossResult`. :func:`token_nll` is the summed next-token NLL of
labelled positions that :mod:`.forgetting` scores too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from spectune._progress import track
from spectune.data.examples import InstructionExample
from spectune.data.instructions import InstructionCollator, tokenize_examples
from spectune.models.forward import decoder_and_head, eval_mode, labelled_nll, model_device
from spectune.models.tokenizer import IGNORE_INDEX, pad_token_id

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass
class LossResult:
    """Mean negative log-likelihood of the reference answers.

    Attributes:
        loss: mean NLL (nats) per labelled token (response tokens and the end-of-turn token).
        perplexity: ``exp(loss)``.
        n_tokens: labelled tokens scored.
        n_examples: examples scored (after dropping any that truncation emptied).
        n_truncated: examples cut at ``max_length``.
    """

    loss: float
    perplexity: float
    n_tokens: int
    n_examples: int
    n_truncated: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed NLL and count of next-token predictions where ``labels`` is not -100.

    Args:
        logits: (batch, length, vocab).
        labels: (batch, length); position t is predicted by logits at t - 1.
    """
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()  # (batch, length-1, vocab)
    shift_labels = labels[:, 1:]  # (batch, length-1)
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return float(nll), int((shift_labels != IGNORE_INDEX).sum())


def heldout_loss(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[InstructionExample],
    *,
    max_length: int = 256,
    batch_size: int = 8,
    system: str | None = None,
    progress: bool = False,
) -> LossResult:
    """Mean token NLL of the responses given the prompts (the training loss, on held-out data).

    The examples are tokenized exactly as for training (:func:`tokenize_examples`: labels on
    the response and end-of-turn tokens only). The mean is over all labelled tokens of the set,
    not a mean of per-batch means.

    Args:
        model: a causal LM (see :mod:`spectune.models.quant` about 4-bit models).
        tokenizer: its tokenizer.
        examples: the held-out records.
        max_length: truncation length, as in training.
        batch_size: examples per forward pass.
        system: system message (``None``: the template's default).
        progress: show a progress bar.

    Returns:
        A :class:`LossResult`.
    """
    features, stats = tokenize_examples(examples, tokenizer, max_length=max_length, system=system)
    collate = InstructionCollator(pad_token_id(tokenizer))
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    device = model_device(model)
    total, count = 0.0, 0
    starts = range(0, len(order), batch_size)
    parts = decoder_and_head(model)
    with eval_mode(model):
        for start in track(starts, len(starts), "held-out loss", enabled=progress, unit="batch"):
            batch = collate([features[i] for i in order[start : start + batch_size]])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            labels = batch["labels"].to(device)
            if parts is None:
                nll, n = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
            else:  # the vocabulary projection only where a label is
                nll_sum, n = labelled_nll(parts, ids, mask, labels)
                nll = float(nll_sum)
            total += nll
            count += n
    loss = total / count
    return LossResult(
        loss=loss,
        perplexity=math.exp(loss),
        n_tokens=count,
        n_examples=stats.n_kept,
        n_truncated=stats.n_truncated,
    )


__all__ = ["LossResult", "heldout_loss", "token_nll"]
