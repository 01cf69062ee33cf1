"""``spectune watch`` with the issue-13 flags: --fit TPL, --fix-fingers xmin_peak,
--compare-fits, --detx, --intruders (with --delta and --base)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from spectune.cli.main import main


def write(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def tensors(seed: int, bump: float = 0.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(64, 24, generator=g)
           for i in range(2)}  # fmt: skip
    if bump:
        u = torch.randn(64, 1, generator=g)
        out["model.layers.1.mlp.up_proj.weight"] += bump * (u / u.norm()) @ torch.ones(1, 24)
    return out


def test_tpl_and_fit_comparison_columns(tmp_path, capsys):
    src = write(tmp_path / "m", tensors(0))
    out = tmp_path / "out"
    args = ["watch", str(src), "--fit", "TPL", "--compare-fits", "--detx", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    details = pd.read_csv(out / "details.csv")
    for col in ["Lambda", "pl_tpl_R", "pl_tpl_p", "better_fit", "detX_num", "ERG_gap"]:
        assert col in details.columns, col
    assert (details["status"] == "success").all()
    assert main(["watch", str(src), "--fix-fingers", "xmin_peak", "--no-progress"]) == 0


def test_intruders_with_delta(tmp_path, capsys):
    base = write(tmp_path / "base", tensors(0))
    tuned = write(tmp_path / "tuned", tensors(0, bump=30.0))
    out = tmp_path / "out"
    args = ["watch", str(tuned), "--base", str(base), "--delta", "--intruders",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "intruder dimensions: 1 in 1 layers" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_intruders"] == 1


def test_analyze_report_embeds_the_intruder_and_flow_sections(tmp_path, capsys):
    base = write(tmp_path / "base", tensors(0))
    tuned = write(tmp_path / "tuned", tensors(0, bump=30.0))
    out = tmp_path / "out"
    args = ["watch", str(tuned), "--base", str(base), "--delta", "--intruders", "--report",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.html", "intruders.png"} <= names
    text = (out / "report.html").read_text(encoding="utf-8")
    assert f"spectune watch: {tuned}" in text
    assert "1 intruder dimension in 1 of 2 matrices." in text
    # no delta has a fitted alpha (one is zero, one rank 1): no flow, no flow section
    assert "flow.csv" not in names and "correlation_flow.png" not in names
    assert "Correlation flow" not in text
    assert text.count("data:image/png;base64,") == len([n for n in names if n.endswith(".png")])


def test_intruders_without_base_is_an_input_error(tmp_path, capsys):
    src = write(tmp_path / "m", tensors(0))
    assert main(["watch", str(src), "--intruders", "--no-progress"]) == 2
    assert "needs base=" in capsys.readouterr().err
