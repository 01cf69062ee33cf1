"""FROG's overparameterization option: budget moved away from / towards alpha > 6 matrices."""

from __future__ import annotations

import numpy as np
import pytest

from spectune.errors import SpectuneError
from spectune.frog.budget import allocate, overparam_importance
from spectune.frog.config import FrogConfig


def test_away_and_towards_move_the_share_of_overparameterized_matrices():
    r = np.array([0.25, 0.25, 0.25, 0.25])
    alphas = np.array([3.0, 7.5, np.nan, 6.5])
    away = overparam_importance(r, alphas, mode="away", factor=0.5)
    towards = overparam_importance(r, alphas, mode="towards", factor=0.5)
    np.testing.assert_allclose(away, [1 / 3, 1 / 6, 1 / 3, 1 / 6])
    np.testing.assert_allclose(towards, [1 / 6, 1 / 3, 1 / 6, 1 / 3])
    np.testing.assert_allclose(overparam_importance(r, alphas, mode="none"), r)
    sizes = np.array([1000, 1000, 1000, 1000])
    counts = allocate(300, away, sizes)
    assert counts.sum() == 300 and counts[1] == counts[3] == 50
    # nothing above the threshold: nothing moves
    np.testing.assert_allclose(overparam_importance(r, [2.0, 3, 4, 5], mode="away"), r)


def test_bad_options_name_the_field():
    with pytest.raises(SpectuneError, match="overparam_factor"):
        FrogConfig(overparam="away", overparam_factor=1.5)
    with pytest.raises(SpectuneError, match="overparam must be one of|overparam"):
        FrogConfig(overparam="sideways")
    with pytest.raises(SpectuneError, match="per_matrix"):
        FrogConfig(overparam="away", selection="global")
    with pytest.raises(SpectuneError, match="alphas for"):
        overparam_importance([0.5, 0.5], [7.0], mode="away")
    cfg = FrogConfig(overparam="towards", overparam_factor=0.25)
    assert FrogConfig.from_dict(cfg.to_dict()) == cfg
