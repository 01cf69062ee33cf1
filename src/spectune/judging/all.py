"""A model judged on every metric at once: :func:`judge`, what a tune run records before and
after training (``before.json``, ``metrics.json``) and the judge cache stores."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from spectune.data.examples import InstructionExample
from spectune.judging.accuracy import exact_match
from spectune.judging.forgetting import DEFAULT_PPL_CHARS, general_ce, perplexity
from spectune.judging.latency import LATENCY_PROMPTS, generation_latency
from spectune.judging.loss import heldout_loss

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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
    ce_samples: int = 0,
    ce_tokens: int = 256,
    harness: dict[str, Any] | None = None,
    progress: bool = False,
    warn_unterminated: bool = True,
) -> dict[str, Any]:
    """Every measurement of a model, as one JSON-ready dict.

    Runs :func:`exact_match`, :func:`heldout_loss` (on the same examples), :func:`perplexity`
    on :func:`general_text`, when ``latency_prompts`` > 0 :func:`generation_latency`
    on the first ``latency_prompts`` of :data:`LATENCY_PROMPTS`, when ``ce_samples`` > 0
    :func:`~spectune.judging.forgetting.general_ce` (peft's forgetting loss) on that many
    documents of ``ce_tokens`` tokens, and with ``harness`` (the keywords of
    :func:`spectune.judging.harness.evaluate_harness` but the model's and those given here:
    ``tasks``, ``limit``, ``num_fewshot``, ``chat_template``, ``metadata``) lm-eval's tasks.
    ``warn_unterminated``: print the accuracy's warning when most answers reach
    ``max_new_tokens`` unterminated (it is recorded in the accuracy either way).

    Returns:
        ``{"accuracy", "predictions", "heldout_loss", "perplexity", "latency", "general_ce",
        "harness", "seconds"}``: the results' dicts (accuracy without its predictions, which
        are a list of their own; latency, general_ce and harness None when skipped) and the
        wall time of each measurement.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    acc = exact_match(
        model,
        tokenizer,
        examples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system=system,
        progress=progress,
        warn=warn_unterminated,
    )
    seconds["accuracy"] = time.perf_counter() - start
    start = time.perf_counter()
    loss = heldout_loss(
        model,
        tokenizer,
        examples,
        max_length=max_length,
        batch_size=max(1, batch_size // 2),
        system=system,
        progress=progress,
    )
    seconds["heldout_loss"] = time.perf_counter() - start
    start = time.perf_counter()
    ppl = perplexity(
        model, tokenizer, n_chars=ppl_chars, window=ppl_window, stride=ppl_stride, progress=progress
    )
    seconds["perplexity"] = time.perf_counter() - start
    latency = None
    if latency_prompts > 0:
        start = time.perf_counter()
        prompts = [LATENCY_PROMPTS[i % len(LATENCY_PROMPTS)] for i in range(latency_prompts)]
        latency = generation_latency(
            model, tokenizer, prompts, new_tokens=latency_tokens, system=system
        ).to_dict()
        seconds["latency"] = time.perf_counter() - start
    ce = None
    if ce_samples > 0:
        start = time.perf_counter()
        ce = general_ce(
            model, tokenizer, n_samples=ce_samples, max_tokens=ce_tokens, progress=progress
        ).to_dict()
        seconds["general_ce"] = time.perf_counter() - start
    scores = None
    if harness:
        from spectune.judging.harness import evaluate_harness

        start = time.perf_counter()
        scores = evaluate_harness(
            model,
            tokenizer,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            system=system,
            **harness,
        ).to_dict()
        seconds["harness"] = time.perf_counter() - start
    return {
        "accuracy": acc.to_dict(predictions=False),
        "predictions": acc.predictions,
        "heldout_loss": loss.to_dict(),
        "perplexity": ppl.to_dict(),
        "latency": latency,
        "general_ce": ce,
        "harness": scores,
        "seconds": seconds,
    }


__all__ = ["judge"]
