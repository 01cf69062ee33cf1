"""Latency: how fast a model answers, in milliseconds per generated token.

:func:`generation_latency` times greedy generation at batch size 1 (:func:`spectune.models.
generate.greedy_batch`), every prompt answered with the same number of tokens: the median
time per decoded token, to the first token and overall, a :class:`LatencyResult`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from spectune.data.examples import InstructionExample
from spectune.data.instructions import build_prompt
from spectune.errors import SpectuneError
from spectune.models.forward import eval_mode
from spectune.models.generate import greedy_batch
from spectune.models.tokenizer import pad_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Prompts timed by :func:`generation_latency` when none are given.
LATENCY_PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the moon.",
    "Describe your favourite season and why.",
    "Give advice to someone learning to cook.",
)


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
        model: a causal LM (see :mod:`spectune.models.quant` about 4-bit models).
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


__all__ = ["LATENCY_PROMPTS", "LatencyResult", "generation_latency"]
