"""Sequence log-probabilities of the responses of tokenized lists: every response with its
prompt, or each list's prompt run once and its responses continued from the KV cache."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from spectune._progress import track
from spectune.models.forward import as_forward, decoder_and_head, model_device, unwrap_model
from spectune.models.tokenizer import IGNORE_INDEX
from spectune.tuning.objectives.lipo.collator import ListCollator


def sequence_logps(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Sum of the log-probabilities of the labelled tokens of each row, (N, T) -> (N,); the
    output head runs only at labelled positions (for models :func:`decoder_and_head` splits)."""
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX  # (N, T - 1)
    parts = decoder_and_head(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = head(hidden[:, :-1][keep]).float()  # (labelled tokens, vocab)
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        logits = out.logits[:, :-1][keep].float()
    token_logp = -F.cross_entropy(logits, target[keep], reduction="none")
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(target)
    out = torch.zeros(input_ids.shape[0], dtype=token_logp.dtype, device=token_logp.device)
    return out.index_add(0, rows[keep], token_logp)


def _cache_kwarg(decoder: Any) -> str | None:
    """The decoder's keyword for a KV cache (``cache`` from transformers 5.x, earlier
    ``past_key_values``); None: it takes none."""
    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def _checkpointing(model: Any) -> bool:
    inner = unwrap_model(model)
    flag = getattr(type(inner), "is_activation_checkpointing", None)
    if flag is not None:
        return bool(inner.is_activation_checkpointing)
    return any(getattr(m, "gradient_checkpointing", False) for m in inner.modules())


def shared_prompt_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Sequence log-probs of every response with each list's prompt run **once**: the prompt
    (left-padded, B rows) goes through the decoder with a KV cache, the cache rows are picked
    for each response (``list_index``) and the responses (right-padded, N rows) continue from
    it. The same values as :func:`sequence_logps` on prompt + response (tested), and the
    gradient reaches the prompt's keys and values through the cache; a K-response list costs
    one prompt instead of K (the prompt is most of a task-set sequence).

    Methods with a per-forward effect see two forwards: FROG's guided noise (training only)
    is drawn once for the prompts and once for the responses.

    Returns:
        (N,), or None when the model cannot do it (no decoder/head split, no KV cache
        argument, activation checkpointing, which turns the cache off).
    """
    parts = decoder_and_head(model)
    if parts is None or "prompt_ids" not in batch or _checkpointing(model):
        return None
    decoder, head = parts
    kw = _cache_kwarg(decoder)
    if kw is None:
        return None
    p_ids, p_mask = batch["prompt_ids"], batch["prompt_mask"]  # (B, Lp), left-padded
    a_ids, a_mask, a_lab = batch["answer_ids"], batch["answer_mask"], batch["answer_labels"]
    idx = batch["list_index"]  # (N,): the list of each response row
    cache = DynamicCache()
    p_pos = (p_mask.cumsum(1) - 1).clamp(min=0)
    out = decoder(
        input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True, **{kw: cache}
    )
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
    if cache.get_seq_length() != p_ids.shape[1]:
        return None
    last = out.last_hidden_state[:, -1]  # (B, hidden): predicts each answer's first token
    cache.batch_select_indices(idx)
    lengths = p_mask.sum(1)[idx]  # (N,)
    a_pos = lengths[:, None] + torch.arange(a_ids.shape[1], device=a_ids.device)[None]
    mask = torch.cat([p_mask[idx], a_mask], dim=1)  # (N, Lp + La)
    out = decoder(
        input_ids=a_ids, attention_mask=mask, position_ids=a_pos, use_cache=True, **{kw: cache}
    )
    hidden = torch.cat([last[idx][:, None], out.last_hidden_state[:, :-1]], dim=1)  # (N, La)
    keep = a_lab != IGNORE_INDEX
    logits = head(hidden[keep]).float()  # (labelled tokens, vocab)
    token_logp = -F.cross_entropy(logits, a_lab[keep], reduction="none")
    rows = torch.arange(a_ids.shape[0], device=a_ids.device)[:, None].expand_as(a_lab)
    values = torch.zeros(a_ids.shape[0], dtype=token_logp.dtype, device=token_logp.device)
    return values.index_add(0, rows[keep], token_logp)


def list_logps(
    model: Any,
    batch: dict[str, torch.Tensor],
    *,
    share_prompt: bool = True,
) -> torch.Tensor:
    """Sequence log-probs of the responses of a :class:`ListCollator` batch, (N,): with the
    prompt shared (:func:`shared_prompt_logps`) where the model allows, else every response
    with its prompt (:func:`sequence_logps`). One forward of ``model`` (under DDP, of its
    wrapper: :func:`spectune.models.forward.as_forward`)."""

    def forward(module: Any) -> torch.Tensor:
        if share_prompt:
            shared = shared_prompt_logps(module, batch)
            if shared is not None:
                return shared
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        return sequence_logps(module, ids, mask, labels)

    return as_forward(model, forward)


def score_features(
    model: Any,
    features: list[dict[str, Any]],
    pad_id: int,
    *,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "log-probs",
    share_prompt: bool = True,
) -> list[list[float]]:
    """The model's sequence log-probability of every response of every tokenized list, in
    eval mode without gradients (mode restored afterwards)."""
    order = sorted(range(len(features)), key=lambda i: max(map(len, features[i]["input_ids"])))
    groups, size = [[]], 0  # lists in length order, about batch_size responses a forward
    for i in order:
        k = len(features[i]["input_ids"])
        if groups[-1] and size + k > batch_size:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += k
    collate = ListCollator(pad_id)
    out: list[list[float]] = [[] for _ in features]
    device = model_device(model)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            for group in track(groups, len(groups), desc, enabled=progress, unit="batch"):
                batch = {k: v.to(device) for k, v in collate([features[i] for i in group]).items()}
                logps = list_logps(model, batch, share_prompt=share_prompt).tolist()
                pos = 0
                for i in group:
                    k = len(features[i]["input_ids"])
                    out[i] = logps[pos : pos + k]
                    pos += k
    finally:
        if was_training:
            model.train()
    return out
