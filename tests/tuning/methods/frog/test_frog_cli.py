"""``spectune frog-plan`` on a tiny saved model (fast) and on the embedded default (slow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spectune.cli import main as cli_main


@pytest.fixture
def cli(monkeypatch):
    """``spectune`` with frog-plan registered (as the lead registers it in COMMANDS)."""
    monkeypatch.setitem(cli_main.COMMANDS, "frog-plan", "spectune.cli.frog_plan")
    return cli_main.main


@pytest.fixture
def tiny_folder(tiny_llama, tmp_path):
    folder = tmp_path / "tiny"
    tiny_llama.save_pretrained(folder)
    return folder


def test_frog_plan_writes_table_and_charts(cli, tiny_folder, tmp_path, capsys):
    out = tmp_path / "plan"
    code = cli(
        ["frog-plan", str(tiny_folder), "--budget", "0.05", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".spectune.lock",  # the folder is spectune's: a rerun replaces its files
        "frog_plan.csv",
        "frog_plan.json",
        "layer_importance.png",
        "run.json",
    ]
    table = pd.read_csv(out / "frog_plan.csv")
    assert len(table) == 14 and int(table["trainable"].sum()) == 922
    assert table["importance"].sum() == pytest.approx(1.0)
    report = json.loads((out / "frog_plan.json").read_text())
    assert report["summary"]["total_trainable"] == 922
    assert report["summary"]["model"] == str(tiny_folder)
    assert (out / "layer_importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "922 of 18,432 weights trainable" in text


def test_frog_plan_never_writes_into_a_folder_of_the_users(cli, tiny_folder, tmp_path, capsys):
    """The rule for every file spectune writes: a folder spectune does not own is refused
    before the model is read; its own earlier plan is replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "frog_plan.csv").write_text("my,table\n")
    argv = ["frog-plan", str(tiny_folder), "--budget", "0.05", "--out", str(out), "--no-progress"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no spectune run (frog_plan.csv)" in err
    assert (out / "frog_plan.csv").read_text() == "my,table\n"
    assert sorted(p.name for p in out.iterdir()) == ["frog_plan.csv"]
    (out / "frog_plan.csv").unlink()
    assert cli(argv) == 0 and cli(argv) == 0  # its own plan: replaced


def test_frog_plan_global_and_options(cli, tiny_folder, tmp_path):
    out = tmp_path / "g"
    code = cli(
        [
            "frog-plan", str(tiny_folder), "--budget", "0.02", "--global", "--out", str(out),
            "--target-modules", "q_proj,k_proj,v_proj", "--svd", "randomized",
            "--svd-rank", "8", "--seed", "3", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    assert (out / "global_selection.png").is_file()
    table = pd.read_csv(out / "frog_plan.csv")
    assert set(table["module"]) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
    report = json.loads((out / "frog_plan.json").read_text())
    assert report["summary"]["config"]["svd_rank"] == 8
    assert report["summary"]["selection"] == "global"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--budget", "0"], "budget must be in"),
        (["--budget", "2"], "budget must be in"),
        (["--target-modules", "qkv"], "matches no module"),
        (["--target-modules", "re:.*embed_tokens"], "not nn.Linear"),
    ],
)
def test_frog_plan_bad_input_is_one_line_exit_2(cli, tiny_folder, tmp_path, capsys, extra, match):
    argv = ["frog-plan", str(tiny_folder), "--out", str(tmp_path / "x"), "--no-progress", *extra]
    code = cli(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("spectune: error: ") and match in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_frog_plan_missing_model_folder(cli, tmp_path, capsys):
    code = cli(["frog-plan", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert code == 2 and "neither 'default' nor an existing folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.real_weights
def test_frog_plan_on_the_embedded_model(cli, tmp_path):
    out = tmp_path / "smol"
    assert cli(["frog-plan", "default", "--budget", "0.01", "--global", "--out", str(out)]) == 0
    table = pd.read_csv(out / "frog_plan.csv")
    assert len(table) == 210  # 30 layers x 7 linear modules, lm_head excluded
    assert int(table["size"].sum()) == 106_168_320
    assert int(table["trainable"].sum()) == 1_061_683  # round(0.01 * 106,168,320)
    assert table["importance"].sum() == pytest.approx(1.0)
    for name in ("layer_importance.png", "global_selection.png", "frog_plan.json"):
        assert (out / name).stat().st_size > 1000


def test_frog_plan_alpha_importance(cli, tiny_folder, tmp_path):
    pytest.importorskip("spectune.watch.powerlaw")
    out = tmp_path / "alpha"
    argv = ["frog-plan", str(tiny_folder), "--budget", "0.05", "--importance", "alpha"]
    assert cli([*argv, "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out / "frog_plan.csv")
    assert "alpha" in table.columns and int(table["trainable"].sum()) == 922
    low, high = 2.0, 6.0  # the default clip range of the tilt
    a = table["alpha"].clip(low, high).fillna(1.0)
    w = table["frobenius"] * a.where(
        table["alpha"].notna(), np.exp(np.log(a[table["alpha"].notna()]).mean())
    )
    np.testing.assert_allclose(table["importance"], w / w.sum(), rtol=1e-9)
