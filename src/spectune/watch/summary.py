"""The tables around :func:`~spectune.watch.analyze.analyze`: :func:`describe` lists the rows
it would compute before any tensor is read, :func:`summarize` reduces its rows to one
model-level record (means over the layers whose fit succeeded, counts of the others, and the
layers flagged overparameterized, with intruders or as overfitting adapters).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from spectune.errors import SpectuneError
from spectune.watch.rows import (
    OVERFIT_ADAPTER,
    OVERPARAMETERIZED_ALPHA,
    filter_rows,
    lead_columns,
    open_weights,
    select_rows,
)

#: columns averaged by :func:`summarize`
SUMMARY_COLUMNS = [
    "alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm",
    "stable_rank", "entropy", "D", "sigma", "mp_softrank", "rank90",
]  # fmt: skip


def describe(source: Any, peft: bool | str = False, layers: Any = None) -> pd.DataFrame:
    """The rows :func:`~spectune.watch.analyze.analyze` would compute, with shapes only (no
    tensor data is read).

    Returns:
        DataFrame with layer_id, name, longname, layer_type, N, M, Q, rf, num_evals and, for
        LoRA pairs, lora_rank and scaling.
    """
    with open_weights(source, peft) as src:
        specs = filter_rows(select_rows(src, source, peft, False, None), layers)
    rows = []
    for spec in specs:
        row = lead_columns(spec)
        row["num_evals"] = spec.num_evals
        if spec.pair is not None:
            row.update(lora_rank=spec.pair.r, scaling=spec.pair.scaling)
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def _warning_counts(warnings: pd.Series) -> dict[str, int]:
    """How often each warning occurs: "tensor: reason" counts by reason, "N=... > max_N=..."
    by the limit."""
    counts: dict[str, int] = {}
    for w in warnings.fillna(""):
        for part in filter(None, (p.strip() for p in str(w).split(";"))):
            key = part.rsplit(": ", 1)[-1] if ": " in part else part
            key = key.split(">")[-1].strip() if ">" in key else key
            counts[key] = counts.get(key, 0) + 1
    return counts


def _flagged_layers(details: pd.DataFrame, ok: pd.DataFrame) -> dict[str, Any]:
    """The overparameterized layers (of the model and of the base), intruder totals and the
    adapters flagged as overfitting (see :func:`summarize`)."""
    out: dict[str, Any] = {}
    if "alpha" in ok.columns and "longname" in ok.columns:
        over = ok[pd.to_numeric(ok["alpha"], errors="coerce") > OVERPARAMETERIZED_ALPHA]
        out["n_overparameterized"] = int(len(over))
        out["overparameterized_layers"] = [str(x) for x in over["longname"]]
    if {"base_alpha", "base_status", "longname"} <= set(details.columns):
        base_ok = details[details["base_status"] == "success"]
        over = base_ok[
            pd.to_numeric(base_ok["base_alpha"], errors="coerce") > OVERPARAMETERIZED_ALPHA
        ]
        out["n_base_overparameterized"] = int(len(over))
        out["base_overparameterized_layers"] = [str(x) for x in over["longname"]]
    if "num_intruders" in details.columns:
        n = pd.to_numeric(details["num_intruders"], errors="coerce")
        out["num_intruders"] = int(n.fillna(0).sum())
        out["layers_with_intruders"] = int((n > 0).sum())
    if "warning" in details.columns and "longname" in details.columns:
        flagged = details[details["warning"].fillna("").str.contains(OVERFIT_ADAPTER, regex=False)]
        if len(flagged):
            out["overfit_adapter_layers"] = [str(x) for x in flagged["longname"]]
        lora = "layer_type" in details.columns and (details["layer_type"] == "lora").any()
        if len(flagged) or (lora and "base_alpha" in details.columns):
            out["n_overfit_adapters"] = int(len(flagged))
    return out


def summarize(details: pd.DataFrame) -> dict[str, Any]:
    """Model-level summary: means of the metrics over layers whose fit succeeded.

    Rows with status "failed", "zero-update", "non-finite" or "skipped" are left out of the
    means (WW averages its -1 placeholders in) and counted instead.

    Returns:
        dict with n_layers, n_analyzed, counts per status and per warning, the mean of each
        column of :data:`SUMMARY_COLUMNS` present in ``details``, the overparameterized layers
        (alpha > 6: ``n_overparameterized``, ``overparameterized_layers``; with base columns
        also the base's: ``n_base_overparameterized``, ``base_overparameterized_layers``),
        with intruder columns their total (``num_intruders``) and ``layers_with_intruders``,
        and LoRA rows flagged as overfitting (``n_overfit_adapters``,
        ``overfit_adapter_layers``: alpha < 2 on a base alpha > 6).
    """
    if not isinstance(details, pd.DataFrame):
        raise SpectuneError("summarize() takes the DataFrame returned by analyze()")
    out: dict[str, Any] = {"n_layers": int(len(details))}
    status = details.get("status", pd.Series(dtype=str))
    ok = details[status == "success"]
    out["n_analyzed"] = int(len(ok))
    out["status_counts"] = {str(k): int(v) for k, v in status.value_counts().items()}
    out["warning_counts"] = _warning_counts(details.get("warning", pd.Series(dtype=str)))
    for col in SUMMARY_COLUMNS:
        if col in ok.columns:
            values = pd.to_numeric(ok[col], errors="coerce").dropna()
            out[col] = float(values.mean()) if len(values) else math.nan
    out.update(_flagged_layers(details, ok))
    return out


__all__ = ["SUMMARY_COLUMNS", "describe", "summarize"]
