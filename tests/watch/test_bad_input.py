"""Bad input: one SpectuneError naming the file, tensor or parameter; bad numbers in one matrix
only mark that row."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from spectune.errors import SpectuneError
from spectune.watch import analyze, describe, summarize

from .conftest import make_tiny_llama


def small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.layers.0.attn.q_proj.weight": torch.randn(24, 16, generator=g),
        "model.layers.0.attn.k_proj.weight": torch.randn(24, 16, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(40, 16, generator=g),
        "model.layers.0.norm.weight": torch.ones(16),
    }


def test_missing_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(SpectuneError, match="no_such_model"):
        analyze(missing, progress=False)
    with pytest.raises(SpectuneError, match="no_such_model"):
        describe(str(missing))


def test_unknown_format(tmp_path):
    path = tmp_path / "weights.xyz"
    path.write_bytes(b"this is not a weights file at all")
    with pytest.raises(SpectuneError, match=r"unknown weights format.*weights\.xyz"):
        analyze(path, progress=False)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(small_state(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpectuneError, match="model.safetensors"):
        analyze(path, progress=False)
    # a corrupt header (not JSON) as well
    path.write_bytes(len(b"{garbage").to_bytes(8, "little") + b"{garbage" + b"\0" * 64)
    with pytest.raises(SpectuneError, match="model.safetensors"):
        analyze(path, progress=False)


def write_adapter(folder, tensors: dict[str, torch.Tensor], r: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["q_proj"]})
    )


def lora_tensors(module: str, r: int = 4, out_f: int = 24, in_f: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        f"base_model.model.{module}.lora_A.weight": torch.randn(r, in_f, generator=g),
        f"base_model.model.{module}.lora_B.weight": torch.randn(out_f, r, generator=g),
    }


def test_lora_A_without_lora_B(tmp_path):
    tensors = lora_tensors("model.layers.0.attn.q_proj")
    tensors.update(lora_tensors("model.layers.1.attn.q_proj"))
    del tensors["base_model.model.model.layers.1.attn.q_proj.lora_B.weight"]
    write_adapter(tmp_path / "ad", tensors)
    with pytest.raises(SpectuneError, match=r"model\.layers\.1\.attn\.q_proj.*no lora_B"):
        analyze(tmp_path / "ad", progress=False)


def test_mismatched_lora_ranks(tmp_path):
    tensors = lora_tensors("model.layers.0.attn.q_proj")
    tensors["base_model.model.model.layers.0.attn.q_proj.lora_B.weight"] = torch.randn(24, 3)
    write_adapter(tmp_path / "ad", tensors)
    with pytest.raises(SpectuneError, match=r"lora_A\.weight.*lora_B\.weight"):
        analyze(tmp_path / "ad", progress=False)


def test_delta_with_mismatched_shapes_names_both_tensors():
    ft = small_state(1)
    base = small_state(2)
    base["model.layers.0.mlp.up_proj.weight"] = torch.randn(32, 16)
    with pytest.raises(SpectuneError, match=r"up_proj\.weight.*\(40, 16\).*\(32, 16\)"):
        analyze(ft, base=base, delta=True, progress=False)


def test_delta_needs_base_and_matching_names():
    with pytest.raises(SpectuneError, match="delta=True needs base="):
        analyze(small_state(), delta=True, progress=False)
    other = {"something.else.weight": torch.randn(8, 8)}
    with pytest.raises(SpectuneError, match="no matrix of the model matches a base matrix"):
        analyze(small_state(), base=other, delta=True, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_matrix_marks_only_its_row(bad):
    state = small_state()
    state["model.layers.0.attn.k_proj.weight"][3, 5] = bad
    details = analyze(state, progress=False)
    assert len(details) == 3
    rows = {row["longname"]: row for _, row in details.iterrows()}
    bad_row = rows["model.layers.0.attn.k_proj"]
    assert bad_row["status"] == "non-finite"
    assert "model.layers.0.attn.k_proj.weight" in bad_row["warning"]
    assert math.isnan(bad_row["alpha"]) and not bad_row["has_esd"]
    good = details[details["status"] != "non-finite"]
    assert len(good) == 2 and good["status"].eq("success").all()
    clean = analyze({k: v for k, v in small_state().items() if "k_proj" not in k}, progress=False)
    np.testing.assert_allclose(good["alpha"].to_numpy(), clean["alpha"].to_numpy(), rtol=1e-12)
    summary = summarize(details)
    assert summary["n_analyzed"] == 2 and summary["status_counts"]["non-finite"] == 1
    assert summary["alpha"] == pytest.approx(clean["alpha"].mean(), rel=1e-12)


def test_non_finite_lora_factor_marks_only_its_row(tmp_path):
    tensors = lora_tensors("model.layers.0.attn.q_proj")
    tensors.update(lora_tensors("model.layers.1.attn.q_proj", seed=1))
    tensors["base_model.model.model.layers.1.attn.q_proj.lora_B.weight"][0, 0] = float("nan")
    write_adapter(tmp_path / "ad", tensors)
    details = analyze(tmp_path / "ad", progress=False)
    assert details["status"].tolist() == ["success", "non-finite"]
    assert "model.layers.1.attn.q_proj.lora_BA" in details["warning"].iloc[1]


def test_non_finite_base_matrix_marks_only_the_base_columns(tmp_path):
    tensors = lora_tensors("model.layers.0.attn.q_proj")
    tensors.update(lora_tensors("model.layers.0.attn.k_proj", seed=1))
    write_adapter(tmp_path / "ad", tensors)
    base = small_state()
    base["model.layers.0.attn.q_proj.weight"][0, 0] = float("inf")
    details = analyze(tmp_path / "ad", base=base, progress=False)
    rows = {row["longname"]: row for _, row in details.iterrows()}
    assert rows["model.layers.0.attn.q_proj.lora_BA"]["status"] == "success"
    assert rows["model.layers.0.attn.q_proj.lora_BA"]["base_status"] == "non-finite"
    assert math.isnan(rows["model.layers.0.attn.q_proj.lora_BA"]["base_alpha"])
    assert rows["model.layers.0.attn.k_proj.lora_BA"]["base_status"] == "success"
    # with_base: that row's matrix W + dW is non-finite, the other one is analyzed
    with_base = analyze(tmp_path / "ad", base=base, peft="with_base", progress=False)
    assert with_base["status"].tolist() == ["success", "non-finite"]


def test_no_analyzable_matrix():
    only_vectors = {"norm.weight": torch.ones(8), "bias": torch.zeros(8)}
    with pytest.raises(SpectuneError, match="no analyzable matrix"):
        analyze(only_vectors, progress=False)
    with pytest.raises(SpectuneError, match="no analyzable matrix"):
        describe(only_vectors)
    with pytest.raises(SpectuneError, match="no LoRA pairs|no LoRA tensors"):
        analyze(small_state(), peft=True, progress=False)


def test_bad_layers_argument():
    with pytest.raises(SpectuneError, match=r"layers='\(q_proj' is not a valid regular expression"):
        analyze(small_state(), layers="(q_proj", progress=False)
    with pytest.raises(SpectuneError, match="selects no matrix"):
        analyze(small_state(), layers="nothing_matches", progress=False)
    with pytest.raises(SpectuneError, match="layers must be"):
        analyze(small_state(), layers=3.5, progress=False)
    picked = analyze(small_state(), layers="q_proj|up_proj", progress=False)
    assert picked["longname"].tolist() == [
        "model.layers.0.attn.q_proj",
        "model.layers.0.mlp.up_proj",
    ]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(peft="yes"), "peft must be"),
        (dict(precision="float16"), "precision must be"),
        (dict(fix_fingers="peak"), "fix_fingers must be"),
        (dict(peft="with_base"), "needs base="),
        (dict(min_evals=0), "min_evals must be"),
        (dict(delta=True, peft=True, base={"a.weight": torch.ones(2, 2)}), "full fine-tunes"),
    ],
)
def test_bad_options(kwargs, pattern):
    with pytest.raises(SpectuneError, match=pattern):
        analyze(small_state(), progress=False, **kwargs)


def test_with_base_needs_a_base_matrix_for_every_pair(tmp_path):
    write_adapter(tmp_path / "ad", lora_tensors("model.layers.0.attn.q_proj"))
    with pytest.raises(SpectuneError, match=r"no base matrix for model\.layers\.0\.attn\.q_proj"):
        analyze(tmp_path / "ad", base={"x.weight": torch.ones(3, 3)}, peft="with_base",
                progress=False)  # fmt: skip


def test_too_large_matrices_are_listed_as_skipped():
    details = analyze(small_state(), max_evals=16, progress=False)
    assert details["status"].eq("success").all()
    details = analyze(small_state(), max_evals=15, progress=False)
    assert details["status"].eq("skipped").all()
    assert details["warning"].str.contains("max_evals=15").all()
    details = analyze(small_state(), max_N=30, progress=False)
    rows = {r["longname"]: r for _, r in details.iterrows()}
    assert rows["model.layers.0.mlp.up_proj"]["status"] == "skipped"  # N = 40 > 30
    assert rows["model.layers.0.attn.q_proj"]["status"] == "success"  # N = 24


def test_summarize_needs_a_dataframe():
    with pytest.raises(SpectuneError, match="DataFrame"):
        summarize([{"alpha": 2.0}])


def test_module_with_nan_parameter():
    model = make_tiny_llama(seed=3)
    with torch.no_grad():
        model.model.layers[1].mlp.gate_proj.weight[0, 0] = float("nan")
    details = analyze(model, progress=False)
    bad = details[details["status"] == "non-finite"]
    assert bad["longname"].tolist() == ["model.layers.1.mlp.gate_proj"]
    assert details["status"].isin(["success", "non-finite"]).all()
