"""``spectune methods``: the registered methods and objectives with their sections, one of
them, and what a method would train on a model (FROG: the plan ``frog-plan`` wrote)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from spectune.cli import main as cli_main
from spectune.tuning.methods import METHODS
from spectune.tuning.objectives import OBJECTIVES

#: r (in + out) summed over the tiny Llama's 14 linear layers
PER_RANK = 2 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))


@pytest.fixture
def cli(monkeypatch):
    """``spectune`` with methods and frog-plan registered (as the lead registers them)."""
    monkeypatch.setitem(cli_main.COMMANDS, "methods", "spectune.cli.methods")
    monkeypatch.setitem(cli_main.COMMANDS, "frog-plan", "spectune.cli.frog_plan")
    return cli_main.main


def test_methods_lists_every_method_objective_and_section(cli, capsys):
    assert cli(["methods"]) == 0
    out = capsys.readouterr().out
    for name in [*METHODS.names(), *OBJECTIVES.names()]:
        assert f"\n  {name} " in out, name
    assert "lora.r=8" in out and "LoRA rank" in out and "frog.budget=0.01" in out
    assert "(read by lora, rslora, dora" in out


def test_methods_name_shows_one(cli, capsys):
    assert cli(["methods", "frog"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("method frog: ") and "frog.selection=per_matrix" in out
    assert "lora.r" not in out
    assert cli(["methods", "sft"]) == 0
    assert capsys.readouterr().out.startswith("objective sft: ")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["methods", "nope"], "unknown method 'nope'"),
        (["methods", "lora", "lora.r=4"], "key=value and --out need --model"),
        (["methods", "lora.r=4"], "unknown method 'lora.r=4'"),
    ],
)
def test_methods_bad_input_is_one_line_exit_2(cli, capsys, argv, match):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spectune: error: ") and match in err


def test_methods_on_a_model_shows_targets_and_trainable_count(cli, tiny_model_dir, capsys):
    assert cli(["methods", "lora", "--model", str(tiny_model_dir), "lora.r=2"]) == 0
    out = capsys.readouterr().out
    assert f"{2 * PER_RANK:,} of " in out and "14 target modules" in out
    assert "model.layers.0.self_attn.q_proj  64x64" in out and "... 6 more rows" in out
    assert cli(["methods", "--model", str(tiny_model_dir), "full"]) == 0
    assert "target_modules does not apply" in capsys.readouterr().out


def test_methods_frog_writes_what_frog_plan_wrote(cli, tiny_model_dir, tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    assert (
        cli(
            [
                "frog-plan",
                str(tiny_model_dir),
                "--budget",
                "0.05",
                "--global",
                "--out",
                str(old),
                "--no-progress",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.err.strip().endswith(
        "spectune frog-plan is now spectune methods frog "
        "--model MODEL --out DIR [frog.KEY=VALUE ...]"
    )
    assert (
        cli(
            [
                "methods",
                "frog",
                "--model",
                str(tiny_model_dir),
                "frog.budget=0.05",
                "frog.selection=global",
                "--out",
                str(new),
                "--no-progress",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == captured.out.replace(str(old), str(new))
    assert "selection=global" in captured.out and "wrote" in captured.out
    assert sorted(p.name for p in new.iterdir()) == sorted(p.name for p in old.iterdir())
    pd.testing.assert_frame_equal(
        pd.read_csv(new / "frog_plan.csv"), pd.read_csv(old / "frog_plan.csv")
    )
    plans = [json.loads((d / "frog_plan.json").read_text()) for d in (old, new)]
    assert plans[0]["matrices"] == plans[1]["matrices"]
    assert json.loads((new / "run.json").read_text())["kind"] == "frog_plan"
    # without --out: printed only, the rest of the table named
    assert cli(["methods", "frog", "--model", str(tiny_model_dir), "--no-progress"]) == 0
    assert "more rows (--out writes them all)" in capsys.readouterr().out
