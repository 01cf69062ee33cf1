"""Forgetting: how well a model still predicts general text that ships with Python itself.

Two measures, both on ``pydoc_data.topics`` (the reference manual sections ``help()`` shows,
the same on every machine with the same Python minor version):

- :func:`perplexity`: :func:`general_text` (a fixed slice of the topics joined) scored with
  strided sliding windows, every token after the first exactly once: a
  :class:`PerplexityResult`, which records the Python version and a hash of the text scored.
- :func:`general_ce`: **forgetting as peft's method comparison measures it**
  (``method_comparison/MetaMathQA/run.py`` in the peft repository,
  ``calculate_mean_per_token_loss``): a fixed set of general-text documents, each tokenized
  on its own with the tokenizer's special tokens and cut to a token limit; the cross-entropy
  of every next-token prediction inside each document, pooled over all documents (a mean per
  token, not per document): a :class:`CrossEntropyResult`. peft scores the first 100 articles
  of ``HuggingFaceFW/finewiki`` cut at 768 tokens and reports
  ``forgetting = loss_after - loss_before`` (nats per token; positive: the model got worse
  on general text). spectune scores the first ``n_samples`` help topics (sorted by name) cut
  at ``max_tokens`` tokens, with no download, and reports the same difference as
  :attr:`spectune.results.metrics.Forgetting.forgetting_ce` (``general_ce_after -
  general_ce_before``). The definition and the sign are peft's; the text is not, so set the
  numbers of the two beside each other as changes, not as absolute losses. peft's setting is
  ``n_samples=100, max_tokens=768`` on finewiki; spectune's default (``eval.ce_samples=8``,
  ``eval.ce_tokens=256``) keeps the judging cheap on a CPU.
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


def general_documents(n_samples: int) -> list[str]:
    """The first ``n_samples`` help topics of ``pydoc_data.topics`` in sorted key order: the
    documents :func:`general_ce` scores (79 in Python 3.11, 202 to 62,522 characters each).

    Raises:
        SpectuneError: ``n_samples`` is below 1 or above the number of topics.
    """
    keys = sorted(topics)
    if not 1 <= n_samples <= len(keys):
        raise SpectuneError(
            f"n_samples must be between 1 and {len(keys)} (the help topics of this Python), "
            f"got {n_samples}"
        )
    return [topics[key] for key in keys[:n_samples]]


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


@dataclass
class CrossEntropyResult:
    """Mean token cross-entropy on general-text documents (peft's forgetting measure).

    Attributes:
        cross_entropy: mean NLL (nats) over every scored token of every document.
        n_samples: documents scored.
        n_tokens: tokens scored (each document's tokens but its first).
        max_tokens: tokens a document is cut to (special tokens included).
        samples_sha256: SHA-256 of the documents (UTF-8, joined by NUL), to tell what was scored.
        source: where the documents came from.
    """

    cross_entropy: float
    n_samples: int
    n_tokens: int
    max_tokens: int
    samples_sha256: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def general_ce(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    n_samples: int = 8,
    max_tokens: int = 256,
    texts: list[str] | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> CrossEntropyResult:
    """Mean per-token cross-entropy on fixed general-text documents, as peft's method
    comparison computes its forgetting loss (see the module docstring).

    Each document is tokenized alone with the tokenizer's default special tokens (a BOS where
    the tokenizer adds one), cut to its first ``max_tokens`` tokens, and every token after the
    first is predicted from the ones before it in the same document. The losses of all scored
    tokens are averaged together. Documents of equal token length run in one batch (no
    padding, so nothing depends on how they are batched).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        n_samples: documents: the first ``n_samples`` of :func:`general_documents`.
        max_tokens: tokens a document is cut to (capped at the model's
            ``max_position_embeddings``).
        texts: the caller's documents instead of the help topics.
        batch_size: documents per forward pass.
        progress: show a progress bar.

    Returns:
        A :class:`CrossEntropyResult`.

    Raises:
        SpectuneError: a bad count, or no document of two tokens or more.
    """
    import torch

    if texts is None:
        texts = general_documents(n_samples)
        source = (
            f"pydoc_data.topics (first {n_samples} topics by sorted key, Python "
            f"{sys.version_info.major}.{sys.version_info.minor})"
        )
    else:
        source = "documents given by the caller"
    if max_tokens < 2:
        raise SpectuneError(f"max_tokens must be >= 2, got {max_tokens}")
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    limit = min(max_tokens, int(max_pos)) if max_pos else max_tokens
    rows = [list(tokenizer(t)["input_ids"])[:limit] for t in texts]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise SpectuneError("no general-text document has two tokens or more; nothing to score")
    by_length: dict[int, list[list[int]]] = {}
    for r in rows:
        by_length.setdefault(len(r), []).append(r)
    batches = [
        group[i : i + batch_size]
        for group in by_length.values()
        for i in range(0, len(group), batch_size)
    ]
    device = model_device(model)
    total, count = 0.0, 0
    with eval_mode(model):
        for batch in track(batches, len(batches), "cross-entropy", enabled=progress, unit="batch"):
            ids = torch.tensor(batch, dtype=torch.long)  # (docs, tokens)
            out = model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device))
            nll, n = token_nll(out.logits, ids.to(device))
            total += nll
            count += n
    digest = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
    return CrossEntropyResult(
        cross_entropy=total / count,
        n_samples=len(rows),
        n_tokens=count,
        max_tokens=limit,
        samples_sha256=digest,
        source=source,
    )


__all__ = [
    "DEFAULT_PPL_CHARS",
    "CrossEntropyResult",
    "PerplexityResult",
    "general_ce",
    "general_documents",
    "general_text",
    "perplexity",
]
