"""Forgetting: perplexity on general text that ships with Python itself.

:func:`general_text` is a fixed slice of ``pydoc_data.topics`` (the reference manual sections
``help()`` shows), the same on every machine with the same Python minor version;
:func:`perplexity` scores it (or a text of the caller's) with strided sliding windows, every
token after the first exactly once: a :class:`PerplexityResult`, which records the Python
version and a hash of the text scored.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import asdict, dataclass
from pydoc_data.topics import topics
from typing import TYPE_CHECKING, Any

from spectune._progress import track
from spectune.errors import SpectuneError
from spectune.judging.loss import token_nll
from spectune.models.forward import eval_mode, model_device
from spectune.models.generate import takes_logits_to_keep
from spectune.models.tokenizer import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Characters of :func:`general_text` scored by :func:`perplexity` by default (~2,000 tokens).
DEFAULT_PPL_CHARS = 8000


def general_text(n_chars: int = DEFAULT_PPL_CHARS) -> str:
    """A fixed slice of general English text that ships with Python: ``pydoc_data.topics``.

    The help topics (the reference manual sections ``help()`` shows) are taken in sorted key
    order, joined with a blank line, and the first ``n_chars`` characters returned. The text is
    the same on every machine with the same Python minor version; it changes between Python
    versions, so :class:`PerplexityResult` records the Python version and a hash of the text.

    Args:
        n_chars: characters to return (the whole corpus is about 800,000 in Python 3.11).

    Returns:
        The text.
    """
    if n_chars < 1:
        raise SpectuneError(f"n_chars must be >= 1, got {n_chars}")
    text = "\n\n".join(topics[key] for key in sorted(topics))
    return text[:n_chars]


@dataclass
class PerplexityResult:
    """Perplexity on a fixed text.

    Attributes:
        perplexity: ``exp(nll)``.
        nll: mean NLL (nats) per scored token.
        n_tokens: tokens in the text (without special tokens).
        n_scored: tokens scored (all but the first, which has no context).
        n_chars: characters in the text.
        window: tokens per forward pass (context length).
        stride: new tokens scored per window after the first.
        text_sha256: SHA-256 of the text (UTF-8), to tell which text was scored.
        source: where the text came from.
    """

    perplexity: float
    nll: float
    n_tokens: int
    n_scored: int
    n_chars: int
    window: int
    stride: int
    text_sha256: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows ``(begin, end, first_scored)`` over ``n_tokens`` tokens.

    A window covers the tokens ``[begin, end)`` and scores ``[first_scored, end)``. The first
    window scores everything it holds but token 0 (which nothing predicts); each later one
    scores the next ``stride`` tokens with the ``window - stride`` tokens before them as
    context, so every token after the first is scored exactly once and every window but a
    short text's only one holds exactly ``window`` tokens. Needs ``1 <= stride < window``.
    """
    spans = []
    first = 1
    while first < n_tokens:
        end = min(window if first == 1 else first + stride, n_tokens)
        begin = max(0, end - window)
        spans.append((begin, end, first))
        first = end
    return spans


def perplexity(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    text: str | None = None,
    n_chars: int = DEFAULT_PPL_CHARS,
    window: int = 256,
    stride: int = 128,
    batch_size: int = 4,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity with strided sliding windows (the forgetting measure).

    The text (default :func:`general_text`) is tokenized once without special tokens. The
    first window of ``window`` tokens scores all its tokens but the first; each further window
    moves ``stride`` tokens on and scores only those new tokens, with the ``window - stride``
    tokens before them as context. Every token after the first is scored exactly once.
    ``window`` is capped at the model's ``max_position_embeddings``.

    Args:
        model: a causal LM (see :mod:`spectune.models.quant` about 4-bit models).
        tokenizer: its tokenizer.
        text: the text to score; ``None`` for ``general_text(n_chars)``.
        n_chars: length of the default text (ignored when ``text`` is given).
        window: tokens per forward pass.
        stride: new tokens scored per window after the first, ``1 <= stride < window``.
        batch_size: windows per forward pass.
        progress: show a progress bar.

    Returns:
        A :class:`PerplexityResult`.

    Raises:
        SpectuneError: bad window/stride, or a text of fewer than two tokens.
    """
    import torch

    source = (
        f"pydoc_data.topics (sorted keys, first {n_chars} chars, Python "
        f"{sys.version_info.major}.{sys.version_info.minor})"
    )
    if text is None:
        text = general_text(n_chars)
    else:
        source = "text given by the caller"
    config = getattr(model, "config", None)
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos:
        window = min(window, int(max_pos))
    if window < 2:
        raise SpectuneError(f"window must be >= 2 tokens, got {window}")
    if not 1 <= stride < window:
        raise SpectuneError(
            f"stride must be at least 1 and below window={window} (the rest of the window is "
            f"context), got {stride}"
        )
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) < 2:
        raise SpectuneError("the text has fewer than two tokens; nothing to score")
    spans = _windows(len(ids), window, stride)
    device = model_device(model)
    total, count = 0.0, 0
    # group equal-length windows into batches (all are full length unless the text is short)
    groups: list[list[tuple[int, int, int]]] = []
    for span in spans:
        if (
            groups
            and len(groups[-1]) < batch_size
            and (groups[-1][0][1] - groups[-1][0][0] == span[1] - span[0])
        ):
            groups[-1].append(span)
        else:
            groups.append([span])
    slice_logits = takes_logits_to_keep(model)
    with eval_mode(model):
        for group in track(groups, len(groups), "perplexity", enabled=progress, unit="batch"):
            inputs = torch.tensor([ids[b:e] for b, e, _ in group], dtype=torch.long)
            labels = inputs.clone()
            for row, (b, _, first) in enumerate(group):
                labels[row, : first - b] = IGNORE_INDEX
            # logits at t predict t + 1: the scored tokens need the last (end - first + 1)
            keep = max(e - first + 1 for _, e, first in group) if slice_logits else 0
            keep = keep if keep < inputs.shape[1] else 0
            extra = {"logits_to_keep": keep} if keep else {}
            out = model(
                input_ids=inputs.to(device),
                attention_mask=torch.ones_like(inputs).to(device),
                **extra,
            )
            nll, n = token_nll(out.logits, labels[:, -out.logits.shape[1] :].to(device))
            total += nll
            count += n
    mean = total / count
    return PerplexityResult(
        perplexity=math.exp(mean),
        nll=mean,
        n_tokens=len(ids),
        n_scored=count,
        n_chars=len(text),
        window=window,
        stride=stride,
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        source=source,
    )


__all__ = ["DEFAULT_PPL_CHARS", "PerplexityResult", "general_text", "perplexity"]
