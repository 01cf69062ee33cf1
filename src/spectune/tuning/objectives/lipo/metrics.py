"""Ranking metrics of held-out lists: pairwise accuracy (ties count 1/2) and NDCG (tied scores
share the mean discount of their ranks)."""

from __future__ import annotations

import math

from spectune.tuning.objectives.lipo.data import list_labels


def pair_accuracy(scores: list[float], labels: list[float]) -> tuple[float, int]:
    """(sum of correct pair outcomes, number of pairs) of one list: over pairs with
    psi_i > psi_j, 1 when s_i > s_j, 1/2 when equal."""
    hit, n = 0.0, 0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if labels[i] > labels[j]:
                n += 1
                hit += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return hit, n


def ndcg(scores: list[float], labels: list[float]) -> float:
    """NDCG of one list ordered by ``scores`` (gain 2^psi - 1, psi the labels rescaled to
    [0, K - 1] by :func:`list_labels`, discount 1/log2(1 + rank)); tied scores share the mean
    discount of their ranks. NaN for all-equal labels."""
    gains = [2.0**lab - 1 for lab in list_labels(labels)]
    disc = [1.0 / math.log2(1 + r) for r in range(1, len(scores) + 1)]
    ideal = sum(g * d for g, d in zip(sorted(gains, reverse=True), disc, strict=True))
    if ideal <= 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    dcg, pos = 0.0, 0
    while pos < len(order):
        end = pos
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[pos]]:
            end += 1
        mean_d = sum(disc[pos : end + 1]) / (end + 1 - pos)
        dcg += mean_d * sum(gains[order[k]] for k in range(pos, end + 1))
        pos = end + 1
    return dcg / ideal


def ranking_metrics(
    score_lists: list[list[float]], label_lists: list[list[float]], prefix: str
) -> dict[str, float]:
    """``<prefix>_accuracy`` (pairwise, over all pairs of all lists) and ``<prefix>_ndcg``
    (mean over lists)."""
    hit = n = 0.0
    ndcgs = []
    for s, lab in zip(score_lists, label_lists, strict=True):
        h, k = pair_accuracy(s, lab)
        hit, n = hit + h, n + k
        ndcgs.append(ndcg(s, lab))
    ndcgs = [v for v in ndcgs if not math.isnan(v)]
    return {
        f"{prefix}_accuracy": hit / n if n else float("nan"),
        f"{prefix}_ndcg": sum(ndcgs) / len(ndcgs) if ndcgs else float("nan"),
    }
