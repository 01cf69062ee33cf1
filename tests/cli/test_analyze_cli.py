"""``spectune watch`` / ``spectune describe``: outputs, exit codes, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from spectune.cli.main import main
from spectune.watch import analyze, describe, summarize


def strict_json(path: Path):
    """json.loads that rejects NaN / Infinity tokens (not valid JSON)."""

    def refuse(token: str):
        raise AssertionError(f"{path.name} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes (``.name.XXXX.tmp``) left behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny Llama saved with save_pretrained, one matrix holding a NaN."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    ))  # fmt: skip
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[2, 3] = float("nan")
    out = tmp_path_factory.mktemp("hf")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, hf_folder) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_pretrained(hf_folder)
        peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                     target_modules=["q_proj", "v_proj"]))  # fmt: skip
        out = tmp_path_factory.mktemp("adapter")
        peft_model.save_pretrained(out)
    return out


def test_analyze_writes_csv_json_summary_and_plots(hf_folder, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["watch", str(hf_folder), "--out", str(out), "--plots", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "lowest and highest alpha" in printed and "wrote" in printed
    names = {p.name for p in out.iterdir()}
    assert {"details.csv", "details.json", "summary.json", "alpha_hist.png",
            "alpha_depth.png", "esd_0.png"} <= names  # fmt: skip
    assert leftovers(out) == []
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    expected = analyze(hf_folder, progress=False)
    csv = pd.read_csv(out / "details.csv")
    assert csv["longname"].tolist() == expected["longname"].tolist()
    pd.testing.assert_series_equal(csv["alpha"], expected["alpha"], check_exact=False, rtol=1e-12)
    rows = strict_json(out / "details.json")  # valid JSON: NaN written as null
    assert [r["longname"] for r in rows] == expected["longname"].tolist()
    bad = [r for r in rows if r["status"] == "non-finite"]
    assert [r["longname"] for r in bad] == ["model.layers.1.mlp.up_proj"]
    assert bad[0]["alpha"] is None
    good = [r for r in rows if r["status"] == "success"]
    assert good[0]["alpha"] == pytest.approx(float(expected.loc[expected["status"] == "success",
                                                                "alpha"].iloc[0]))  # fmt: skip
    summary = strict_json(out / "summary.json")
    ref = summarize(expected)
    assert summary["n_layers"] == ref["n_layers"] == len(expected)
    assert summary["n_analyzed"] == ref["n_analyzed"] == len(expected) - 1
    assert summary["alpha"] == pytest.approx(ref["alpha"], rel=1e-12)
    assert summary["status_counts"] == {"success": len(expected) - 1, "non-finite": 1}
    assert summary["options"]["precision"] == "float64" and summary["options"]["seed"] == 0


def test_analyze_adapter_with_base_writes_the_scatter(adapter, hf_folder, tmp_path):
    out = tmp_path / "ad"
    code = main(["watch", str(adapter), "--base", str(hf_folder), "--out", str(out),
                 "--plots", "--no-progress", "--min-evals", "4"])  # fmt: skip
    assert code == 0
    assert (out / "alpha_vs_base.png").is_file()
    csv = pd.read_csv(out / "details.csv")
    assert len(csv) == 4 and csv["longname"].str.endswith(".lora_BA").all()
    assert csv["base_alpha"].notna().all()
    assert (csv["lora_rank"] == 8).all() and (csv["scaling"] == 2.0).all()
    ref = analyze(adapter, base=hf_folder, min_evals=4, progress=False)
    pd.testing.assert_series_equal(csv["base_alpha"], ref["base_alpha"], check_exact=False)
    unscaled = tmp_path / "unscaled"
    assert main(["watch", str(adapter), "--no-lora-scaling", "--out", str(unscaled),
                 "--no-progress"]) == 0  # fmt: skip
    u = pd.read_csv(unscaled / "details.csv")
    pd.testing.assert_series_equal(csv["lambda_max"], 4.0 * u["lambda_max"], check_exact=False,
                                   check_names=False)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["watch", "{missing}"], "no such file or folder"),
        (["watch", "{hf}", "--layers", "(oops"], "not a valid regular expression"),
        (["watch", "{hf}", "--delta"], "delta=True needs base="),
        (["watch", "{hf}", "--peft"], "LoRA"),
        (["watch", "{truncated}"], "model.safetensors"),
        (["describe", "{missing}"], "no such file or folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, hf_folder, tmp_path, capsys):
    truncated = tmp_path / "model.safetensors"
    save_file({"w.weight": torch.ones(64, 64)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:200])
    subs = {"{missing}": str(tmp_path / "nowhere"), "{hf}": str(hf_folder),
            "{truncated}": str(truncated)}  # fmt: skip
    out = tmp_path / "out"
    argv = [subs.get(a, a) for a in args]
    if argv[0] == "watch":
        argv += ["--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spectune: error: ")
    assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing written for a failed analysis


def test_missing_source_exit_code_2_in_a_subprocess(tmp_path):
    missing = tmp_path / "missing_model"
    proc = subprocess.run(
        [sys.executable, "-m", "spectune.cli.main", "watch", str(missing), "--out",
         str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing_model" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_failure_while_writing_leaves_no_partial_file(hf_folder, tmp_path, monkeypatch):
    """A crash in the middle of writing a figure: no temp file and no truncated PNG remain;
    what was written before is complete."""
    from matplotlib.figure import Figure

    calls = {"n": 0}
    real_savefig = Figure.savefig

    def crash_on_second(self, fname, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(fname).write_bytes(b"\x89PNG half a file")
            raise OSError("disk full (simulated)")
        return real_savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", crash_on_second)
    out = tmp_path / "results"
    with pytest.raises(OSError, match="disk full"):
        main(["watch", str(hf_folder), "--out", str(out), "--plots", "--no-progress"])
    assert leftovers(out) == []
    assert not (out / "alpha_depth.png").exists()  # the figure being written when it failed
    strict_json(out / "details.json")
    strict_json(out / "summary.json")
    for png in out.glob("*.png"):
        assert png.stat().st_size > 2000


def test_layers_precision_and_fix_fingers_options(hf_folder, tmp_path):
    out = tmp_path / "sel"
    assert main(["watch", str(hf_folder), "--layers", r"layers\.0\..*proj", "--precision",
                 "float32", "--fix-fingers", "clip_xmax", "--mp-fit", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    csv = pd.read_csv(out / "details.csv")
    assert len(csv) == 7 and csv["longname"].str.contains(r"layers\.0\.").all()
    for col in ("num_fingers", "raw_alpha", "num_spikes", "sigma_mp"):
        assert col in csv
    ref = analyze(hf_folder, layers=r"layers\.0\..*proj", fix_fingers="clip_xmax",
                  progress=False)  # fmt: skip
    assert (csv["alpha"] - ref["alpha"]).abs().max() < 0.01  # float32 vs float64
    assert (csv["num_fingers"] == ref["num_fingers"]).all()
    assert strict_json(out / "summary.json")["options"]["precision"] == "float32"


def test_describe_prints_and_writes_csv(hf_folder, adapter, tmp_path, capsys):
    target = tmp_path / "desc.csv"
    assert main(["describe", str(hf_folder), "--csv", str(target)]) == 0
    assert "16 matrices" in capsys.readouterr().out
    written = pd.read_csv(target)
    expected = describe(hf_folder)
    assert written["longname"].tolist() == expected["longname"].tolist()
    assert (written["N"] == expected["N"]).all() and (written["M"] == expected["M"]).all()
    assert main(["describe", str(adapter), "--csv", str(target)]) == 0
    assert "4 matrices" in capsys.readouterr().out
    pairs = pd.read_csv(target)
    assert pairs["longname"].str.endswith(".lora_BA").all() and (pairs["lora_rank"] == 8).all()


def test_delta_with_plots(hf_folder, tmp_path):
    """--delta --plots: the ESD figures are drawn from W_ft - W_base (via spectrum(delta=True))."""
    from transformers import AutoModelForCausalLM

    ft = AutoModelForCausalLM.from_pretrained(hf_folder)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in ft.named_parameters():
            if p.ndim == 2 and "layers.0" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    ft.save_pretrained(tmp_path / "ft")
    out = tmp_path / "delta"
    assert main(["watch", str(tmp_path / "ft"), "--base", str(hf_folder), "--delta",
                 "--out", str(out), "--plots", "--no-progress"]) == 0  # fmt: skip
    csv = pd.read_csv(out / "details.csv")
    changed = csv[csv["longname"].str.contains(r"layers\.0\.")]
    assert len(changed) == 7 and changed["status"].eq("success").all()
    assert (changed["rank90"] > 1).all()
    rest = csv[~csv["longname"].str.contains(r"layers\.0\.")]
    assert rest["status"].isin(["zero-update", "non-finite"]).all()
    assert len(list(out.glob("esd_*.png"))) >= 1 and leftovers(out) == []
