"""Ranking metrics: how well a model's scores order a list of responses against their graded
labels (pair accuracy, NDCG), and those labels rescaled to [0, K - 1] (:func:`list_labels`).
LiPO trains on such labels and judges its held-out lists with these metrics."""

from __future__ import annotations

import math

#: the highest label of a list: K - 1 for a list of K responses, at most this (2^30 - 1 is
#: the largest gain, exact in float32).
MAX_LABEL = 30


def list_labels(scores: list[float] | tuple[float, ...]) -> list[float]:
    """The labels psi of one list: its scores rescaled linearly (min-max) to [0, K - 1], K the
    number of responses (at most :data:`MAX_LABEL`): the lowest score gets 0, the highest
    K - 1, the others keep their relative gaps. So the gain 2^psi - 1 is at most 2^(K-1) - 1
    whatever the scores' scale (Elo-like 1500/900, 0-100, 1e300 or 1e-300), and the task
    checker's grades 0-3 of a list of 4 that holds a 0 and a 3 are unchanged. All-equal scores
    give all 0 (no pair)."""
    lo, hi = min(scores), max(scores)
    top = float(min(len(scores) - 1, MAX_LABEL))
    half = hi / 2 - lo / 2  # halves: the span of two finite floats may overflow, this cannot
    if not half > 0:
        return [0.0] * len(scores)
    return [min(top, max(0.0, (s / 2 - lo / 2) / half * top)) for s in scores]


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
