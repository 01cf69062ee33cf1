"""compare(): scale collapse with planted collapses and mismatches; correlation_flow()."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from spectune.errors import SpectuneError
from spectune.watch import analyze
from spectune.watch.compare import (
    base_and_tuned,
    compare,
    compare_models,
    compare_summary,
    correlation_flow,
    flow_change,
    layer_depth,
)


def stack(n: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(48, 24, generator=g,
                                                                dtype=torch.float64)
            for i in range(n)}  # fmt: skip


def test_a_planted_norm_collapse_is_flagged_and_nothing_else():
    a = stack()
    b = {k: v * 1.1 for k, v in a.items()}  # everything grows a little: no collapse
    b["model.layers.5.mlp.up_proj.weight"] = a["model.layers.5.mlp.up_proj.weight"] * 0.3
    t = compare(a, b, progress=False)
    assert (t["match"] == "matched").all() and len(t) == 10
    assert t.loc[t["collapsed"], "longname"].tolist() == ["model.layers.5.mlp.up_proj"]
    row = t.set_index("longname").loc["model.layers.5.mlp.up_proj"]
    assert row["collapse"] == "spectral, frobenius"
    np.testing.assert_allclose(row["d_log_norm"], 2 * np.log10(0.3), atol=1e-9)
    uniform = compare(a, {k: v * 0.5 for k, v in a.items()}, progress=False)
    assert not uniform["collapsed"].any()
    np.testing.assert_allclose(uniform["d_log_spectral_norm"], 2 * np.log10(0.5), atol=1e-9)
    s = compare_summary(t)
    assert s["n_collapsed"] == 1 and s["collapsed_layers"] == ["model.layers.5.mlp.up_proj"]


def test_mismatched_names_and_shapes_are_named_and_the_rest_compared():
    a = stack(6)
    b = dict(stack(6))
    b.pop("model.layers.0.mlp.up_proj.weight")
    b["model.layers.9.mlp.up_proj.weight"] = torch.randn(48, 24, dtype=torch.float64)
    b["model.layers.1.mlp.up_proj.weight"] = torch.randn(40, 24, dtype=torch.float64)
    t = compare(a, b, progress=False).set_index("longname")
    assert t.loc["model.layers.0.mlp.up_proj", "match"] == "only in a"
    assert t.loc["model.layers.9.mlp.up_proj", "match"] == "only in b"
    assert t.loc["model.layers.1.mlp.up_proj", "match"] == "shape mismatch"
    assert (t["match"] == "matched").sum() == 4
    assert np.isnan(t.loc["model.layers.1.mlp.up_proj", "d_log_norm"])
    s = compare_summary(t.reset_index())
    assert s["n_only_in_a"] == s["n_only_in_b"] == s["n_shape_mismatch"] == 1
    with pytest.raises(SpectuneError, match="no layer of the two models matches"):
        compare({"x.weight": torch.randn(8, 4)}, {"y.weight": torch.randn(8, 4)}, progress=False)


def test_compare_takes_analyze_tables():
    a = stack(4)
    ta = analyze(a, progress=False)
    t = compare(ta, a, progress=False)
    np.testing.assert_allclose(t["d_alpha"], 0.0, atol=1e-12)


def test_layer_depth():
    assert layer_depth("model.layers.12.mlp.up_proj") == 12
    assert layer_depth("transformer.h.3.attn.c_attn") == 3
    assert layer_depth("model.embed_tokens") is None


def test_correlation_flow_fits_a_trend_and_flags_the_outlier():
    names = [f"model.layers.{i}.self_attn.q_proj" for i in range(12)]
    names += [f"model.layers.{i}.mlp.down_proj" for i in range(12)]
    alpha = [2.0 + 0.1 * i for i in range(12)] + [4.0 - 0.05 * i for i in range(12)]
    alpha[7] = 6.5  # q_proj at depth 7 breaks its flow
    noise = np.random.default_rng(0).normal(0, 0.01, len(alpha))
    details = pd.DataFrame({"longname": names, "alpha": np.array(alpha) + noise,
                            "status": "success"})  # fmt: skip
    flow = correlation_flow(details)
    assert set(flow["kind"]) == {"q_proj", "down_proj"}
    assert flow.loc[flow["breaks_flow"], "longname"].tolist() == ["model.layers.7.self_attn.q_proj"]
    down = flow[flow["kind"] == "down_proj"]
    np.testing.assert_allclose(down["slope"].iloc[0], -0.05, atol=0.01)
    # a "tuned" model whose down_proj at depth 3 moved: the flow is bent there only
    tuned = details.copy()
    tuned.loc[12 + 3, "alpha"] += 2.0
    change = flow_change(flow, correlation_flow(tuned))
    assert change.loc[change["bent"], "longname"].tolist() == ["model.layers.3.mlp.down_proj"]
    assert change.loc[change["longname"] == "model.layers.7.self_attn.q_proj", "breaks_a"].all()


def test_plots_of_compare_flow_intruders_and_tpl():
    from matplotlib.figure import Figure

    from spectune.report.plots.spectra import (
        correlation_flow_plot,
        esd_tpl,
        intruders_by_layer,
        scale_collapse,
    )
    from spectune.watch.tpl import fit_truncated_powerlaw

    a = stack(6)
    b = {k: v * (0.2 if "layers.2." in k else 1.0) for k, v in a.items()}
    t = compare(a, b, progress=False)
    fig = scale_collapse(t)
    assert isinstance(fig, Figure) and "1 collapsed of 6" in fig.axes[0].get_title()
    flow = correlation_flow(analyze(a, progress=False))
    assert isinstance(correlation_flow_plot(flow, correlation_flow(analyze(b, progress=False))),
                      Figure)  # fmt: skip
    details = pd.DataFrame({"longname": ["x", "y"], "num_intruders": [2, 0]})
    assert "2 in 1 of 2" in intruders_by_layer(details).axes[0].get_title()
    ev = np.sort(np.random.default_rng(0).pareto(1.5, 120) + 1.0)
    fig = esd_tpl(ev, fit_truncated_powerlaw(ev[::2]))
    assert any("TPL" in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_compare_models_collects_collapse_and_flow():
    a = stack()
    b = {k: v * (0.3 if "layers.5." in k else 1.0) for k, v in a.items()}
    ta, tb = analyze(a, progress=False), analyze(b, progress=False)
    c = compare_models(ta, tb, labels=("base", "tuned"))
    assert c.summary["collapsed_layers"] == ["model.layers.5.mlp.up_proj"]
    assert c.summary["labels"] == ["base", "tuned"] and c.summary["z"] == 3.5
    # scaling a matrix leaves its alpha alone: the flows are the same, nothing bent
    np.testing.assert_allclose(c.flow["d_alpha"], 0.0, atol=1e-9)
    assert c.summary["n_flow_bent"] == 0 and c.summary["flow_bent"] == []
    np.testing.assert_allclose(c.flow["slope_a"], c.flow["slope_b"], atol=1e-9)
    assert list(c.flow.columns) == ["longname", "kind", "depth", "alpha_a", "alpha_b", "d_alpha",
                                    "trend_a", "trend_b", "slope_a", "slope_b", "breaks_a",
                                    "breaks_b", "bent"]  # fmt: skip


def test_equal_alphas_break_no_flow():
    """Alphas equal up to rounding (fits pinned at a bound) have no outliers."""
    names = [f"model.layers.{i}.mlp.up_proj" for i in range(8)]
    alpha = 1.0 + np.array([0, 1e-15, -1e-15, 0, 2e-15, 0, 0, -1e-15])
    flow = correlation_flow(pd.DataFrame({"longname": names, "alpha": alpha, "status": "success"}))
    assert not flow["breaks_flow"].any()


def test_base_and_tuned_split_a_with_base_table():
    base = stack(4)
    tuned = {k: v * (2.0 if "layers.1." in k else 1.0) for k, v in base.items()}
    d = analyze(tuned, base=base, progress=False)
    # rows are the tuned matrices themselves (base not subtracted), with the base alongside
    assert (d["status"] == "success").all()
    b, t = base_and_tuned(d)
    direct_b, direct_t = analyze(base, progress=False), analyze(tuned, progress=False)
    for col in ("alpha", "log_norm", "log_spectral_norm"):
        np.testing.assert_allclose(b[col], direct_b[col], rtol=1e-12)
        np.testing.assert_allclose(t[col], direct_t[col], rtol=1e-12)
    lora = d.assign(longname=d["longname"] + ".lora_BA")
    assert base_and_tuned(lora)[0]["longname"].tolist() == d["longname"].tolist()
    with pytest.raises(SpectuneError, match="base="):
        base_and_tuned(direct_t)


def test_plus_base_analyzes_the_base_plus_the_update():
    base = stack(3)
    g = torch.Generator().manual_seed(5)
    update = {
        k: 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in base.items()
    }
    got = analyze(update, base=base, plus_base=True, progress=False)
    want = analyze({k: base[k] + update[k] for k in base}, progress=False)
    for col in ("alpha", "log_norm", "log_spectral_norm", "stable_rank"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-12)
    np.testing.assert_allclose(got["base_log_norm"], analyze(base, progress=False)["log_norm"])
    # without plus_base the update itself is analyzed (the base only gives base_* columns)
    plain = analyze(update, base=base, progress=False)
    np.testing.assert_allclose(plain["log_norm"], analyze(update, progress=False)["log_norm"])
    with pytest.raises(SpectuneError, match="plus_base=True needs base="):
        analyze(update, plus_base=True, progress=False)
