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
    assert {p.name for p in out.iterdir()} == {"compare.csv", "compare.json", "flow.csv",
                                               "scale_collapse.png", "correlation_flow.png"}  # fmt: skip


def test_compare_cli_report_and_spectune_report_rerender_it(tmp_path, capsys):
    a = write_model(tmp_path / "a", 1.0)
    b = write_model(tmp_path / "b", 0.2)
    out = tmp_path / "out"
    assert main(["compare", str(a), str(b), "--out", str(out), "--report", "--no-progress"]) == 0
    assert "wrote 6 files" in capsys.readouterr().out  # csv, json, flow, 2 figures, report
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "spectune compare: b against a" in text and "8 matrices compared; 1 collapsed." in text
    assert text.count("data:image/png;base64,") == 2
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text(encoding="utf-8") == text


def test_report_without_out_is_an_input_error(tmp_path, capsys):
    a = write_model(tmp_path / "a", 1.0)
    assert main(["compare", str(a), str(a), "--report", "--no-progress"]) == 2
    assert "--report needs --out" in capsys.readouterr().err
    assert main(["analyze", str(a), "--report", "--no-progress"]) == 2
    assert "--report needs --out" in capsys.readouterr().err
    assert main(["report", str(a)]) == 2
    assert "details.csv / compare.csv" in capsys.readouterr().err


def test_compare_cli_missing_source_is_an_input_error(tmp_path, capsys):
    a = write_model(tmp_path / "a", 1.0)
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
