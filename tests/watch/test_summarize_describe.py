"""summarize() over hand-made details; describe() lists analyze()'s rows without reading data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from spectune.watch import analyze, describe, summarize
from spectune.watch.metrics import TOO_FEW
from spectune.weights import WeightSource

NAN = float("nan")


def hand_details() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "longname": [f"layer{i}" for i in range(8)],
            "status": ["success", "success", "success", "failed", "zero-update", "non-finite",
                       "skipped", "failed"],
            "alpha": [2.0, 3.0, 7.0, NAN, NAN, NAN, NAN, -1.0],  # -1: a WW-style placeholder
            "log_norm": [1.0, 2.0, 6.0, 0.5, NAN, NAN, NAN, 100.0],
            "stable_rank": [10.0, 20.0, 30.0, 1.0, NAN, NAN, NAN, 1.0],
            "D": [0.1, 0.2, 0.3, NAN, NAN, NAN, NAN, 5.0],
            "warning": ["", "", "under-trained", TOO_FEW, "all eigenvalues are zero",
                        "model.x.weight: matrix holds NaN or Inf values",
                        "20000 eigenvalues > max_evals=15000", f"over-trained; {TOO_FEW}"],
        }
    )  # fmt: skip


def test_summarize_leaves_failed_rows_out_of_the_means():
    s = summarize(hand_details())
    assert s["n_layers"] == 8 and s["n_analyzed"] == 3
    assert s["alpha"] == pytest.approx(4.0)  # (2 + 3 + 7) / 3; not the -1 or NaNs
    assert s["log_norm"] == pytest.approx(3.0)
    assert s["stable_rank"] == pytest.approx(20.0)
    assert s["D"] == pytest.approx(0.2)
    assert "entropy" not in s  # absent columns are not invented
    assert s["status_counts"] == {"success": 3, "failed": 2, "zero-update": 1, "non-finite": 1,
                                  "skipped": 1}  # fmt: skip
    assert s["warning_counts"] == {
        "under-trained": 1,
        TOO_FEW: 2,
        "over-trained": 1,
        "all eigenvalues are zero": 1,
        "matrix holds NaN or Inf values": 1,
        "max_evals=15000": 1,
    }


def test_summarize_with_nothing_analyzed_gives_nan_means():
    d = hand_details()
    d["status"] = "failed"
    s = summarize(d)
    assert s["n_analyzed"] == 0 and math.isnan(s["alpha"]) and math.isnan(s["log_norm"])


def test_summarize_of_a_real_analysis(tiny):
    details = analyze(tiny, progress=False)
    s = summarize(details)
    assert s["n_layers"] == len(details) == 16
    assert s["alpha"] == pytest.approx(details["alpha"].mean(), rel=1e-12)
    assert s["alpha_weighted"] == pytest.approx(details["alpha_weighted"].mean(), rel=1e-12)
    assert sum(s["status_counts"].values()) == 16


DESCRIBE_COLUMNS = ["layer_id", "name", "longname", "layer_type", "N", "M", "Q", "rf", "num_evals"]


def compare_describe(source, analyzed: pd.DataFrame, monkeypatch, **kwargs) -> pd.DataFrame:
    def refuse(self, name):
        raise AssertionError(f"describe() read tensor data: {name}")

    with monkeypatch.context() as m:
        m.setattr(WeightSource, "load", refuse)
        desc = describe(source, **kwargs)
        with pytest.raises(AssertionError, match="read tensor data"):  # the patch is effective
            analyze(source, progress=False, **kwargs)
    cols = DESCRIBE_COLUMNS + [c for c in ("lora_rank", "scaling") if c in desc]
    pd.testing.assert_frame_equal(
        desc[cols].reset_index(drop=True), analyzed[cols].reset_index(drop=True), check_dtype=False
    )
    return desc


def test_describe_lists_the_rows_analyze_computes(tiny, tmp_path, monkeypatch):
    tiny.save_pretrained(tmp_path / "hf")
    for source in (tiny, tmp_path / "hf", {k: v for k, v in tiny.state_dict().items()}):
        analyzed = analyze(source, progress=False)
        desc = compare_describe(source, analyzed, monkeypatch)
        assert len(desc) == 16
    analyzed = analyze(tmp_path / "hf", layers=r"layers\.1\..*proj", progress=False)
    desc = compare_describe(tmp_path / "hf", analyzed, monkeypatch, layers=r"layers\.1\..*proj")
    assert len(desc) == 7


def test_describe_lists_adapter_pairs(lora16, monkeypatch):
    peft_model, folder = lora16
    for source in (folder, peft_model):
        analyzed = analyze(source, progress=False)
        desc = compare_describe(source, analyzed, monkeypatch)
        assert len(desc) == 10
        assert (desc["lora_rank"] == 16).all()
        assert np.allclose(desc["scaling"], 24 / 16)
        assert desc["name"].str.endswith(".lora_BA").all()


def test_describe_of_a_conv_kernel(monkeypatch):
    conv = torch.nn.Conv2d(5, 7, kernel_size=(3, 3))
    desc = compare_describe(conv, analyze(conv, progress=False), monkeypatch)
    assert desc.iloc[0][["N", "M", "rf", "num_evals"]].tolist() == [7, 5, 9, 45]
