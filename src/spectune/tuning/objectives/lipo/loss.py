"""LiPO's list losses on a batch of implicit rewards: LiPO-lambda (LambdaLoss weights over the
ranks), the pairwise DPO logistic loss and the listwise softmax cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spectune import _check as check
from spectune.judging.ranking import MAX_LABEL
from spectune.tuning.objectives.lipo.section import LOSSES


def _pairs(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, K, K) bool: entry (i, j) is a pair with psi_i > psi_j, both real."""
    both = mask[:, :, None] & mask[:, None, :]
    return (labels[:, :, None] > labels[:, None, :]) & both


def ranks(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1-based rank of each score in its list, descending (ties keep list order; padding
    last). Shapes (B, K) -> (B, K) float."""
    filled = scores.detach().masked_fill(~mask, float("-inf"))
    order = torch.argsort(filled, dim=1, descending=True, stable=True)
    tau = torch.empty_like(order)
    pos = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order)
    tau.scatter_(1, order, pos)
    return tau.to(scores.dtype)


def graded_labels(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`list_labels` of every list of a batch: each row's real entries rescaled to
    [0, K - 1] (K its real entries, at most :data:`MAX_LABEL` + 1); padding 0. (B, K) ->
    (B, K), no gradient."""
    with torch.no_grad():
        lo = labels.masked_fill(~mask, float("inf")).min(dim=1, keepdim=True)[0]
        hi = labels.masked_fill(~mask, float("-inf")).max(dim=1, keepdim=True)[0]
        top = (mask.sum(dim=1, keepdim=True) - 1).clamp(min=0, max=MAX_LABEL).to(labels.dtype)
        half = hi / 2 - lo / 2
        scaled = (labels / 2 - lo / 2) / torch.where(half > 0, half, torch.ones_like(half))
        scaled = torch.minimum(scaled.clamp(min=0.0) * top, top)
        return scaled.masked_fill(~mask | ~(half > 0), 0.0)


def lambda_weights(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LambdaLoss weights |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|, G = 2^psi - 1 with psi
    the labels rescaled to [0, K - 1] (:func:`graded_labels`), D(tau) = log(1 + tau), tau the
    ranks under ``scores``. (B, K) -> (B, K, K), no gradient."""
    with torch.no_grad():
        gain = torch.pow(2.0, graded_labels(labels, mask)) - 1
        inv_d = 1.0 / torch.log1p(ranks(scores, mask))
        return (gain[:, :, None] - gain[:, None, :]).abs() * (
            inv_d[:, :, None] - inv_d[:, None, :]
        ).abs()


def lipo_loss(
    rewards: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    loss: str = "lambda",
) -> torch.Tensor:
    """The list loss of a batch, averaged over its lists (see the module docstring).

    Args:
        rewards: implicit rewards s, (B, K).
        labels: psi, (B, K).
        mask: (B, K) bool, False on padding (lists shorter than K); None: all real.
        loss: ``"lambda"``, ``"dpo"`` or ``"softmax"``.

    Returns:
        A 0-d tensor. Lists without a pair (all-equal labels) do not count.
    """
    check.choice("loss", loss, LOSSES)
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    labels = labels.to(rewards.dtype)
    pairs = _pairs(labels, mask)
    n_pairs = pairs.sum(dim=(1, 2))
    valid = n_pairs > 0
    if loss == "softmax":
        shifted = graded_labels(labels, mask)  # psi - min psi, scaled: the weights are the same
        weights = shifted / shifted.sum(dim=1, keepdim=True).clamp(min=1e-12)
        logp = torch.log_softmax(rewards.masked_fill(~mask, float("-inf")), dim=1)
        per_list = -(weights * logp.masked_fill(~mask, 0.0)).sum(dim=1)
    else:
        diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K): s_i - s_j
        terms = -F.logsigmoid(diff).masked_fill(~pairs, 0.0)
        if loss == "lambda":
            per_list = (terms * lambda_weights(rewards, labels, mask)).sum(dim=(1, 2))
        else:
            per_list = terms.sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    if not bool(valid.any()):
        return rewards.sum() * 0.0
    return per_list[valid].mean()
