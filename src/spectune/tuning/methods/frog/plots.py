"""The FROG layer-importance charts (paper sections 9 and 10), from a plan's table.

Both functions take ``FrogPlan.table`` (a DataFrame with columns ``name, layer, module,
size, frobenius, importance, trainable, score_sum``) and return a matplotlib ``Figure``
built without pyplot, so they work under any backend and keep no global state. Matrices
outside numbered blocks (``layer`` missing, e.g. a head) are drawn as one bar "other".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import pandas as pd

_OTHER = "other"


def _by_layer(table: pd.DataFrame, column: str) -> tuple[list[str], list[str], np.ndarray]:
    """Pivot ``column`` into (layer labels, module kinds, values[kind, layer])."""
    import pandas as pd

    required = {"layer", "module", column}
    missing = required - set(table.columns)
    if missing:
        raise ValueError(f"the FROG table lacks column(s) {sorted(missing)}; pass FrogPlan.table")
    if table.empty:
        raise ValueError("the FROG table is empty")
    layer = table["layer"].astype("Int64")
    numbered = sorted(int(v) for v in layer.dropna().unique())
    labels = [str(v) for v in numbered] + ([_OTHER] if layer.isna().any() else [])
    position = {v: i for i, v in enumerate(numbered)}
    kinds = list(dict.fromkeys(table["module"]))
    values = np.zeros((len(kinds), len(labels)))
    for lay, kind, value in zip(layer, table["module"], table[column], strict=True):
        col = len(numbered) if pd.isna(lay) else position[int(lay)]
        values[kinds.index(kind), col] += float(value)
    return labels, kinds, values


def _stacked(ax, labels: list[str], kinds: list[str], values: np.ndarray) -> None:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(kinds) > 10 else "tab10"]
    x = np.arange(len(labels))
    bottom = np.zeros(len(labels))
    for k, kind in enumerate(kinds):
        ax.bar(x, values[k], bottom=bottom, width=0.8, color=cmap(k % cmap.N), label=kind)
        bottom += values[k]
    step = max(1, len(labels) // 30)
    ax.set_xticks(x[::step], labels[::step])
    ax.set_xlim(-0.6, len(labels) - 0.4)


def layer_importance_figure(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Matrix importance per layer (paper section 9): one bar per layer, stacked by module.

    A bar's height is the sum of the ``importance`` of the layer's target matrices (R_i,
    which sums to 1 over the model), so a uniform model would give 1 / n_layers each.

    Args:
        table: ``FrogPlan.table``.
        title: figure title (default describes the content).

    Returns:
        The Figure (x: layer number as in the module names, y: importance).
    """
    labels, kinds, values = _by_layer(table, "importance")
    fig = Figure(figsize=(max(6.0, 0.28 * len(labels) + 2.5), 4.2), layout="constrained")
    ax = fig.subplots()
    _stacked(ax, labels, kinds, values)
    ax.axhline(1.0 / len(labels), color="0.3", lw=0.8, ls="--", label="uniform")
    ax.legend(fontsize="small", ncols=min(len(kinds) + 1, 4), loc="upper left", frameon=False)
    ax.set_xlabel("layer")
    ax.set_ylabel("matrix importance (sum over the layer)")
    ax.set_title(title or "FROG layer importance")
    ax.set_ylim(0, values.sum(axis=0).max() * 1.25)
    return fig


def global_selection_figure(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Global selection per layer (paper section 10): who gets the globally top weights.

    Top panel: each layer's importance under global selection (its share of the sum of the
    selected scores, stacked by module), with the Frobenius importance the layer would have
    under per-matrix selection drawn as black markers for comparison. Bottom panel: the
    percentage of each layer's target weights that were selected, with the global budget
    as a dashed line.

    Args:
        table: ``FrogPlan.table`` of a ``selection="global"`` plan (works for any plan).
        title: figure title.

    Returns:
        The Figure.
    """
    labels, kinds, share = _by_layer(table, "score_sum")
    total = share.sum()
    share = share / total if total > 0 else share
    _, _, norms = _by_layer(table, "frobenius")
    frob = norms.sum(axis=0) / norms.sum() if norms.sum() > 0 else norms.sum(axis=0)
    _, _, trainable = _by_layer(table, "trainable")
    _, _, size = _by_layer(table, "size")
    percent = 100.0 * trainable.sum(axis=0) / size.sum(axis=0)
    budget = 100.0 * trainable.sum() / size.sum()

    fig = Figure(figsize=(max(6.0, 0.28 * len(labels) + 2.5), 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    _stacked(top, labels, kinds, share)
    x = np.arange(len(labels))
    top.plot(x, frob, "k_", ms=12, mew=2, label="Frobenius importance")
    top.legend(fontsize="small", ncols=min(len(kinds) + 1, 4), loc="upper left", frameon=False)
    top.set_ylabel("share of selected scores")
    top.set_ylim(0, max(share.sum(axis=0).max(), frob.max()) * 1.3)
    top.set_title(title or "FROG global selection: layer importance")
    bottom.bar(x, percent, width=0.8, color="tab:blue")
    bottom.axhline(budget, color="0.3", lw=0.8, ls="--", label=f"budget {budget:.3g}%")
    bottom.legend(fontsize="small", loc="upper left", frameon=False)
    bottom.set_ylabel("% of the layer's weights selected")
    bottom.set_xlabel("layer")
    return fig
