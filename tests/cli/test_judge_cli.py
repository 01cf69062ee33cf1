"""``spectune judge`` on the command line: a LoRA adapter trained by plain peft code is judged
and its folder rendered by ``spectune report``; bad input is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spectune.cli.main import main
from tests.studies.test_judge_existing import SMALL, _peft_adapter


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory, tiny_model_dir, smol_tokenizer) -> Path:
    return _peft_adapter(tiny_model_dir, tmp_path_factory.mktemp("peft") / "mine", smol_tokenizer)


def test_judge_a_peft_adapter_then_report_renders_it(
    tiny_model_dir, peft_adapter, tmp_path, capsys
):
    out = tmp_path / "judged"
    args = ["judge", str(tiny_model_dir), *SMALL, "--adapter", str(peft_adapter)]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"results in {out}" in printed and "peft-lora" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["method"] == "peft-lora"
    assert metrics["config"]["eval"]["max_new_tokens"] == 4  # the key=value overrides
    assert metrics["method_extras"]["judged"]["adapter"] == str(peft_adapter)
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "peft-lora" in page and "judged by spectune judge" in page
    assert "Spectra of the update" in page
    # a second judge into the same folder: refused without --overwrite, done with it
    assert main([*args, "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    again = [
        "judge",
        str(tiny_model_dir),
        *SMALL,
        "eval.spectra=false",
        "--adapter",
        str(peft_adapter),
    ]
    assert main([*again, "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["spectra"] is None


def _bad_inputs(tiny_model_dir: Path, tmp_path: Path, peft_adapter: Path) -> dict[str, tuple]:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(b"x")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for f in peft_adapter.iterdir():
        (renamed / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((renamed / "adapter_config.json").read_text())
    (renamed / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-360M-Instruct"})
    )
    out = str(tmp_path / "o")
    return {
        "not a peft folder": (
            [str(tiny_model_dir), "--adapter", str(plain), "--out", out],
            "is neither a peft adapter folder (no adapter_config.json)",
        ),
        "merged model without config": (
            [str(plain), "--out", out],
            "has no config.json",
        ),
        "output folder of the user's": (
            [str(tiny_model_dir), *SMALL, "--out", str(theirs)],
            "is not empty and holds no spectune run",
        ),
        "adapter of another base": (
            ["default", "--adapter", str(renamed), "--out", out],
            "was trained on HuggingFaceTB/SmolLM2-360M-Instruct, not on MODEL default",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not a peft folder",
        "merged model without config",
        "output folder of the user's",
        "adapter of another base",
    ],
)
def test_judge_bad_input_is_one_line_exit_2(case, tiny_model_dir, peft_adapter, tmp_path, capsys):
    args, message = _bad_inputs(tiny_model_dir, tmp_path, peft_adapter)[case]
    assert main(["judge", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine"
