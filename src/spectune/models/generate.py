"""Generation: greedy decoding of token-id prompts in left-padded batches with a KV cache, for
judging (answers, latency) and for objectives that generate (distillation's on-policy inputs).

The model may be a plain Hugging Face causal LM, a ``peft`` model or a model whose linear layers
were replaced by custom modules: only ``model(input_ids=..., attention_mask=...,
position_ids=..., cache=... (past_key_values before transformers 5.2x), use_cache=...)`` and its
``.logits`` / ``.past_key_values`` are used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from spectune._progress import track
from spectune.errors import SpectuneError
from spectune.models.forward import eval_mode, model_device, synchronize, unwrap_model
from spectune.models.tokenizer import end_of_turn_id, pad_token_id

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers causal LMs do)."""
    import inspect

    base = unwrap_model(model)
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _cache_argument(model: Any) -> str:
    """The forward's name for the key/value cache: ``cache`` from transformers 5.2x on,
    ``past_key_values`` before (deprecated since, to be removed in 5.40)."""
    import inspect

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
    import torch

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
        next_ids = out.logits[:, -1, :].argmax(dim=-1)  # (batch,)
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
