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
    written = {"compare.csv", "compare.json", "flow.csv", "scale_collapse.png",
               "correlation_flow.png"}  # fmt: skip
    # and the folder's marker (spectune's folder: a rerun replaces these files) and lock
    assert {p.name for p in out.iterdir()} == written | {"run.json", ".spectune.lock"}
    marker = json.loads((out / "run.json").read_text())
    assert marker["kind"] == "compare" and marker["status"] == "complete"
    assert set(marker["files"]) == written | {"run.json"}


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
    assert main(["watch", str(a), "--report", "--no-progress"]) == 2
    assert "--report needs --out" in capsys.readouterr().err
    assert main(["report", str(a)]) == 2
    assert "details.csv / compare.csv" in capsys.readouterr().err


def test_compare_cli_missing_source_is_an_input_error(tmp_path, capsys):
    a = write_model(tmp_path / "a", 1.0)
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_analyze_and_compare_never_write_into_a_folder_of_the_users(tmp_path, capsys):
    """Issue 20, case 3: analyze --out / compare --out silently replaced a user's
    summary.json, report.html and flow.csv. A folder spectune does not own is refused before
    the work, naming a file, one line, exit 2, and stays byte-identical."""
    a = write_model(tmp_path / "a", 1.0)
    b = write_model(tmp_path / "b", 0.2)
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in (("summary.json", '{"mine": 1}'), ("report.html", "<p>mine</p>"),
                       ("flow.csv", "my,columns\n")):  # fmt: skip
        (out / name).write_text(text)
    before = _snapshot(out)
    commands = [["watch", str(a), "--plots", "--report"], ["compare", str(a), str(b), "--report"]]
    for argv in commands:
        assert main([*argv, "--out", str(out), "--no-progress"]) == 2
        printed = capsys.readouterr()
        assert printed.err.count("\n") == 1, printed.err
        assert f"output folder {out} is not empty and holds no spectune run (flow.csv, " \
            "report.html, summary.json)" in printed.err  # fmt: skip
        assert "lowest and highest alpha" not in printed.out  # refused before the work
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)


def test_a_rerun_replaces_its_own_output_and_keeps_the_users_files(tmp_path, capsys):
    """The folder spectune made is its own: a rerun into it replaces the earlier output
    (stale figures included) and leaves a file the user added there; an output of the other
    command or of a tune run is refused."""
    a = write_model(tmp_path / "a", 1.0)
    b = write_model(tmp_path / "b", 0.2)
    out = tmp_path / "out"
    assert main(["compare", str(a), str(b), "--out", str(out), "--plots", "--no-progress"]) == 0
    assert (out / "scale_collapse.png").is_file()
    (out / "notes.txt").write_text("my notes")
    assert main(["compare", str(a), str(a), "--out", str(out), "--no-progress"]) == 0
    assert "wrote 3 files" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert names == {"compare.csv", "compare.json", "flow.csv", "notes.txt", "run.json",
                     ".spectune.lock"}  # the figures of the first run are gone  # fmt: skip
    assert json.loads((out / "compare.json").read_text())["n_collapsed"] == 0
    assert (out / "notes.txt").read_text() == "my notes"
    before = _snapshot(out)
    assert main(["watch", str(a), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a spectune compare run, not an analyze run" in err
    assert _snapshot(out) == before
    # a file of the user's in the way of a name the rerun writes is refused, not replaced
    (out / "scale_collapse.png").write_bytes(b"my figure")
    assert main(["compare", str(a), str(b), "--out", str(out), "--plots", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scale_collapse.png is already there and was not written" in err
    assert (out / "scale_collapse.png").read_bytes() == b"my figure"
    assert (out / "notes.txt").read_text() == "my notes"
    # analyze into its own folder, then again with other options
    ana = tmp_path / "ana"
    assert main(["watch", str(a), "--out", str(ana), "--plots", "--no-progress"]) == 0
    assert (ana / "esd_0.png").is_file()
    assert main(["watch", str(a), "--out", str(ana), "--report", "--no-progress"]) == 0
    marker = json.loads((ana / "run.json").read_text())
    assert marker["kind"] == "analyze" and marker["status"] == "complete"
    assert (ana / "report.html").is_file() and "report.html" in marker["files"]
