"""Parity with WeightWatcher 0.7.7's analyze() on real weights.

Rows are matched by longname. WW analyzes a tied lm_head a second time (it is the embedding);
spectune lists tied weights once, so that row has no partner. WW's PEFT path analyzes the
unscaled B A, so it is compared with ``lora_scaling=False``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from spectune.watch import analyze, fit_powerlaw

from .conftest import make_peft, make_tiny_llama, quiet, save_peft

#: columns compared to a relative tolerance (float columns)
FLOAT_COLUMNS = [
    "alpha", "alpha_weighted", "log_alpha_norm", "D", "xmin", "xmax", "sigma", "norm",
    "log_norm", "spectral_norm", "log_spectral_norm", "stable_rank", "lambda_max", "sv_max",
    "entropy",
]  # fmt: skip
#: columns that must be equal
INT_COLUMNS = ["N", "M", "rf", "num_evals", "num_pl_spikes", "matrix_rank", "rank_loss",
               "weak_rank_loss"]  # fmt: skip
MP_COLUMNS = ["sigma_mp", "bulk_max", "bulk_min", "mp_softrank", "W_scale"]


def ww_analyze(ww, model, **kwargs) -> pd.DataFrame:
    with quiet():
        return ww.WeightWatcher(model=model).analyze(**kwargs)


def merged(ours: pd.DataFrame, theirs: pd.DataFrame, key=lambda name: name) -> pd.DataFrame:
    theirs = theirs.assign(longname=[key(n) for n in theirs["longname"]])
    m = ours.merge(theirs, on="longname", suffixes=("", "_ww"))
    assert len(m) == len(ours), (sorted(ours["longname"]), sorted(theirs["longname"]))
    return m


def max_rel_diff(m: pd.DataFrame, col: str) -> float:
    """Largest |ours - WW| / |WW|; for log10 columns the denominator is at least 1: a log
    near 0 (a norm near 1) has no meaningful relative error, its absolute error is the check."""
    a = m[col].astype(float).to_numpy()
    b = m[f"{col}_ww"].astype(float).to_numpy()
    floor = 1.0 if col.startswith("log_") else 1e-300
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor)))


def assert_parity(
    m: pd.DataFrame, rtol: float, columns=FLOAT_COLUMNS, ints=INT_COLUMNS, check_warnings=True
) -> dict:
    diffs = {}
    for col in columns:
        diffs[col] = max_rel_diff(m, col)
        assert diffs[col] < rtol, (col, diffs[col])
    for col in ints:
        assert (m[col].astype(int) == m[f"{col}_ww"].astype(int)).all(), col
    if check_warnings:  # "over-trained" / "under-trained" / ""
        assert (m["warning"] == m["warning_ww"]).all()
    assert m["status"].eq("success").all()
    return diffs


def test_tiny_model_parity_with_clip_xmax_and_mp_fit(ww, tiny):
    """Every column WW reports, on a tiny Llama (16 matrices), with clip_xmax; the MP-fit
    columns on three matrices (Q = 4, 1, 2; WW's MP fit takes ~0.5 s per matrix)."""
    theirs = ww_analyze(ww, tiny, fix_fingers="clip_xmax")
    ours = analyze(tiny, mp_fit=True, fix_fingers="clip_xmax", progress=False)
    assert len(theirs) == len(ours) == 16  # untied embeddings: lm_head is its own matrix
    m = merged(ours, theirs)
    assert_parity(m, 1e-9, FLOAT_COLUMNS + ["raw_alpha"], INT_COLUMNS + ["num_fingers"])
    assert (m["layer_id"] == m["layer_id_ww"]).all()  # named_modules() index, as WW
    assert (m["name"] == m["name_ww"]).all()
    assert max_rel_diff(m, "sv_min") < 1e-6  # the smallest eigenvalues: Gram vs SVD route
    picked = ours[ours["longname"].isin(["model.embed_tokens", "model.layers.0.self_attn.q_proj",
                                         "model.layers.1.self_attn.k_proj"])]  # fmt: skip
    assert sorted(picked["Q"]) == [1.0, 2.0, 4.0]
    theirs_mp = ww_analyze(ww, tiny, mp_fit=True, layers=picked["layer_id"].tolist())
    m_mp = merged(picked, theirs_mp)
    assert_parity(m_mp, 1e-9, MP_COLUMNS, ["num_spikes"], check_warnings=False)  # alphas: no clip


def test_tiny_model_parity_default_options(ww):
    model = make_tiny_llama(seed=4, hidden_size=48, intermediate_size=96)
    ours = analyze(model, progress=False)
    m = merged(ours, ww_analyze(ww, model))
    assert_parity(m, 1e-9)


def ww_peft_key(longname: str) -> str:
    """WW's longname of a PEFT row -> spectune's (prefix and adapter suffix stripped)."""
    name = longname.removeprefix("base_model.model.")
    name = name.replace(".lora_BA.default", ".lora_BA")
    return name.removesuffix(".weight")


def ww_style_alphas(folder) -> dict[str, float]:
    """alpha of each pair as WW computes it: ``np.dot(B, A)`` on the stored float32 arrays (the
    call WW makes, so the same BLAS rounds the same way), then SVD."""
    from spectune.weights import open_source

    out = {}
    with open_source(folder) as src:
        for pair in src.lora_pairs():
            B, A = src.load_pair(pair)
            BA = np.dot(B.float().numpy(), A.float().numpy())
            sv = np.linalg.svd(BA.astype(np.float64), compute_uv=False)
            out[pair.name] = fit_powerlaw(sv[: pair.r] ** 2).alpha
    return out


def test_peft_parity_on_a_live_model_and_its_folder(ww, lora16):
    """ww.analyze(peft=True): WW's rows of the unscaled B A equal ours with lora_scaling=False.

    WW multiplies B A in the factors' float32, spectune works in float64 (QR route), so the
    eigenvalues differ at float32 rounding (~1e-7 relative) and alphas at ~3e-8; with WW's
    float32 product the fit agrees with WW to 1e-12 (checked below), which pins the cause.
    """
    peft_model, folder = lora16
    ours = analyze(folder, lora_scaling=False, progress=False)
    assert len(ours) == 10 and (ours["lora_rank"] == 16).all()
    ww_style = ww_style_alphas(folder)
    for source in (peft_model, str(folder)):
        theirs = ww_analyze(ww, source, peft=True)
        theirs = theirs[theirs["longname"].str.contains("lora_BA")]
        m = merged(ours, theirs, ww_peft_key)
        assert_parity(m, 1e-6)
        assert float(np.max(np.abs(m["alpha"] - m["alpha_ww"]))) < 1e-6
        for _, row in m.iterrows():
            assert row["alpha_ww"] == pytest.approx(ww_style[row["longname"]], abs=1e-12)
    # the scaled rows differ from WW's by s^2 = (24/16)^2 in every eigenvalue
    scaled = merged(analyze(folder, progress=False), theirs, ww_peft_key)
    np.testing.assert_allclose(scaled["lambda_max"], 1.5**2 * scaled["lambda_max_ww"], rtol=1e-6)
    np.testing.assert_allclose(scaled["alpha"], scaled["alpha_ww"], rtol=1e-6)
    np.testing.assert_allclose(scaled["alpha"], ours["alpha"], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# The embedded model (slow)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm():
    from spectune.models.loading import load_default_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_default_model()
    return model


@pytest.mark.slow
@pytest.mark.real_weights
def test_embedded_model_parity(ww, smollm, capsys):
    theirs = ww_analyze(ww, smollm)
    ours = analyze(smollm, progress=False)
    assert len(ours) == 211  # 30 x 7 linear layers + the (tied) embedding
    assert set(theirs["longname"]) - set(ours["longname"]) == {"lm_head"}  # tied: listed once
    m = merged(ours, theirs)
    diffs = assert_parity(m, 1e-9)
    ours32 = analyze(smollm, precision="float32", progress=False)
    m32 = merged(ours32, theirs)
    alpha32 = float(np.max(np.abs(m32["alpha"] - m32["alpha_ww"])))
    assert alpha32 <= 0.01
    with capsys.disabled():
        print(f"\n[parity] SmolLM2-135M, {len(m)} rows: max relative difference "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
              + f"; float32 max |alpha diff| {alpha32:.1e}")  # fmt: skip


@pytest.mark.slow
@pytest.mark.real_weights
def test_embedded_model_lora_parity(ww, smollm, tmp_path, capsys):
    """A real PEFT LoRA (r=16) on SmolLM2's attention and MLP, saved and read back."""
    import copy

    peft_model = make_peft(
        copy.deepcopy(smollm), seed=11, r=16, lora_alpha=32,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        layers_to_transform=list(range(0, 30, 3)),
    )  # fmt: skip
    folder = save_peft(peft_model, tmp_path / "adapter")
    ours = analyze(folder, lora_scaling=False, progress=False)
    assert len(ours) == 40
    theirs = ww_analyze(ww, str(folder), peft=True)
    theirs = theirs[theirs["longname"].str.contains("lora_BA")]
    m = merged(ours, theirs, ww_peft_key)
    diffs = assert_parity(m, 1e-6)  # WW's float32 B @ A, see the test above
    scaled = analyze(peft_model, progress=False)
    np.testing.assert_allclose(scaled["lambda_max"], 4.0 * ours["lambda_max"], rtol=1e-10)
    assert math.isclose(float(scaled["scaling"].iloc[0]), 2.0)
    with capsys.disabled():
        print(f"\n[parity] LoRA r=16 on SmolLM2, {len(m)} rows: max relative difference "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))  # fmt: skip
