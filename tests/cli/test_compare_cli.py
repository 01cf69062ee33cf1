"""``spectune compare A B``: files written, collapsed layers named, mismatches reported."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from spectune.cli.main import main


def write_model(folder: Path, scale_layer: float, drop: str | None = None) -> Path:
    g = torch.Generator().manual_seed(0)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(32, 16, generator=g)
               for i in range(8)}  # fmt: skip
    tensors["model.layers.3.mlp.up_proj.weight"] *= scale_layer
    if drop:
        tensors.pop(drop)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_compare_cli_writes_results_and_names_collapse(tmp_path, capsys):
    a = write_model(tmp_path / "a", 1.0)
    b = write_model(tmp_path / "b", 0.2, drop="model.layers.7.mlp.up_proj.weight")
    out = tmp_path / "out"
    code = main(["compare", str(a), str(b), "--out", str(out), "--plots", "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "collapsed: 1 (model.layers.3.mlp.up_proj)" in text
    assert "model.layers.7.mlp.up_proj: only in a" in text
    summary = json.loads((out / "compare.json").read_text())
    assert summary["collapsed_layers"] == ["model.layers.3.mlp.up_proj"]
    assert summary["n_only_in_a"] == 1
    assert {p.name for p in out.iterdir()} == {"compare.csv", "compare.json",
                                               "scale_collapse.png", "correlation_flow.png"}  # fmt: skip


def test_compare_cli_missing_source_is_an_input_error(tmp_path, capsys):
    a = write_model(tmp_path / "a", 1.0)
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
