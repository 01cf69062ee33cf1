"""Sweep grids (parsing, expansion, de-duplication, names) and the results-folder rules."""

from __future__ import annotations

import json
import re

import pytest

from spectune.errors import SpectuneError
from spectune.results.runfolder import LOCK, MARKER, RunFolder
from spectune.studies.sweep import expand_grid, parse_grid, run_name


def test_parse_grid_types_and_brackets():
    grid = parse_grid(["r=8,16,32", "lora_dropout=0,0.1", "method=lora,dora",
                       "target_modules=[q_proj,v_proj],all-linear", "train.learning_rate=1e-4,2e-4"])  # fmt: skip
    assert grid == {
        "r": [8, 16, 32],
        "lora_dropout": [0, 0.1],
        "method": ["lora", "dora"],
        "target_modules": [["q_proj", "v_proj"], "all-linear"],
        "train.learning_rate": [1e-4, 2e-4],
    }


@pytest.mark.parametrize(
    "items,message",
    [(["r"], "is not key=v1,v2"), (["r="], "is not key=v1,v2"), (["r=8,,16"], "empty value"),
     (["r=8", "r=16"], "gives 'r' twice")],
)  # fmt: skip
def test_parse_grid_errors(items, message):
    with pytest.raises(SpectuneError, match=message):
        parse_grid(items)


def test_issue_grid_expands_to_36_runs_in_grid_order():
    grid = parse_grid(
        ["r=8,16,32", "lora_alpha=16,64,256", "lora_dropout=0,0.1", "method=lora,dora"]
    )
    runs, skipped = expand_grid({}, grid)
    assert len(runs) == 36 and skipped == []
    names = [n for n, _, _ in runs]
    assert len(set(names)) == 36
    assert names[:3] == ["r8_a16_d0_lora", "r8_a16_d0_dora", "r8_a16_d0.1_lora"]
    name, config, setting = runs[-1]
    assert setting == {"r": 32, "lora_alpha": 256, "lora_dropout": 0.1, "method": "dora"}
    lora = config.section("lora")
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, config.method) == (32, 256, 0.1, "dora")
    # the same grid in the section form gives the same runs and names
    again, _ = expand_grid({}, parse_grid(["lora.r=8,16,32", "lora.lora_alpha=16,64,256",
                                           "lora.lora_dropout=0,0.1", "method=lora,dora"]))  # fmt: skip
    assert [n for n, _, _ in again] == names
    assert [c.to_dict() for _, c, _ in again] == [c.to_dict() for _, c, _ in runs]


def test_settings_a_method_ignores_are_trained_once():
    runs, skipped = expand_grid({}, parse_grid(["method=lora,frog,full,shira", "r=8,16"]))
    assert [n for n, _, _ in runs] == ["lora_r8", "lora_r16", "frog_r8", "full_r8", "shira_r8"]
    assert skipped == [{"setting": {"method": "frog", "r": 16}, "same_as": "frog_r8"},
                       {"setting": {"method": "full", "r": 16}, "same_as": "full_r8"},
                       {"setting": {"method": "shira", "r": 16}, "same_as": "shira_r8"}]  # fmt: skip
    # a base config holding every method's section serves them all
    base = {"lora": {"r": 4}, "frog": {"budget": 0.02}, "quant": {"quant_type": "fp4"}}
    runs, _ = expand_grid(base, parse_grid(["method=lora,frog,qlora"]))
    assert [set(c.sections) for _, c, _ in runs] == [{"lora"}, {"frog"}, {"lora", "quant"}]
    assert runs[1][1].section("frog").budget == 0.02


def test_invalid_combination_names_the_setting():
    with pytest.raises(SpectuneError, match=r"grid setting \{'r': 0\}: .*lora.r must be >= 1"):
        expand_grid({}, parse_grid(["r=8,0"]))


def test_run_names_are_safe_folder_names():
    assert run_name({"frog.budget": 0.01, "method": "frog"}) == "G0.01_frog"
    assert run_name({"target_modules": ["q_proj", "v_proj"]}) == "target_modules=q_proj+v_proj"
    assert run_name({"target_modules": "q_proj"}) == "target_modules=q_proj"  # a separator
    assert run_name({"lora.r": 8, "method": "dora"}) == "r8_dora"
    assert "/" not in run_name({"data.train": "/etc/passwd"})


# --------------------------------------------------------------------------- results folder


def test_fresh_folder_then_refusals(tmp_path):
    out = tmp_path / "run"
    folder = RunFolder(out).open()
    folder.own("metrics.json")
    (out / "metrics.json").write_text("{}")
    marker = json.loads((out / MARKER).read_text())
    assert marker["status"] == "running" and marker["files"] == [MARKER, "metrics.json"]
    with pytest.raises(SpectuneError, match=r"is in use by a running spectune \(pid \d+\)"):
        RunFolder(out).open()  # the live run holds the folder's lock
    folder.close()
    with pytest.raises(SpectuneError, match="holds an interrupted run .* --resume"):
        RunFolder(out).open()
    folder.finish()
    with pytest.raises(SpectuneError, match="already holds a complete run; pass --overwrite"):
        RunFolder(out).open()
    with RunFolder(out).open(resume=True) as again:
        assert again.complete
    with pytest.raises(SpectuneError, match="exclude each other"):
        RunFolder(out).open(overwrite=True, resume=True)
    with pytest.raises(SpectuneError, match="holds a spectune tune run, not a sweep run"):
        RunFolder(out, "sweep").open(resume=True)


def test_overwrite_removes_only_what_the_run_wrote(tmp_path):
    out = tmp_path / "run"
    folder = RunFolder(out).open()
    folder.own("adapter", "metrics.json")
    (out / "adapter").mkdir()
    (out / "adapter" / "w.safetensors").write_bytes(b"x")
    (out / "metrics.json").write_text("{}")
    (out / "my_notes.txt").write_text("mine")  # the user's file, never ours
    folder.finish()
    again = RunFolder(out).open(overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "my_notes.txt", LOCK])
    assert (out / "my_notes.txt").read_text() == "mine"
    assert again.state["status"] == "running"


def test_foreign_folder_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(
            SpectuneError, match="holds no spectune run .*thesis.tex.* never deletes"
        ):
            RunFolder(tmp_path).open(**flags)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpectuneError, match="is a file"):
        RunFolder(tmp_path / "file").open()


def test_marker_with_hostile_file_list_deletes_nothing_outside(tmp_path):
    outside = tmp_path / "keep.txt"
    outside.write_text("keep")
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"spectune_run": 1, "kind": "tune", "status": "complete",
                                          "files": ["../keep.txt", "..", "/etc", MARKER]}))  # fmt: skip
    with pytest.raises(SpectuneError, match=r"run.json: field 'files' is \['../keep.txt'.* not a "
                       "list of plain file names"):  # fmt: skip
        RunFolder(out).open(overwrite=True)
    assert outside.read_text() == "keep"
    assert sorted(p.name for p in out.iterdir()) == [MARKER]  # not even locked


def test_an_open_folder_is_never_written_through_a_link(tmp_path):
    """Issue 20, case 7, while a run writes: a link planted in its folder (at a file, a
    folder on the way, the lock) is refused, naming it, and nothing is written through it."""
    from spectune._io import publish_dir, write_text
    from spectune.report.files import save_figure

    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "run"
    folder = RunFolder(out).open()
    folder.own("plots", "adapter")
    (out / "plots").symlink_to(outside, target_is_directory=True)
    (out / "adapter").mkdir()
    (out / "adapter" / "inner").symlink_to(outside, target_is_directory=True)
    (out / "metrics.json").symlink_to(outside / "metrics.json")
    fig = __import__("matplotlib.figure", fromlist=["Figure"]).Figure()
    attempts = [
        (lambda: write_text(out / "plots" / "x.txt", "x"), out / "plots"),
        (lambda: save_figure(fig, out / "plots" / "x.png"), out / "plots"),
        (lambda: write_text(out / "adapter" / "inner" / "w", "x"), out / "adapter" / "inner"),
        (lambda: publish_dir(lambda tmp: None, out / "plots" / "sub"), out / "plots"),
        (lambda: write_text(out / "metrics.json", "{}"), out / "metrics.json"),
        (folder.record, out / "plots"),
        (lambda: folder.own("metrics.json"), out / "metrics.json"),
    ]
    for attempt, link in attempts:
        with pytest.raises(SpectuneError, match=rf"^{re.escape(str(link))} is a symbolic link "
                           "inside the results folder"):  # fmt: skip
            attempt()
    assert list(outside.iterdir()) == []
    folder.close()  # released: the folder is no longer guarded
    write_text(tmp_path / "free.txt", "x")
    # a lock file planted as a link: never opened through it
    (outside / "victim").write_text("keep")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / LOCK).symlink_to(outside / "victim")
    with pytest.raises(SpectuneError, match=r"\.spectune\.lock cannot be opened .*link"):
        RunFolder(fresh).open()
    assert (outside / "victim").read_text() == "keep"


def test_own_refuses_a_file_the_run_did_not_write(tmp_path):
    out = tmp_path / "run"
    folder = RunFolder(out).open()
    (out / "metrics.json").write_text("the user's")
    with pytest.raises(SpectuneError, match=r"metrics.json is already there and was not written "
                       "by this run; spectune never replaces"):  # fmt: skip
        folder.own("metrics.json")
    assert (out / "metrics.json").read_text() == "the user's"
    assert "metrics.json" not in folder.state["files"]
    folder.close()
