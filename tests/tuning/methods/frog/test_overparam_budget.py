"""FROG's overparameterization option: budget moved away from / towards alpha > 6 matrices."""

from __future__ import annotations

import numpy as np
import pytest

from spectune.errors import SpectuneError
from spectune.tuning.methods.frog.budget import allocate, overparam_importance
from spectune.tuning.methods.frog.config import FrogConfig


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


def test_plan_frog_moves_the_budget_by_overparam():
    """plan_frog applies the option: with alphas given, 'away' gives the alpha > 6 matrix a
    smaller share of the same total than 'none', 'towards' a larger one."""
    import torch

    from spectune.tuning.methods.frog import FrogConfig, plan_frog

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 32))
    alphas = {"0": 7.5, "1": 3.0}  # module "0" is overparameterized
    share = {}
    for mode in ("none", "away", "towards"):
        plan = plan_frog(model, FrogConfig(budget=0.1, overparam=mode, target_modules=["0", "1"]),
                         alphas=alphas)  # fmt: skip
        counts = dict(zip(plan.table["name"], plan.table["trainable"], strict=True))
        assert plan.total_trainable == sum(counts.values()) == round(0.1 * 2 * 32 * 32)
        share[mode] = counts["0"] / plan.total_trainable
    assert share["away"] < share["none"] < share["towards"]
