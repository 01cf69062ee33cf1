"""The section 9 / section 10 layer-importance charts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from spectune.tuning.methods.frog.plots import global_selection_figure, layer_importance_figure


def _table():
    # 2 layers x 2 kinds + one head outside the layers
    return pd.DataFrame(
        {
            "name": ["m.layers.0.q", "m.layers.0.up", "m.layers.1.q", "m.layers.1.up", "head"],
            "layer": pd.array([0, 0, 1, 1, None], dtype="Int64"),
            "module": ["q", "up", "q", "up", "head"],
            "size": [100, 200, 100, 200, 400],
            "frobenius": [1.0, 2.0, 1.0, 3.0, 3.0],
            "importance": [0.1, 0.2, 0.1, 0.3, 0.3],
            "trainable": [2, 0, 5, 3, 0],
            "score_sum": [4.0, 0.0, 10.0, 6.0, 0.0],
        }
    )


def _bar_totals(ax, n_bars):
    """Sum of the stacked bar heights at each x position."""
    totals = np.zeros(n_bars)
    for patch in ax.patches:
        x = int(round(patch.get_x() + patch.get_width() / 2))
        totals[x] += patch.get_height()
    return totals


def test_layer_importance_sums_per_layer():
    fig = layer_importance_figure(_table())
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose(_bar_totals(ax, 3), [0.3, 0.4, 0.3])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "other"]
    assert ax.get_xlabel() == "layer"


def test_global_selection_panels():
    fig = global_selection_figure(_table())
    top, bottom = fig.axes
    np.testing.assert_allclose(_bar_totals(top, 3), [0.2, 0.8, 0.0])  # 4/20, 16/20, 0
    np.testing.assert_allclose(_bar_totals(bottom, 3), [100 * 2 / 300, 100 * 8 / 300, 0.0])
    frob = top.lines[0].get_ydata()
    np.testing.assert_allclose(frob, [0.3, 0.4, 0.3])  # Frobenius share per layer
    budget = bottom.lines[0].get_ydata()[0]
    assert budget == pytest.approx(100 * 10 / 1000)
    fig.savefig(__import__("io").BytesIO(), format="png")  # renders


def test_bad_table():
    with pytest.raises(ValueError, match="lacks column"):
        layer_importance_figure(pd.DataFrame({"layer": [0]}))
    with pytest.raises(ValueError, match="empty"):
        layer_importance_figure(_table().iloc[:0])
