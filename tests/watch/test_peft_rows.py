"""PEFT rows: scaling, few eigenvalues, untrained adapters, DoRA, base=, with_base, delta."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from spectune.watch import analyze, eigenvalues, fit_powerlaw, lora_eigenvalues, summarize
from spectune.watch.metrics import TOO_FEW
from tests.weights.conftest import ADAPTER_SETTINGS, live_lora_layers

from .conftest import make_peft, make_tiny_llama, matrix_with_singular_values, save_peft


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """setting name -> (live PeftModel, saved folder), for the tests/weights settings."""
    out = {}
    for name, kwargs in ADAPTER_SETTINGS.items():
        peft_model = make_peft(make_tiny_llama(seed=0), seed=7, **kwargs)
        out[name] = (peft_model, save_peft(peft_model, tmp_path_factory.mktemp(f"ad_{name}")))
    return out


def live_delta(layer) -> torch.Tensor:
    """peft's own Delta W (scaled) of a live LoRA layer, oriented like the base weight."""
    with torch.no_grad():
        return layer.get_delta_weight("default").double()


def by_module(details: pd.DataFrame) -> dict[str, pd.Series]:
    return {row["longname"].removesuffix(".lora_BA"): row for _, row in details.iterrows()}


@pytest.mark.parametrize("setting", sorted(ADAPTER_SETTINGS))
def test_rows_hold_the_spectrum_of_peft_scaled_delta(adapters, setting):
    """Every LoRA layer gives one row whose ESD is that of peft's scaled Delta W."""
    peft_model, folder = adapters[setting]
    live = live_lora_layers(peft_model)
    details = analyze(folder, progress=False)
    rows = by_module(details)
    assert set(rows) == {module for module, _ in live}
    assert details["layer_type"].eq("lora").all()
    for (module, _), layer in live.items():
        row = rows[module]
        delta = live_delta(layer)
        sv = np.linalg.svd(delta.numpy(), compute_uv=False)
        r = layer.r["default"]
        assert row["lora_rank"] == r and row["num_evals"] == r
        assert row["scaling"] == pytest.approx(layer.scaling["default"], rel=1e-12)
        assert (row["N"], row["M"]) == (max(delta.shape), min(delta.shape))
        assert row["norm"] == pytest.approx(float((delta**2).sum()), rel=1e-5)
        assert row["lambda_max"] == pytest.approx(sv[0] ** 2, rel=1e-5)
        assert row["alpha"] == pytest.approx(fit_powerlaw(sv[:r] ** 2).alpha, rel=1e-4)
        assert row["name"] == module.split(".")[-1] + ".lora_BA"
    # the live PeftModel gives the same numbers as its saved folder
    from_model = analyze(peft_model, progress=False)
    cols = ["longname", "N", "M", "num_evals", "lora_rank", "scaling"]
    pd.testing.assert_frame_equal(from_model[cols], details[cols])
    np.testing.assert_allclose(from_model["lambda_max"], details["lambda_max"], rtol=1e-12)
    np.testing.assert_allclose(from_model["alpha"], details["alpha"], rtol=1e-9, equal_nan=True)


def test_scaling_by_hand_and_eigenvalues_scale_by_s_squared(adapters):
    """alpha/r, rsLoRA alpha/sqrt(r), rank_pattern/alpha_pattern; lora_scaling=False undoes s^2."""
    cases = {
        "patterns": {
            "model.layers.0.self_attn.q_proj": (4, 8 / 4),
            "model.layers.1.self_attn.q_proj": (2, 8 / 2),  # rank_pattern
            "model.layers.0.self_attn.v_proj": (4, 3 / 4),  # alpha_pattern
            "model.layers.0.mlp.down_proj": (6, 12.5 / 6),  # both patterns
        },
        "rslora": {
            "model.layers.0.self_attn.q_proj": (8, 16 / math.sqrt(8)),
            "model.layers.1.mlp.gate_proj": (2, 16 / math.sqrt(2)),
        },
    }
    for setting, expected in cases.items():
        _, folder = adapters[setting]
        scaled = by_module(analyze(folder, progress=False))
        unscaled = by_module(analyze(folder, progress=False, lora_scaling=False))
        for module, (r, s) in expected.items():
            a, b = scaled[module], unscaled[module]
            assert a["lora_rank"] == r and a["scaling"] == pytest.approx(s, rel=1e-12)
            assert b["scaling"] == pytest.approx(s, rel=1e-12)  # the column still says s
            for col in ("lambda_max", "norm", "xmin", "xmax"):
                assert a[col] == pytest.approx(s**2 * b[col], rel=1e-10), (module, col)
            assert a["alpha"] == pytest.approx(b["alpha"], rel=1e-9)  # alpha is scale-free
            assert a["log_norm"] == pytest.approx(b["log_norm"] + 2 * math.log10(s), abs=1e-12)


def test_rank_below_min_evals_is_reported_with_a_warning(adapters):
    _, folder = adapters["patterns"]
    details = analyze(folder, progress=False)
    assert len(details) == 12  # nothing dropped
    for _, row in details.iterrows():
        few = row["lora_rank"] < 8
        assert (TOO_FEW in row["warning"]) == few, row["longname"]
        assert row["status"] == "success"
    # with min_evals=2 no rank-2..6 row warns about the count
    relaxed = analyze(folder, progress=False, min_evals=2)
    assert not relaxed["warning"].str.contains(TOO_FEW).any()


def test_untrained_adapter_all_zero_B_is_a_zero_update(tmp_path):
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            make_tiny_llama(seed=1),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        )  # default init: B = 0
        model.save_pretrained(tmp_path)
    for source in (model, tmp_path):
        details = analyze(source, progress=False)
        assert len(details) == 4
        assert details["status"].eq("zero-update").all()
        assert details["alpha"].isna().all()
        assert (details["norm"] == 0).all() and (details["lambda_max"] == 0).all()
        assert (details["rank90"] == 0).all()
        summary = summarize(details)
        assert summary["n_analyzed"] == 0 and summary["status_counts"] == {"zero-update": 4}
        assert math.isnan(summary["alpha"])


def test_dora_magnitude_columns(adapters):
    peft_model, folder = adapters["dora"]
    details = analyze(folder, progress=False)
    rows = by_module(details)
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_magnitude_vector") or "default" not in getattr(
            module, "lora_magnitude_vector", {}
        ):
            continue
        mag = module.lora_magnitude_vector["default"].weight.detach().double().reshape(-1)
        row = rows[name.removeprefix("base_model.model.")]
        assert row["dora_magnitude_mean"] == pytest.approx(float(mag.mean()), rel=1e-6)
        assert row["dora_magnitude_cv"] == pytest.approx(float(mag.std() / mag.mean()), rel=1e-5)
    assert "dora_magnitude_ratio_mean" not in details  # needs base=


def test_dora_magnitude_ratio_against_base_is_one_at_init(adapters):
    """peft initializes m = ||W + s B A|| per output (embeddings: per column), so m / ||.|| = 1."""
    _, folder = adapters["dora"]
    details = analyze(folder, base=make_tiny_llama(seed=0), progress=False)
    assert details["longname"].str.contains("embed_tokens").any()
    np.testing.assert_allclose(details["dora_magnitude_ratio_mean"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(details["dora_magnitude_ratio_std"], 0.0, atol=1e-5)
    # a different base (not the one the adapter was made on) is visibly off
    other = analyze(folder, base=make_tiny_llama(seed=5), progress=False)
    assert (np.abs(other["dora_magnitude_ratio_mean"] - 1) > 0.01).any()


def test_base_columns_equal_analyzing_the_base_directly(adapters):
    _, folder = adapters["patterns"]
    base = make_tiny_llama(seed=0)
    details = analyze(folder, base=base, progress=False)
    direct = {row["longname"]: row for _, row in analyze(base, progress=False).iterrows()}
    for _, row in details.iterrows():
        ref = direct[row["longname"].removesuffix(".lora_BA")]
        for col in ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank",
                    "entropy", "D", "num_evals", "status"):  # fmt: skip
            assert row[f"base_{col}"] == pytest.approx(ref[col], rel=1e-12) if col != "status" \
                else row[f"base_{col}"] == ref[col]  # fmt: skip
    # and the adapter's own columns are untouched by base=
    alone = analyze(folder, progress=False)
    np.testing.assert_allclose(details["alpha"], alone["alpha"], rtol=1e-12)


@pytest.mark.parametrize("setting", sorted(ADAPTER_SETTINGS))
def test_with_base_equals_analyzing_the_merged_model(adapters, setting):
    """peft='with_base' analyzes W + s B A (DoRA: m (W + s B A) / ||.||): the same rows as the
    model peft merges (merge_and_unload), matrix by matrix."""
    peft_model, folder = adapters[setting]
    base = make_tiny_llama(seed=0)
    details = analyze(folder, base=base, peft="with_base", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = copy.deepcopy(peft_model).merge_and_unload()
    direct = {row["longname"]: row for _, row in analyze(merged, progress=False).iterrows()}
    for _, row in details.iterrows():
        ref = direct[row["longname"].removesuffix(".lora_BA")]
        assert (row["N"], row["M"], row["num_evals"]) == (ref["N"], ref["M"], ref["num_evals"])
        for col in ("norm", "lambda_max", "alpha", "xmin", "D", "stable_rank", "entropy"):
            assert row[col] == pytest.approx(ref[col], rel=2e-5), (row["longname"], col)
        assert row["matrix_rank"] == ref["matrix_rank"]
    assert (details["rank90"] > 0).all()


def test_with_base_by_dense_computation(adapters):
    """The same check against a dense W + s B A built here from the factors in the file."""
    from safetensors.torch import load_file

    _, folder = adapters["rslora"]
    base = make_tiny_llama(seed=0)
    tensors = load_file(folder / "adapter_model.safetensors")
    details = by_module(analyze(folder, base=base, peft="with_base", progress=False))
    state = base.state_dict()
    module = "model.layers.1.self_attn.q_proj"
    A = tensors[f"base_model.model.{module}.lora_A.weight"].double()
    B = tensors[f"base_model.model.{module}.lora_B.weight"].double()
    W = state[f"{module}.weight"].double() + (16 / math.sqrt(8)) * B @ A
    ev = eigenvalues(W)
    row = details[module]
    assert row["norm"] == pytest.approx(ev.sum(), rel=1e-12)
    assert row["lambda_max"] == pytest.approx(ev[-1], rel=1e-12)
    assert row["alpha"] == pytest.approx(fit_powerlaw(ev).alpha, rel=1e-9)


def planted_finetune(base: torch.nn.Module, svals: dict[str, list[float]], seed: int):
    """A copy of base (float64) with U diag(s) V^T added to the named weights."""
    ft = copy.deepcopy(base)
    params = dict(ft.named_parameters())
    for i, (name, s) in enumerate(svals.items()):
        W = params[name]
        out_f, in_f = W.shape
        k = len(s)
        g = torch.Generator().manual_seed(seed + i)
        U = torch.linalg.qr(torch.randn(out_f, k, generator=g, dtype=torch.float64))[0]
        V = torch.linalg.qr(torch.randn(in_f, k, generator=g, dtype=torch.float64))[0]
        with torch.no_grad():
            W += (U * torch.tensor(s, dtype=torch.float64)) @ V.T
    return ft


def test_delta_rank90_on_a_planted_low_rank_update():
    base = make_tiny_llama(seed=2).double()
    planted = {
        "model.layers.0.self_attn.q_proj.weight": [5.0, 4.0, 3.0, 2.0, 1.0],  # 25+16+9 >= 49.5
        "model.layers.1.mlp.down_proj.weight": [10.0, 3.0, 1.0, 0.5],  # 100 >= 99.2
        "model.layers.1.mlp.up_proj.weight": [1.0] * 6,  # 6 equal: 5.4 needs 6
    }
    hand_rank90 = {
        "model.layers.0.self_attn.q_proj": 3,
        "model.layers.1.mlp.down_proj": 1,
        "model.layers.1.mlp.up_proj": 6,
    }
    ft = planted_finetune(base, planted, seed=10)
    details = analyze(ft, base=base, delta=True, progress=False)
    rows = {row["longname"]: row for _, row in details.iterrows()}
    assert "rank90" in details
    for name, s in planted.items():
        row = rows[name.removesuffix(".weight")]
        assert row["rank90"] == hand_rank90[name.removesuffix(".weight")]
        assert row["norm"] == pytest.approx(sum(x * x for x in s), rel=1e-9)
        assert row["lambda_max"] == pytest.approx(max(s) ** 2, rel=1e-9)
        assert row["matrix_rank"] == len(s)  # exact rank of the delta
        assert row["rank_loss"] == row["M"] - len(s)
        if len(set(s)) > 1:
            assert row["status"] == "success"
        else:  # six equal eigenvalues (the rest ~0, below the fit threshold): no power law
            assert row["status"] == "failed" and math.isnan(row["alpha"])
    untouched = details[~details["longname"].isin([n.removesuffix(".weight") for n in planted])]
    assert len(untouched) > 0
    assert untouched["status"].eq("zero-update").all()
    assert untouched["rank90"].eq(0).all()
    # matched matrices only: every weight of the model has a row
    assert len(details) == len(analyze(base, progress=False))


def test_lora_rows_with_a_planted_spectrum(tmp_path):
    """Hand-made adapter file: B A with known singular values gives them back (scaled)."""
    import json

    from safetensors.torch import save_file

    N, M, r = 48, 40, 6
    s = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    U = matrix_with_singular_values(np.ones(r), N, seed=1)  # N x r, orthonormal columns
    V = matrix_with_singular_values(np.ones(r), M, seed=2)
    B = (U * torch.tensor(s)).float().contiguous()
    A = V.T.float().contiguous()
    save_file({"base_model.model.blk.proj.lora_A.weight": A,
               "base_model.model.blk.proj.lora_B.weight": B},
              str(tmp_path / "adapter_model.safetensors"))  # fmt: skip
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 3, "target_modules": ["proj"]})
    )
    row = analyze(tmp_path, progress=False).iloc[0]
    scaling = 3 / r
    assert row["longname"] == "blk.proj.lora_BA" and row["scaling"] == scaling
    ev = np.sort((scaling * s) ** 2)
    np.testing.assert_allclose(lora_eigenvalues(A, B, scaling), ev, rtol=1e-6)
    assert row["norm"] == pytest.approx(ev.sum(), rel=1e-6)
    assert row["lambda_max"] == pytest.approx(ev[-1], rel=1e-6)
    assert row["rank90"] == 4  # 36+25+16+9 = 86 >= 0.9 * 91 = 81.9 > 77
    assert TOO_FEW in row["warning"]


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(12, 20, kernel_size=3)
        self.head = torch.nn.Linear(30, 16)


def test_conv2d_lora_with_base_equals_the_merged_conv():
    """A Conv2d LoRA: with_base analyzes the merged kernel as a Conv2D (pooled positions)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = ConvNet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(
            copy.deepcopy(base),
            LoraConfig(r=4, lora_alpha=8, target_modules=["conv", "head"], init_lora_weights=False),
        )
        merged = copy.deepcopy(peft_model).merge_and_unload()
    details = by_module(analyze(peft_model, base=base, peft="with_base", progress=False))
    direct = {row["longname"]: row for _, row in analyze(merged, progress=False).iterrows()}
    for module in ("conv", "head"):
        row, ref = details[module], direct[module]
        assert (row["N"], row["M"], row["rf"], row["num_evals"]) == (
            ref["N"], ref["M"], ref["rf"], ref["num_evals"]
        )  # fmt: skip
        for col in ("norm", "lambda_max", "alpha", "D", "rank_loss"):
            assert row[col] == pytest.approx(ref[col], rel=1e-5), (module, col)
    assert direct["conv"]["rf"] == 9 and direct["conv"]["layer_type"] == "conv2d"
    # the adapter-only row of the conv: rank-4 update flattened to (20, 12 * 9)
    alone = by_module(analyze(peft_model, progress=False))["conv"]
    assert (alone["N"], alone["M"], alone["num_evals"]) == (108, 20, 4)
