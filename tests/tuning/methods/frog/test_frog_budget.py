"""Budget: T_trainable = round(G T) and largest-remainder allocation with caps."""

from __future__ import annotations

import numpy as np
import pytest

from spectune.errors import SpectuneError
from spectune.tuning.methods.frog.budget import allocate, total_trainable


def test_total_trainable_rounds_half_up():
    assert total_trainable(0.01, 1000) == 10
    assert total_trainable(0.0125, 200) == 3  # 2.5 -> 3 (round half up, not to even)
    assert total_trainable(0.0149, 100) == 1
    assert total_trainable(1.0, 77) == 77
    with pytest.raises(SpectuneError, match="rounds to 0"):
        total_trainable(0.001, 100)
    with pytest.raises(SpectuneError, match="budget"):
        total_trainable(0.0, 100)
    with pytest.raises(SpectuneError, match="budget"):
        total_trainable(1.5, 100)


def test_allocate_hand_case_largest_remainder():
    # exact shares 3.5, 3.3, 3.2 of 10 -> floors 3,3,3, leftover 1 to the largest remainder
    got = allocate(10, [0.35, 0.33, 0.32], [100, 100, 100])
    assert got.tolist() == [4, 3, 3]
    # ties go to the earlier matrix: shares 2.5, 2.5 of 5
    assert allocate(5, [1.0, 1.0], [10, 10]).tolist() == [3, 2]


def test_allocate_hand_case_capping_and_redistribution():
    # shares of 60: 30 / 15 / 15, but matrix 0 holds only 10 -> 50 left, split 1:1
    got = allocate(60, [2.0, 1.0, 1.0], [10, 100, 100])
    assert got.tolist() == [10, 25, 25]
    # cascade: capping matrix 0 pushes matrix 1 over its cap too
    got = allocate(90, [4.0, 2.0, 1.0], [20, 30, 100])
    assert got.tolist() == [20, 30, 40]
    # zero-weight matrices get nothing until the others are full, then the free room
    assert allocate(5, [1.0, 0.0], [10, 10]).tolist() == [5, 0]
    assert allocate(14, [1.0, 0.0, 0.0], [10, 6, 2]).tolist() == [10, 3, 1]


def test_allocate_many_random_cases():
    rng = np.random.default_rng(0)
    for case in range(500):
        n = int(rng.integers(1, 40))
        caps = rng.integers(0, 5000, n)
        if rng.random() < 0.3:  # some tiny matrices to force capping
            caps[rng.integers(0, n)] = int(rng.integers(0, 5))
        weights = rng.random(n) ** 3
        if rng.random() < 0.2:
            weights[rng.integers(0, n)] = 0.0
        budget = float(rng.uniform(0.001, 1.0))
        total = min(int(caps.sum()), round(budget * caps.sum()))
        got = allocate(total, weights, caps)
        assert got.dtype == np.int64
        assert int(got.sum()) == total, case
        assert (got >= 0).all() and (got <= caps).all(), case
        if total <= caps.min() and weights.sum() > 0:  # no cap can bind: pure rounding
            exact = total * weights / weights.sum()
            assert (np.abs(got - exact) < 1.0).all(), case
            assert (got[weights == 0] == 0).all(), case


def test_allocate_uncapped_is_within_one_of_the_exact_share():
    rng = np.random.default_rng(1)
    for case in range(300):
        n = int(rng.integers(1, 50))
        weights = rng.random(n)
        total = int(rng.integers(0, 10_000))
        got = allocate(total, weights, np.full(n, 10_000))
        exact = total * weights / weights.sum()
        assert int(got.sum()) == total, case
        assert (np.abs(got - exact) < 1.0).all(), case
        # largest remainder: whoever got rounded up has a fraction >= anyone rounded down
        up = got > np.floor(exact)
        if up.any() and (~up).any():
            frac = exact - np.floor(exact)
            assert frac[up].min() >= frac[~up].max() - 1e-9, case


def test_allocate_errors():
    with pytest.raises(SpectuneError, match="cannot place"):
        allocate(11, [1.0, 1.0], [5, 5])
    with pytest.raises(SpectuneError, match="weights"):
        allocate(1, [1.0, -1.0], [5, 5])
    with pytest.raises(SpectuneError, match="weights"):
        allocate(1, [1.0, float("nan")], [5, 5])
    with pytest.raises(SpectuneError, match="caps"):
        allocate(1, [1.0], [5, 5])
