"""Overparameterized layers (alpha > 6) in summarize, and the adapter overfitting flag."""

from __future__ import annotations

import math

import pandas as pd

from spectune.watch import summarize
from spectune.watch.rows import OVERFIT_ADAPTER, flag_overfit_adapter


def test_summarize_lists_overparameterized_layers_and_intruders():
    details = pd.DataFrame(
        {
            "longname": ["a", "b", "c", "d"],
            "alpha": [3.0, 6.5, 9.0, math.nan],
            "status": ["success", "success", "success", "failed"],
            "warning": ["", "under-trained", "under-trained", ""],
            "num_intruders": [0, 2, 1, math.nan],
        }
    )
    out = summarize(details)
    assert out["n_overparameterized"] == 2
    assert out["overparameterized_layers"] == ["b", "c"]
    assert out["num_intruders"] == 3 and out["layers_with_intruders"] == 2
    assert "overfit_adapter_layers" not in out


def test_adapter_with_low_alpha_on_an_overparameterized_base_is_flagged():
    row = {"layer_type": "lora", "alpha": 1.6, "base_alpha": 7.2, "warning": "over-trained"}
    flag_overfit_adapter(row)
    assert row["warning"] == f"over-trained; {OVERFIT_ADAPTER}"
    for alpha, base_alpha in [(1.6, 5.0), (2.5, 7.2), (math.nan, 7.2)]:
        row = {"layer_type": "lora", "alpha": alpha, "base_alpha": base_alpha, "warning": ""}
        flag_overfit_adapter(row)
        assert row["warning"] == ""
    details = pd.DataFrame({"longname": ["x"], "alpha": [1.6], "status": ["success"],
                            "warning": [OVERFIT_ADAPTER]})  # fmt: skip
    assert summarize(details)["overfit_adapter_layers"] == ["x"]


def test_summarize_lists_the_base_layers_with_alpha_above_6():
    details = pd.DataFrame(
        {
            "longname": ["q.lora_BA", "k.lora_BA", "v.lora_BA"],
            "layer_type": "lora",
            "alpha": [1.6, 1.5, 3.0],
            "base_alpha": [7.2, 4.0, 6.5],
            "status": "success",
            "base_status": ["success", "success", "failed"],
            "warning": [OVERFIT_ADAPTER, "", ""],
        }
    )
    out = summarize(details)
    assert out["n_base_overparameterized"] == 1  # v's base fit failed: not counted
    assert out["base_overparameterized_layers"] == ["q.lora_BA"]
    assert out["n_overfit_adapters"] == 1 and out["overfit_adapter_layers"] == ["q.lora_BA"]
    none = summarize(details.assign(warning=""))
    assert none["n_overfit_adapters"] == 0 and "overfit_adapter_layers" not in none
