"""Distillation's losses: the generalized Jensen-Shannon divergence (forward KL at beta 0,
reverse KL at beta 1) and the loss of a batch (divergence, NLL mix, rationale task)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from spectune.errors import SpectuneError
from spectune.models.forward import as_forward, decoder_and_head
from spectune.models.tokenizer import IGNORE_INDEX


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token generalized Jensen-Shannon divergence between teacher p and student q.

    ``beta * KL(p || m) + (1 - beta) * KL(q || m)`` with ``m = beta p + (1 - beta) q``;
    ``beta = 0`` is exactly KL(p || q) (forward), ``beta = 1`` exactly KL(q || p) (reverse).
    TRL's ``GKDTrainer.generalized_jsd_loss`` with ``reduction="none"``, summed over the
    vocabulary.

    Args:
        student_logits: (tokens, vocab).
        teacher_logits: (tokens, vocab), no gradient needed.
        beta: in [0, 1].
        temperature: both logits are divided by it.

    Returns:
        (tokens,) divergences in nats, computed in float32 (or the inputs' wider dtype).
    """
    if not 0 <= beta <= 1:
        raise SpectuneError(f"beta must be in [0, 1], got {beta!r}")
    if student_logits.shape != teacher_logits.shape:
        raise SpectuneError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)  # (tokens, vocab)
    t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if beta == 0:
        return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)  # KL(t || s)
    if beta == 1:
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)  # KL(s || t)
    m = torch.logaddexp(t + math.log(beta), s + math.log1p(-beta))  # log of the mixture
    kl_t = F.kl_div(m, t, reduction="none", log_target=True).sum(-1)  # KL(t || m)
    kl_s = F.kl_div(m, s, reduction="none", log_target=True).sum(-1)  # KL(s || m)
    return beta * kl_t + (1 - beta) * kl_s


def labelled_logits(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Logits of the next-token predictions at ``keep`` (batch, length - 1), the head applied
    only there when the model can be split into decoder and head. (positions, vocab)."""
    parts = decoder_and_head(model)
    if parts is None:
        return model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]
    decoder, head = parts

    def forward(_: Any) -> torch.Tensor:
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return head(hidden[:, :-1][keep])

    return as_forward(model, forward)


def distill_batch_loss(
    student: Any,
    teacher: Any,
    inputs: dict[str, torch.Tensor],
    *,
    beta: float,
    temperature: float,
    sft_weight: float,
    rationale_weight: float,
) -> tuple[torch.Tensor, int]:
    """The loss of one batch and its labelled token count.

    ``(1 - sft_weight) * mean divergence + sft_weight * mean NLL`` over the answer tokens,
    plus ``rationale_weight * mean NLL`` over the rationale tokens (when the batch has any).
    The teacher runs without gradients.
    """
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    task = inputs.get("task")
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX  # (batch, length - 1)
    answer_rows = torch.ones_like(keep[:, 0]) if task is None else task == 0  # (batch,)
    logits = labelled_logits(student, ids, mask, keep).float()  # (labelled, vocab)
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(keep)[keep]
    is_answer = answer_rows[rows]  # (labelled,)
    y = target[keep]
    loss = logits.new_zeros(())
    if bool(is_answer.any()):
        s_logits = logits[is_answer]
        t_keep = inputs["teacher_labels"][:, 1:] != IGNORE_INDEX
        with torch.no_grad():
            t_logits = labelled_logits(
                teacher, inputs["teacher_input_ids"], inputs["teacher_attention_mask"], t_keep
            ).float()
        if t_logits.shape != s_logits.shape:
            raise SpectuneError(
                f"teacher and student label {t_logits.shape[0]} and {s_logits.shape[0]} "
                f"tokens of a batch (vocabularies {t_logits.shape[-1]} and "
                f"{s_logits.shape[-1]}); they must score the same response tokens"
            )
        div = generalized_jsd(s_logits, t_logits, beta=beta, temperature=temperature).mean()
        loss = loss + (1 - sft_weight) * div
        if sft_weight > 0:
            loss = loss + sft_weight * F.cross_entropy(s_logits, y[is_answer])
    if bool((~is_answer).any()):
        loss = loss + rationale_weight * F.cross_entropy(logits[~is_answer], y[~is_answer])
    return loss, int(keep.sum())
