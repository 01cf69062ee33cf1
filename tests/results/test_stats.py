"""Study statistics: interval coverage on simulated data, paired differences, Spearman against
scipy, the variance-explained ranking on a planted effect, the Pareto front."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from spectune.results.stats import (
    bootstrap_mean,
    bootstrap_runs,
    paired_difference,
    pareto_front,
    spearman,
    variance_explained,
)


def test_bootstrap_mean_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(12)
    p, n, sims = 0.4, 120, 400
    covered = 0
    for i in range(sims):
        scores = (rng.random(n) < p).astype(float)  # per-question right/wrong
        covered += bootstrap_mean(scores, n_boot=1000, seed=i).contains(p)
    assert 0.93 * sims <= covered <= 0.97 * sims, covered / sims


def test_bootstrap_mean_half_width_matches_the_binomial_for_64_questions():
    scores = np.array([1.0] * 32 + [0.0] * 32)
    ci = bootstrap_mean(scores, seed=0)
    assert ci.estimate == 0.5 and ci.n == 64
    assert ci.half_width == pytest.approx(1.96 * 0.5 / 8, abs=0.02)  # about +-12 points
    assert bootstrap_mean(scores, seed=0) == ci  # seeded


def test_bootstrap_runs_covers_a_mean_with_seed_to_seed_variation():
    rng = np.random.default_rng(3)
    covered, sims = 0, 200
    for i in range(sims):
        # each seed has its own true rate around 0.5 (sd 0.05) and 80 questions
        runs = [(rng.random(80) < rng.normal(0.5, 0.05)).astype(float) for _ in range(5)]
        covered += bootstrap_runs(runs, n_boot=800, seed=i).contains(0.5)
    assert covered >= 0.88 * sims, covered / sims
    one = bootstrap_runs([[1, 0, 1, 1]])
    assert one.runs == 1 and one.estimate == 0.75


def test_paired_difference_resolves_a_real_gap_and_not_noise():
    rng = np.random.default_rng(0)
    truth = rng.random(400) < 0.5
    a = truth.astype(float)
    b = np.where(rng.random(400) < 0.25, 1 - a, a)  # b flips a quarter of a's answers
    b[:60] = 0.0
    a[:60] = 1.0  # a is right on 60 questions b gets wrong
    d = paired_difference(a, b, names=("lora", "frog"))
    assert d.resolved and d.verdict == "lora higher" and d.interval.low > 0
    same = paired_difference(a, np.roll(a, 0), names=("x", "y"))
    assert same.interval.estimate == 0 and not same.resolved
    noisy = paired_difference([1, 0, 1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0, 1, 0])
    assert not noisy.resolved and noisy.verdict == "within noise"
    order = rng.permutation(400)  # the planted gap spread over both seeds
    a, b = a[order], b[order]
    per_seed = paired_difference([a[:200], a[200:]], [b[:200], b[200:]])
    assert per_seed.interval.runs == 2 and per_seed.resolved
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([1, 0], [1, 0, 1])


def test_spearman_agrees_with_scipy_and_is_undetermined_with_few_runs():
    rng = np.random.default_rng(5)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    y[3] = y[7]  # a tie
    c = spearman(x, y, names=("alpha", "gain"))
    assert c.rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert c.low < c.rho < c.high and c.resolved
    few = spearman([1, 2, 3], [3, 1, 2])
    assert few.rho is None and "at least 5" in few.reason and few.text().startswith("undetermined")
    flat = spearman([1, 1, 1, 1, 1, 1], [1, 2, 3, 4, 5, 6], names=("a", "b"))
    assert flat.rho is None and "a is the same" in flat.reason
    missing = spearman([1, 2, None, 4, 5, 6], [2, 1, 5, None, 3, 6])
    assert missing.n == 4 and missing.rho is None
    # two values (full fine-tuning's base against everyone else's): groups, not a trend
    two = spearman([6.46, 6.48, 6.48, 6.46, 6.48, 6.48], [1, 2, 3, 4, 5, 6], names=("base", "g"))
    assert two.rho is None and "base takes only 2 distinct values over the 6 runs" in two.reason
    three = spearman([1, 1, 2, 2, 3, 3], [1, 2, 3, 4, 5, 6], unit="layer")
    assert three.rho == pytest.approx(spearmanr([1, 1, 2, 2, 3, 3], range(6)).statistic)
    assert "4 layer(s)" in spearman([1, 2, 3, 4], [1, 2, 3, 4], unit="layer").reason


def test_variance_explained_finds_the_planted_parameter():
    rng = np.random.default_rng(1)
    rows = []
    for r in (4, 8, 16):
        for alpha in (8, 16, 32, 64):
            for dropout in (0.0, 0.1):
                for seed in range(2):
                    acc = 0.3 + 0.004 * alpha + 0.002 * r + rng.normal(0, 0.01)
                    rows.append({"r": r, "lora_alpha": alpha, "lora_dropout": dropout,
                                 "seed": seed, "acc": acc})  # fmt: skip
    rows.append({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "seed": 0, "acc": None})
    ranked = variance_explained(rows, ["r", "lora_dropout", "lora_alpha", "model"], "acc")
    assert [e.parameter for e in ranked][:3] == ["lora_alpha", "r", "lora_dropout"]
    assert ranked[0].eta_squared > 0.8 and ranked[2].eta_squared < 0.05
    assert ranked[-1].parameter == "model" and ranked[-1].eta_squared is None
    assert "one value" in ranked[-1].reason


def test_pareto_front_on_a_hand_built_table():
    #          gain  forgetting
    table = [
        (0.30, 0.50),  # full: most gain, most forgetting -> front
        (0.20, 0.10),  # lora -> front
        (0.15, 0.20),  # dora: lora beats it on both
        (0.05, 0.00),  # frog: least forgetting -> front
        (0.20, 0.10),  # a tie with lora -> front too (neither beats the other)
        (None, 0.0),
    ]  # failed
    assert pareto_front(*zip(*table, strict=True)) == [True, True, False, True, True, False]
