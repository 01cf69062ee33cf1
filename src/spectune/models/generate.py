"""Generation in one place: greedy decoding and sampling of token-id prompts in left-padded
batches with a KV cache.

Greedy (:func:`greedy_batch`, :func:`greedy_generate`) serves judging (answers, latency) and
distillation's teacher answers and on-policy inputs; sampling (:func:`sample_batch` with a
:class:`Sampling`: temperature, top-k, top-p) serves LiPO's on-policy lists and augment's new
instructions. Both run the same decoding loop and differ only in how the next token is picked.
A sample draws from torch's global random stream (``torch.manual_seed``), with the draws of
Hugging Face's ``generate(do_sample=True)`` for the same settings: temperature, then top-k, then
top-p on the float32 logits, one ``torch.multinomial`` draw per row and step, finished rows fed
the pad token.

The model may be a plain Hugging Face causal LM, a ``peft`` model or a model whose linear layers
were replaced by custom modules: only ``model(input_ids=..., attention_mask=...,
position_ids=..., cache=... (past_key_values before transformers 5.2x), use_cache=...)`` and its
``.logits`` / ``.past_key_values`` are used.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from spectune._progress import track
from spectune.errors import SpectuneError
from spectune.models.forward import eval_mode, model_device, synchronize, unwrap_model
from spectune.models.tokenizer import end_of_turn_id, pad_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers causal LMs do)."""
    base = unwrap_model(model)
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _cache_argument(model: Any) -> str:
    """The forward's name for the key/value cache: ``cache`` from transformers 5.2x on,
    ``past_key_values`` before (deprecated since, to be removed in 5.40)."""
    base = unwrap_model(model)
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def greedy_batch(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: set[int],
    ignore_stop: bool = False,
    step_times: list[float] | None = None,
) -> list[list[int]]:
    """Greedy decoding of a batch of token-id prompts with left padding and a KV cache.

    Position ids are counted from each row's first real token, so a left-padded row gets the
    same positions as it would alone. A model that returns no ``past_key_values`` is fed the
    whole sequence at every step instead.

    Returns:
        For each prompt the generated ids, up to and without the first stop token.
    """
    return _decode(
        model,
        prompts,
        _argmax,
        max_new_tokens=max_new_tokens,
        pad_id=pad_id,
        stop_ids=stop_ids,
        ignore_stop=ignore_stop,
        step_times=step_times,
    )


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


@dataclass(frozen=True)
class Sampling:
    """How :func:`sample_batch` draws the next token from the logits of the last position.

    Attributes:
        temperature: the logits are divided by it (> 0; 1: unchanged).
        top_k: only the k highest logits are kept (ties at the k-th included); 0: all.
        top_p: only the smallest set of most probable tokens whose probability reaches
            ``top_p`` is kept (the most probable token always); 1: all.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise SpectuneError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise SpectuneError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SpectuneError(f"top_p must be in (0, 1], got {self.top_p}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row of ``logits`` (rows, vocab), drawn from torch's global stream."""
        scores = logits.to(dtype=torch.float32, copy=True)
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1])).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            rising, order = torch.sort(scores, descending=False)
            # drop the least probable tokens while what they hold stays within 1 - top_p
            drop = rising.softmax(dim=-1).cumsum(dim=-1) <= 1 - self.top_p
            drop[..., -1] = False
            scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        return torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)


def sample_batch(
    model: Any,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: set[int],
    n_samples: int = 1,
    seed: int | None = None,
) -> list[list[int]]:
    """Sampled continuations of a batch of token-id prompts (left padding, KV cache, as
    :func:`greedy_batch`), in eval mode (mode restored).

    Args:
        model: a causal LM.
        prompts: token ids.
        sampling: temperature, top-k, top-p.
        max_new_tokens: longest continuation.
        pad_id: the pad id (left padding, and fed to finished rows).
        stop_ids: a row ends at the first of these.
        n_samples: continuations per prompt (rows ``i * n_samples`` to ``(i + 1) * n_samples
            - 1`` are prompt i's).
        seed: ``torch.manual_seed(seed)`` first; None: continue torch's global stream.

    Returns:
        ``len(prompts) * n_samples`` token lists, up to and without the first stop token.
    """
    if n_samples < 1:
        raise SpectuneError(f"n_samples must be >= 1, got {n_samples}")
    if seed is not None:
        torch.manual_seed(seed)
    rows = [p for p in prompts for _ in range(n_samples)]
    with eval_mode(model):
        return _decode(
            model, rows, sampling, max_new_tokens=max_new_tokens, pad_id=pad_id, stop_ids=stop_ids
        )


def _decode(
    model: Any,
    prompts: Sequence[Sequence[int]],
    pick: Callable[[torch.Tensor], torch.Tensor],
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: set[int],
    ignore_stop: bool = False,
    step_times: list[float] | None = None,
) -> list[list[int]]:
    """The decoding loop of :func:`greedy_batch` and :func:`sample_batch`: ``pick`` turns the
    last position's logits (rows, vocab) into the next ids (rows,)."""
    device = model_device(model)
    batch, length = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, length - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, length)
    keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}  # only the last
    cache_arg = _cache_argument(model)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out_tokens: list[torch.Tensor] = []
    past = None
    step_in, step_pos = ids, positions
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_in,
            attention_mask=mask,
            position_ids=step_pos,
            use_cache=True,
            **{cache_arg: past},
            **keep,
        )
        next_ids = pick(out.logits[:, -1, :])  # (batch,)
        next_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)
        out_tokens.append(next_ids)
        if step_times is not None:
            synchronize(next_ids.device)
            step_times.append(time.perf_counter())
        if not ignore_stop and len(stop):
            done = done | torch.isin(next_ids, stop)
            if bool(done.all()):
                break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        new_pos = positions[:, -1:] + 1
        positions = torch.cat([positions, new_pos], dim=1)
        past = getattr(out, "cache", None)
        if past is None:
            past = getattr(out, "past_key_values", None)
        if past is None:  # no cache: feed the whole sequence again
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            step_in, step_pos = ids, positions
        else:
            step_in, step_pos = next_ids[:, None], new_pos
    generated = torch.stack(out_tokens, dim=1).tolist() if out_tokens else [[]] * batch
    result = []
    for row in generated:
        tokens = []
        for tok in row:
            if not ignore_stop and tok in stop_ids:
                break
            tokens.append(tok)
        result.append(tokens)
    return result


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    eot = end_of_turn_id(tokenizer)
    return set() if eot is None else {eot}


def greedy_generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to chat-template prompts, batched (left padding), stopping at end of turn.

    Prompts are sorted by length before batching (less padding) and the answers returned in
    the order given.

    Args:
        model: a causal LM (plain, peft, or with custom linear layers); see the module warning
            about 4-bit models.
        tokenizer: its tokenizer.
        prompts: rendered prompts (e.g. from :func:`spectune.data.instructions.build_prompt`);
            tokenized without adding special tokens.
        max_new_tokens: longest answer generated.
        batch_size: prompts per forward pass.
        progress: show a progress bar.

    Returns:
        The decoded answers (special tokens skipped, whitespace stripped).
    """
    if max_new_tokens < 1:
        raise SpectuneError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise SpectuneError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    pad_id, stops = pad_token_id(tokenizer), stop_ids(tokenizer)
    starts = range(0, len(order), batch_size)
    with eval_mode(model):
        for start in track(starts, len(starts), "generate", enabled=progress, unit="batch"):
            chunk = order[start : start + batch_size]
            tokens = greedy_batch(
                model,
                [encoded[i] for i in chunk],
                max_new_tokens=max_new_tokens,
                pad_id=pad_id,
                stop_ids=stops,
            )
            for i, toks in zip(chunk, tokens, strict=True):
                answers[i] = tokenizer.decode(toks, skip_special_tokens=True).strip()
    return answers
