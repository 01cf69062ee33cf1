"""spectrum() gives each row's own ESD (what the CLI plots); plot functions return Figures;
randomize is seeded and behaves as random-matrix theory says."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from spectune.errors import SpectuneError
from spectune.report.plots import spectra as P
from spectune.watch import analyze, spectrum

from .conftest import make_tiny_llama, matrix_with_singular_values, mp_matrix, pareto_sample


def assert_row_matches(details: pd.DataFrame, source, **kwargs) -> None:
    fix_fingers = kwargs.get("fix_fingers")
    for _, row in details.iterrows():
        if row["status"] != "success":
            continue
        evals, fit = spectrum(source, row["longname"], **kwargs)
        assert len(evals) == row["num_evals"]
        assert np.all(np.diff(evals) >= 0)
        assert evals.sum() == pytest.approx(row["norm"], rel=1e-12)
        assert fit.alpha == pytest.approx(row["alpha"], rel=1e-12)
        if fix_fingers:
            assert fit.num_fingers == row["num_fingers"]


def test_spectrum_matches_rows_of_every_mode(lora16):
    peft_model, folder = lora16
    base = make_tiny_llama(seed=0)
    assert_row_matches(analyze(base, progress=False), base)
    assert_row_matches(analyze(base, precision="float32", progress=False), base,
                       precision="float32")  # fmt: skip
    assert_row_matches(analyze(base, fix_fingers="clip_xmax", progress=False), base,
                       fix_fingers="clip_xmax")  # fmt: skip
    assert_row_matches(analyze(folder, progress=False), folder)
    assert_row_matches(analyze(folder, lora_scaling=False, progress=False), folder,
                       lora_scaling=False)  # fmt: skip
    assert_row_matches(analyze(folder, base=base, peft="with_base", progress=False), folder,
                       base=base, peft="with_base")  # fmt: skip
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for p in ft.parameters():
            if p.ndim == 2:
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    assert_row_matches(analyze(ft, base=base, delta=True, progress=False), ft, base=base,
                       delta=True)  # fmt: skip


def test_spectrum_errors():
    state = {"a.weight": torch.randn(8, 8), "b.weight": torch.full((8, 8), float("nan"))}
    with pytest.raises(SpectuneError, match="no matrix named 'c'"):
        spectrum(state, "c")
    with pytest.raises(SpectuneError, match="NaN or Inf"):
        spectrum(state, "b")
    with pytest.raises(SpectuneError, match="need base="):
        spectrum(state, "a", delta=True)


def test_plot_functions_return_figures_with_the_numbers():
    details = pd.DataFrame({
        "longname": [f"model.layers.{i}.mlp.up_proj" for i in range(4)]
        + ["model.layers.0.self_attn.q_proj", "model.embed_tokens"],
        "status": ["success"] * 5 + ["failed"],
        "alpha": [2.0, 3.0, 4.0, 5.0, 6.0, np.nan],
        "base_alpha": [3.0, 3.5, np.nan, 4.0, 5.0, 2.0],
        "lambda_max": [1.0, 50.0, 2.0, 3.0, 4.0, 99.0],
    })  # fmt: skip
    fig = P.alpha_histogram(details)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert "(5 layers)" in ax.get_title()
    assert any("mean alpha = 4.00" in t.get_text() for t in ax.get_legend().get_texts())
    fig = P.alpha_by_depth(details)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["up_proj"].get_xdata()) == [0, 1, 2, 3]
    assert list(lines["up_proj"].get_ydata()) == [2.0, 3.0, 4.0, 5.0]
    fig = P.base_vs_adapter_alpha(details)
    assert "(4 matrices)" in fig.axes[0].get_title()  # rows with both alphas, fit succeeded
    offsets = fig.axes[0].collections[0].get_offsets()
    assert sorted(map(tuple, np.asarray(offsets))) == [(3.0, 2.0), (3.5, 3.0), (4.0, 5.0),
                                                       (5.0, 6.0)]  # fmt: skip
    # lowest, median, highest alpha, then the largest lambda_max (failed rows never picked)
    assert P.pick_layers(details) == [
        "model.layers.0.mlp.up_proj", "model.layers.2.mlp.up_proj",
        "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj",
    ]  # fmt: skip
    from spectune.watch import fit_powerlaw

    x = pareto_sample(500, 2.5, 1.0, seed=0)
    fig = P.esd_loglog(x, fit_powerlaw(x), title="ESD")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(f"alpha={fit_powerlaw(x).alpha:.2f}" in t for t in labels)


def test_randomize_is_seeded_and_finds_structure():
    """An MP matrix randomized is still MP (soft rank ~ 1); a heavy-tailed matrix is not."""
    W_mp = torch.from_numpy(mp_matrix(600, 300, 0))
    x = pareto_sample(300, 2.2, 0.5, seed=3)
    W_ht = matrix_with_singular_values(np.sqrt(x), 600, seed=3)
    state = {"mp.weight": W_mp, "ht.weight": W_ht}
    a = analyze(state, randomize=True, seed=5, progress=False)
    b = analyze(state, randomize=True, seed=5, progress=False)
    c = analyze(state, randomize=True, seed=6, progress=False)
    rand_cols = ["rand_distance", "ww_softrank", "ww_maxdist", "max_rand_eval", "rand_num_spikes"]
    for col in rand_cols:
        assert col in a
    pd.testing.assert_frame_equal(a[rand_cols], b[rand_cols])  # same seed: same numbers
    assert not np.allclose(a["max_rand_eval"], c["max_rand_eval"], rtol=1e-12, atol=0)
    assert a.attrs["spectune"]["seed"] == 5
    rows = {r["longname"]: r for _, r in a.iterrows()}
    mp, ht = rows["mp"], rows["ht"]
    assert mp["ww_softrank"] == pytest.approx(1.0, abs=0.1)
    assert ht["ww_softrank"] < 0.1  # shuffling destroys the heavy tail
    assert ht["ww_maxdist"] > 0.5 * ht["lambda_max"]
    assert ht["rand_distance"] > 5 * mp["rand_distance"]
    assert mp["rand_num_spikes"] == 0 and ht["rand_num_spikes"] == 0
    assert math.isfinite(mp["rand_distance"])
