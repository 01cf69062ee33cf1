"""Comparing two models layer by layer: scale collapse, and the correlation flow along depth.

Scale collapse (the FROG paper's WeightWatcher section; Martin & Mahoney on distillation): a
student or a tuned model whose layers lose norm relative to the rest. :func:`compare` matches
the rows of two :func:`~spectune.watch.analyze.analyze` tables by name and reports, per
layer, the change (b - a) of

* ``log_spectral_norm`` = log10(lambda_max) = log10 ||W||_2^2 and
* ``log_norm`` = log10 ||W||_F^2 (WeightWatcher's definitions),

and of alpha. A layer is *collapsed* when either change falls below the typical change by
more than ``z`` robust standard deviations (median and 1.4826 x median absolute deviation
over the matched layers) and by at least ``min_drop`` (log10 units; 0.1 is a 21% drop of the
squared norm): "relative to the rest", so a model scaled uniformly has no collapsed layer.
Rows that do not match (a name in one model only, or a name with different shapes) are
listed with their reason and left out of the comparison.

Correlation flow (:func:`correlation_flow`): per layer type (``q_proj``, ``down_proj``...),
alpha against depth (the block index in the name) with a least-squares line; layers whose
residual exceeds ``z`` robust standard deviations of that type's residuals break the flow.

:func:`compare_models` does both for two tables at once (a :class:`ModelComparison`: the
compare table, its summary, both flows and where the second bent the first);
:func:`base_and_tuned` splits one table of tuned matrices with ``base_*`` columns (what
``analyze(..., base=...)`` gives) into the base's table and the tuned one, so a fine-tune's
run compares its base and tuned matrices without analyzing the base twice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spectune.errors import SpectuneError
from spectune.watch.analyze import analyze

#: the compared columns
COMPARED = ["log_spectral_norm", "log_norm", "alpha"]
DEFAULT_Z = 3.5
DEFAULT_MIN_DROP = 0.1
_MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
_FLAT_RESIDUAL = 1e-9  # robust spread of a flow's residuals below this (relative): no outliers


def _table(x: Any, progress: bool, **kwargs: Any) -> pd.DataFrame:
    if isinstance(x, pd.DataFrame):
        return x
    return analyze(x, progress=progress, **kwargs)


def _robust_low(d: pd.Series, z: float, min_drop: float) -> pd.Series:
    """True where d is below its median by more than max(z * robust sd, min_drop)."""
    values = d.dropna()
    if values.empty:
        return pd.Series(False, index=d.index)
    med = float(values.median())
    sd = _MAD_SCALE * float((values - med).abs().median())
    return (d < med - max(z * sd, min_drop)).fillna(False)


def compare(
    a: Any,
    b: Any,
    *,
    z: float = DEFAULT_Z,
    min_drop: float = DEFAULT_MIN_DROP,
    progress: bool = True,
    **analyze_kwargs: Any,
) -> pd.DataFrame:
    """Compare two models layer by layer (teacher and student, base and tuned).

    Args:
        a: the reference model (a source :func:`~spectune.watch.analyze.analyze` takes,
            or its DataFrame).
        b: the other model, likewise.
        z: robust standard deviations below the typical change that flag a collapse.
        min_drop: the smallest drop (log10 units) flagged.
        progress: show progress bars while analyzing.
        **analyze_kwargs: passed to ``analyze`` for sources (e.g. ``layers``, ``precision``).

    Returns:
        One row per name in either model: ``longname``, ``layer_type``, ``match``
        ("matched", "only in a", "only in b", "shape mismatch"), the shapes (``N_a``, ``M_a``,
        ``N_b``, ``M_b``), the compared columns with ``_a`` / ``_b`` suffixes and their
        changes ``d_<column>`` (b - a), and ``collapsed`` (bool) with ``collapse`` naming
        the norms that collapsed. ``attrs["spectune_compare"]`` holds z and min_drop.

    Raises:
        SpectuneError: no layer matches by name and shape (the mismatches are named).
    """
    if z <= 0 or min_drop < 0:
        raise SpectuneError(f"z must be > 0 and min_drop >= 0, got z={z}, min_drop={min_drop}")
    ta = _table(a, progress, **analyze_kwargs)
    tb = _table(b, progress, **analyze_kwargs)
    for name, t in (("a", ta), ("b", tb)):
        missing = {"longname", "N", "M", *COMPARED} - set(t.columns)
        if missing:
            raise SpectuneError(f"compare(): table {name} lacks columns {sorted(missing)}")
    keep = ["longname", "layer_type", "N", "M", *COMPARED]
    m = ta[keep].merge(tb[keep], on="longname", how="outer", suffixes=("_a", "_b"), indicator=True)
    m["layer_type"] = m["layer_type_a"].fillna(m["layer_type_b"])
    m = m.drop(columns=["layer_type_a", "layer_type_b"])
    m["match"] = (
        m["_merge"]
        .map({"both": "matched", "left_only": "only in a", "right_only": "only in b"})
        .astype(str)
    )
    m = m.drop(columns="_merge")
    both = m["match"] == "matched"
    shape_diff = both & ((m["N_a"] != m["N_b"]) | (m["M_a"] != m["M_b"]))
    m.loc[shape_diff, "match"] = "shape mismatch"
    ok = m["match"] == "matched"
    if not ok.any():
        sample = ", ".join(
            f"{n} ({r})" for n, r in zip(m["longname"][:5], m["match"][:5], strict=True)
        )
        raise SpectuneError(
            f"compare(): no layer of the two models matches by name and shape ({sample}...)"
        )
    for col in COMPARED:
        m[f"d_{col}"] = np.where(ok, m[f"{col}_b"] - m[f"{col}_a"], np.nan)
    low_spec = _robust_low(m.loc[ok, "d_log_spectral_norm"], z, min_drop)
    low_frob = _robust_low(m.loc[ok, "d_log_norm"], z, min_drop)
    m["collapsed"] = False
    m["collapse"] = ""
    m.loc[low_spec.index, "collapsed"] = low_spec | low_frob
    labels = [
        ", ".join(n for n, f in (("spectral", s), ("frobenius", f_)) if f)
        for s, f_ in zip(low_spec, low_frob, strict=True)
    ]
    m.loc[low_spec.index, "collapse"] = labels
    lead = ["longname", "layer_type", "match", "N_a", "M_a", "N_b", "M_b"]
    cols = [f"{c}_{s}" for c in COMPARED for s in ("a", "b")] + [f"d_{c}" for c in COMPARED]
    out = m[lead + cols + ["collapsed", "collapse"]].reset_index(drop=True)
    out.attrs["spectune_compare"] = {"z": z, "min_drop": min_drop}
    return out


def compare_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Counts and means of a :func:`compare` table (JSON-able)."""
    ok = table[table["match"] == "matched"]
    out: dict[str, Any] = {
        "n_matched": int(len(ok)),
        "n_only_in_a": int((table["match"] == "only in a").sum()),
        "n_only_in_b": int((table["match"] == "only in b").sum()),
        "n_shape_mismatch": int((table["match"] == "shape mismatch").sum()),
        "mismatched": [
            f"{n}: {r}"
            for n, r in zip(table["longname"], table["match"], strict=True)
            if r != "matched"
        ],
        "n_collapsed": int(ok["collapsed"].sum()),
        "collapsed_layers": [str(x) for x in ok.loc[ok["collapsed"], "longname"]],
    }
    for col in COMPARED:
        v = pd.to_numeric(ok[f"d_{col}"], errors="coerce").dropna()
        out[f"mean_d_{col}"] = float(v.mean()) if len(v) else math.nan
    return out


# ---------------------------------------------------------------------------------------------
# Correlation flow
# ---------------------------------------------------------------------------------------------

_DEPTH = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_depth(longname: str) -> int | None:
    """The block index in a module name (``model.layers.12.mlp.up_proj`` -> 12), or None."""
    m = _DEPTH.search(longname)
    return int(m.group(1)) if m else None


def correlation_flow(
    details: pd.DataFrame, *, column: str = "alpha", z: float = DEFAULT_Z
) -> pd.DataFrame:
    """Alpha along depth per layer type, with a fitted trend and the layers that break it.

    Args:
        details: an :func:`~spectune.watch.analyze.analyze` table.
        column: the metric followed along depth.
        z: robust standard deviations of a type's residuals beyond which a layer breaks the
            flow.

    Returns:
        One row per successful layer with a block index: ``longname``, ``kind`` (the last
        part of the name, with ``.lora_BA`` kept), ``depth``, the value, ``trend`` (the
        type's least-squares line at that depth), ``slope``, ``residual`` and ``breaks_flow``.
    """
    if column not in details.columns:
        raise SpectuneError(f"correlation_flow(): the table has no column {column!r}")
    ok = details["status"].eq("success") if "status" in details.columns else True
    t = details[ok].copy() if "status" in details.columns else details.copy()
    t["depth"] = [layer_depth(n) for n in t["longname"]]
    t = t[t["depth"].notna() & pd.to_numeric(t[column], errors="coerce").notna()]
    t["kind"] = [
        n.split(".")[-1] if not n.endswith(".lora_BA") else ".".join(n.split(".")[-2:])
        for n in t["longname"]
    ]
    rows = []
    for kind, g in t.groupby("kind", sort=True):
        x = g["depth"].astype(float).to_numpy()
        y = g[column].astype(float).to_numpy()
        if len(g) >= 2 and np.ptp(x) > 0:
            slope, icpt = np.polyfit(x, y, 1)
        else:
            slope, icpt = 0.0, float(np.mean(y))
        trend = slope * x + icpt
        res = y - trend
        med = float(np.median(res))
        sd = _MAD_SCALE * float(np.median(np.abs(res - med)))
        # a spread at rounding level (equal alphas, e.g. fits pinned at a bound) flags nothing
        tiny = _FLAT_RESIDUAL * max(1.0, float(np.max(np.abs(y))))
        breaks = np.abs(res - med) > z * sd if sd > tiny and len(g) >= 4 else np.zeros(len(g), bool)
        for i, name in enumerate(g["longname"]):
            rows.append(
                {
                    "longname": name,
                    "kind": kind,
                    "depth": int(x[i]),
                    column: y[i],
                    "trend": trend[i],
                    "slope": float(slope),
                    "residual": res[i],
                    "breaks_flow": bool(breaks[i]),
                }
            )
    return pd.DataFrame.from_records(
        rows,
        columns=["longname", "kind", "depth", column, "trend", "slope", "residual", "breaks_flow"],
    )


def flow_change(flow_a: pd.DataFrame, flow_b: pd.DataFrame, column: str = "alpha") -> pd.DataFrame:
    """Where fine-tuning bent the flow: two :func:`correlation_flow` tables (base, tuned)
    side by side.

    Returns:
        One row per layer in both: ``longname``, ``kind``, ``depth``, ``<column>_a``,
        ``<column>_b``, ``d_<column>``, each flow's ``trend_a`` / ``trend_b`` and
        ``slope_a`` / ``slope_b``, ``breaks_a``, ``breaks_b`` and ``bent`` (breaks the tuned
        model's flow but not the base's).
    """
    keep = ["longname", "kind", "depth", column, "trend", "slope", "breaks_flow"]
    m = flow_a[keep].merge(flow_b[keep], on=["longname", "kind", "depth"], suffixes=("_a", "_b"))
    m[f"d_{column}"] = m[f"{column}_b"] - m[f"{column}_a"]
    m = m.rename(columns={"breaks_flow_a": "breaks_a", "breaks_flow_b": "breaks_b"})
    m["bent"] = m["breaks_b"] & ~m["breaks_a"]
    order = ["longname", "kind", "depth", f"{column}_a", f"{column}_b", f"d_{column}",
             "trend_a", "trend_b", "slope_a", "slope_b", "breaks_a", "breaks_b", "bent"]  # fmt: skip
    return m[order]


@dataclass
class ModelComparison:
    """Two models compared layer by layer (:func:`compare_models`).

    Attributes:
        table: the :func:`compare` table (scale collapse).
        summary: :func:`compare_summary` of it plus the flow's lists: ``flow_breaks_a`` /
            ``flow_breaks_b`` (layers breaking each model's flow) and ``flow_bent`` (breaking
            b's but not a's), ``n_flow_bent``, and the ``labels`` of the two models.
        flow_a: :func:`correlation_flow` of a.
        flow_b: :func:`correlation_flow` of b.
        flow: :func:`flow_change` of the two.
    """

    table: pd.DataFrame
    summary: dict[str, Any]
    flow_a: pd.DataFrame
    flow_b: pd.DataFrame
    flow: pd.DataFrame


def compare_models(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    z: float = DEFAULT_Z,
    min_drop: float = DEFAULT_MIN_DROP,
    labels: tuple[str, str] = ("a", "b"),
) -> ModelComparison:
    """Scale collapse and correlation flow of two :func:`~spectune.watch.analyze.analyze`
    tables (reference first: teacher, base).

    Args:
        a / b: the two tables.
        z / min_drop: as for :func:`compare` (the flow's outliers use the same ``z``).
        labels: names of the two models (recorded in the summary, used by reports).

    Returns:
        A :class:`ModelComparison`.

    Raises:
        SpectuneError: as :func:`compare`.
    """
    table = compare(a, b, z=z, min_drop=min_drop, progress=False)
    summary = compare_summary(table)
    flow_a, flow_b = correlation_flow(a, z=z), correlation_flow(b, z=z)
    flow = flow_change(flow_a, flow_b)
    summary["flow_breaks_a"] = [str(x) for x in flow_a.loc[flow_a["breaks_flow"], "longname"]]
    summary["flow_breaks_b"] = [str(x) for x in flow_b.loc[flow_b["breaks_flow"], "longname"]]
    summary["flow_bent"] = [str(x) for x in flow.loc[flow["bent"], "longname"]]
    summary["n_flow_bent"] = len(summary["flow_bent"])
    summary["labels"] = [str(labels[0]), str(labels[1])]
    summary["z"], summary["min_drop"] = z, min_drop
    return ModelComparison(table, summary, flow_a, flow_b, flow)


#: the columns :func:`base_and_tuned` reads as the base's (``base_<column>``)
_BASE_AS = ["alpha", "log_norm", "log_spectral_norm", "status"]


def base_and_tuned(details: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The base's table and the tuned one from one table of tuned matrices with ``base_*``
    columns (``analyze(tuned, base=...)``, ``peft="with_base"``, ``plus_base=True``).

    The base rows keep the tuned rows' names, types and shapes; a LoRA pair's ``.lora_BA``
    suffix is dropped from the names (the rows are the module's weight W + Delta W).

    Returns:
        ``(base, tuned)``, each with ``longname``, ``layer_type``, ``N``, ``M`` and
        ``alpha``, ``log_norm``, ``log_spectral_norm``, ``status``.

    Raises:
        SpectuneError: the table lacks a base column (analyze it with ``base=``).
    """
    need = {"longname", "layer_type", "N", "M", *_BASE_AS, *(f"base_{c}" for c in _BASE_AS)}
    missing = need - set(details.columns)
    if missing:
        raise SpectuneError(
            f"base_and_tuned(): the table lacks {sorted(missing)}; analyze the tuned model "
            "with base= (the model it was tuned from)"
        )
    names = details["longname"].astype(str).str.replace(r"\.lora_BA$", "", regex=True)
    lead = details[["layer_type", "N", "M"]].assign(longname=names)
    tuned = lead.assign(**{c: details[c] for c in _BASE_AS})
    base = lead.assign(**{c: details[f"base_{c}"] for c in _BASE_AS})
    order = ["longname", "layer_type", "N", "M", *_BASE_AS]
    return base[order].reset_index(drop=True), tuned[order].reset_index(drop=True)


__all__ = [
    "ModelComparison",
    "base_and_tuned",
    "compare",
    "compare_models",
    "compare_summary",
    "correlation_flow",
    "flow_change",
    "layer_depth",
]
