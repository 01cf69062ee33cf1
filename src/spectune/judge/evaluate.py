"""Judge a causal LM: what it learned, what it forgot, how fast it answers.

- :func:`exact_match`: held-out accuracy, greedy answers compared with the references
  (normalized exact match, :func:`spectune.data.tasks.answers_match`);
- :func:`heldout_loss`: mean negative log-likelihood of the reference answers' tokens;
- :func:`perplexity`: perplexity on general English text that ships with Python itself, a fixed
  slice of ``pydoc_data.topics`` (:func:`general_text`), the forgetting measure;
- :func:`generation_latency`: milliseconds per generated token, greedy, batch 1.

Every function takes ``(model, tokenizer, ...)`` and returns a dataclass with a ``to_dict()``
that serializes to JSON. The model may be a plain Hugging Face causal LM, a ``peft`` model or
a model whose linear layers were replaced by custom modules: only ``model(input_ids=...,
attention_mask=..., position_ids=..., cache=... (past_key_values before transformers 5.2x), use_cache=...)`` and its
``.logits`` / ``.past_key_values`` are used. Each function switches the model to eval mode and
restores its previous mode on return; nothing is computed with gradients.

Warning (QLoRA / QDoRA on CPU):
    On a CPU with AVX-512 BF16, a bitsandbytes ``Linear4bit`` layer in eval mode whose input
    does not require grad (an eval-mode ``torch.no_grad`` forward) repacks its quantized
    weight in place into a CPU inference layout; a LoRA model trained after that silently
    gets ``None`` gradients on every adapter weight. The functions here undo that on return
    (:func:`unpack_4bit_cpu_weights`, which calls ``model.state_dict()``: bitsandbytes unpacks
    the layout when it saves), and a test checks that adapter gradients still flow after an
    evaluation (bitsandbytes 0.50). Still, the safe order for a 4-bit model is: evaluate only
    after training, or evaluate a separate copy (load the base model again for the "before"
    numbers), and call :func:`unpack_4bit_cpu_weights` after any other no-grad forward.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from spectune.data.instructions import (
    InstructionCollator,
    InstructionExample,
    build_prompt,
    tokenize_examples,
)
from spectune.data.tasks import answers_match
from spectune.errors import SpectuneError
from spectune.models.forward import decoder_and_head, eval_mode, labelled_nll, model_device
from spectune.models.generate import greedy_batch, greedy_generate, takes_logits_to_keep
from spectune.models.tokenizer import IGNORE_INDEX, pad_token_id

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

#: Characters of :func:`general_text` scored by :func:`perplexity` by default (~2,000 tokens).
DEFAULT_PPL_CHARS = 8000

#: Prompts timed by :func:`generation_latency` when none are given.
LATENCY_PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the moon.",
    "Describe your favourite season and why.",
    "Give advice to someone learning to cook.",
)


def _progress(iterable: Any, *, total: int | None, desc: str, show: bool) -> Any:
    from spectune._progress import track

    return track(iterable, total, desc, enabled=show, unit="batch")


# --------------------------------------------------------------------------- generation


# --------------------------------------------------------------------------- accuracy


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
        model: a causal LM (see the module warning about 4-bit models).
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


# --------------------------------------------------------------------------- loss


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


def _token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
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
        model: a causal LM (see the module warning about 4-bit models).
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
        for start in _progress(starts, total=len(starts), desc="held-out loss", show=progress):
            batch = collate([features[i] for i in order[start : start + batch_size]])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            labels = batch["labels"].to(device)
            if parts is None:
                nll, n = _token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
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


# --------------------------------------------------------------------------- perplexity


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
    from pydoc_data.topics import topics

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
        model: a causal LM (see the module warning about 4-bit models).
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
        for group in _progress(groups, total=len(groups), desc="perplexity", show=progress):
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
            nll, n = _token_nll(out.logits, labels[:, -out.logits.shape[1] :].to(device))
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


# --------------------------------------------------------------------------- latency


@dataclass
class LatencyResult:
    """Greedy generation speed at batch size 1.

    Attributes:
        ms_per_token: median over prompts of the decode time per token after the first
            (the inter-token latency).
        ms_first_token: median time to the first token (prompt prefill plus one step).
        ms_per_token_overall: median of total time / generated tokens.
        new_tokens: tokens generated per prompt (the end-of-turn token does not stop it).
        n_prompts: prompts timed.
        warmup: untimed runs before timing.
        threads: ``torch.get_num_threads()`` during the measurement.
    """

    ms_per_token: float
    ms_first_token: float
    ms_per_token_overall: float
    new_tokens: int
    n_prompts: int
    warmup: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def generation_latency(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | None = None,
    *,
    new_tokens: int = 32,
    warmup: int = 1,
    system: str | None = None,
) -> LatencyResult:
    """Time greedy generation: milliseconds per generated token, median over prompts.

    Each prompt (an instruction, rendered with the chat template) is answered alone with
    exactly ``new_tokens`` greedy tokens (end of turn does not stop it, so every model is timed
    on the same amount of work). ``warmup`` untimed runs on the first prompt come first.

    Args:
        model: a causal LM (see the module warning about 4-bit models).
        tokenizer: its tokenizer.
        prompts: instructions to answer; default :data:`LATENCY_PROMPTS`.
        new_tokens: tokens generated per prompt (>= 2).
        warmup: untimed runs before timing.
        system: system message (``None``: the template's default).

    Returns:
        A :class:`LatencyResult`.
    """
    import torch

    if new_tokens < 2:
        raise SpectuneError(f"new_tokens must be >= 2, got {new_tokens}")
    instructions = list(LATENCY_PROMPTS if prompts is None else prompts)
    if not instructions:
        raise SpectuneError("generation_latency needs at least one prompt")
    encoded = [
        list(
            tokenizer(
                build_prompt(tokenizer, InstructionExample(p, ""), system=system),
                add_special_tokens=False,
            )["input_ids"]
        )
        for p in instructions
    ]
    pad_id = pad_token_id(tokenizer)
    first, decode, overall = [], [], []
    with eval_mode(model):
        for _ in range(max(0, warmup)):
            greedy_batch(
                model,
                [encoded[0]],
                max_new_tokens=new_tokens,
                pad_id=pad_id,
                stop_ids=set(),
                ignore_stop=True,
            )
        for prompt in encoded:
            stamps: list[float] = []
            start = time.perf_counter()
            greedy_batch(
                model,
                [prompt],
                max_new_tokens=new_tokens,
                pad_id=pad_id,
                stop_ids=set(),
                ignore_stop=True,
                step_times=stamps,
            )
            first.append((stamps[0] - start) * 1e3)
            decode.append((stamps[-1] - stamps[0]) * 1e3 / (len(stamps) - 1))
            overall.append((stamps[-1] - start) * 1e3 / len(stamps))
    return LatencyResult(
        ms_per_token=statistics.median(decode),
        ms_first_token=statistics.median(first),
        ms_per_token_overall=statistics.median(overall),
        new_tokens=new_tokens,
        n_prompts=len(encoded),
        warmup=max(0, warmup),
        threads=torch.get_num_threads(),
    )


# --------------------------------------------------------------------------- all together


def judge(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[InstructionExample],
    *,
    max_length: int = 256,
    system: str | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    ppl_chars: int = DEFAULT_PPL_CHARS,
    ppl_window: int = 256,
    ppl_stride: int = 128,
    latency_tokens: int = 32,
    latency_prompts: int = 3,
    progress: bool = False,
) -> dict[str, Any]:
    """Every measurement of a model, as one JSON-ready dict.

    Runs :func:`exact_match`, :func:`heldout_loss` (on the same examples), :func:`perplexity`
    on :func:`general_text` and, when ``latency_prompts`` > 0, :func:`generation_latency`
    on the first ``latency_prompts`` of :data:`LATENCY_PROMPTS`.

    Returns:
        ``{"accuracy", "predictions", "heldout_loss", "perplexity", "latency", "seconds"}``:
        the results' dicts (accuracy without its predictions, which are a list of their own;
        latency None when skipped) and the wall time of each measurement.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    acc = exact_match(model, tokenizer, examples, max_new_tokens=max_new_tokens,
                      batch_size=batch_size, system=system, progress=progress)  # fmt: skip
    seconds["accuracy"] = time.perf_counter() - start
    start = time.perf_counter()
    loss = heldout_loss(model, tokenizer, examples, max_length=max_length,
                        batch_size=max(1, batch_size // 2), system=system, progress=progress)  # fmt: skip
    seconds["heldout_loss"] = time.perf_counter() - start
    start = time.perf_counter()
    ppl = perplexity(model, tokenizer, n_chars=ppl_chars, window=ppl_window, stride=ppl_stride,
                     progress=progress)  # fmt: skip
    seconds["perplexity"] = time.perf_counter() - start
    latency = None
    if latency_prompts > 0:
        start = time.perf_counter()
        prompts = [LATENCY_PROMPTS[i % len(LATENCY_PROMPTS)] for i in range(latency_prompts)]
        latency = generation_latency(model, tokenizer, prompts, new_tokens=latency_tokens,
                                     system=system).to_dict()  # fmt: skip
        seconds["latency"] = time.perf_counter() - start
    return {
        "accuracy": acc.to_dict(predictions=False),
        "predictions": acc.predictions,
        "heldout_loss": loss.to_dict(),
        "perplexity": ppl.to_dict(),
        "latency": latency,
        "seconds": seconds,
    }


__all__ = [
    "DEFAULT_PPL_CHARS",
    "LATENCY_PROMPTS",
    "AccuracyResult",
    "LatencyResult",
    "LossResult",
    "PerplexityResult",
    "exact_match",
    "general_text",
    "generation_latency",
    "heldout_loss",
    "judge",
    "perplexity",
]
