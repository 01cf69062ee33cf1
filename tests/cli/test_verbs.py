"""``spectune --help``: the verbs under the README's headings; old names as noted aliases."""

from __future__ import annotations

from pathlib import Path

import pytest

from spectune.cli.main import COMMANDS, HEADINGS, OLD_NAMES, main, old_name_note

LLAMA = str(Path(__file__).parents[1] / "fixtures" / "model_configs" / "llama-2-7b")


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_lists_each_verb_once_under_its_heading(capsys):
    out = _help(capsys)
    starts = [out.index(heading) for heading in HEADINGS]
    assert starts == sorted(starts)
    ends = [*starts[1:], out.index("old names")]
    for (heading, verbs), start, end in zip(HEADINGS.items(), starts, ends, strict=True):
        listed = [line.split()[0] for line in out[start:end].splitlines()[1:]
                  if line.startswith("  ") and not line.startswith("   ")]  # fmt: skip
        assert listed == list(verbs), heading
    assert [v for verbs in HEADINGS.values() for v in verbs] == [
        "tune", "methods", "memory", "augment", "model", "export", "watch", "compare",
        "describe", "judge", "demo", "sweep", "study", "search", "advise", "report",
    ]  # fmt: skip
    assert "old names, kept until the next release: analyze -> watch, plan -> memory," in out
    assert "frog-plan -> methods frog" in out


def test_every_verb_is_registered_and_old_names_are_not_listed_as_verbs():
    listed = {v for verbs in HEADINGS.values() for v in verbs}
    assert listed | {"frog-plan"} == set(COMMANDS)
    assert not listed & set(OLD_NAMES)
    assert OLD_NAMES == {"analyze": "watch", "plan": "memory", "frog-plan": "methods frog"}


def test_tune_help_points_to_the_methods_verb(capsys):
    assert "spectune methods" in _help(capsys, "tune")
    assert COMMANDS["methods"] == "spectune.cli.methods"


def test_an_old_name_help_names_its_new_verb(capsys):
    assert "the old name of `spectune watch`" in _help(capsys, "analyze")
    assert "the old name of `spectune memory`" in _help(capsys, "plan")


@pytest.fixture
def weights(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({f"m{i}.weight": torch.randn(48, 24) for i in range(3)}, str(path))
    return str(path)


@pytest.mark.parametrize(("old", "new", "argv"), [
    ("analyze", "watch", ["--min-evals", "4", "--no-progress"]),
    ("plan", "memory", ["--json", "--batch", "1", "--seq", "512"]),
])  # fmt: skip
def test_an_old_name_notes_its_new_verb_then_runs_it(old, new, argv, weights, capsys):
    source = weights if old == "analyze" else LLAMA
    assert main([new, source, *argv]) == 0
    new_run = capsys.readouterr()
    assert new_run.err == ""
    assert main([old, source, *argv]) == 0
    old_run = capsys.readouterr()
    assert old_run.out == new_run.out
    assert old_run.err == old_name_note(old) + "\n"
    assert old_name_note(old) == (f"spectune: note: `spectune {old}` is now `spectune {new}`; "
                                  "the old name goes in the next release")  # fmt: skip


@pytest.mark.parametrize(("old", "new", "argv"), [
    ("analyze", "watch", ["--min-evals", "0", "--no-progress"]),
    ("plan", "memory", ["--budget-gib=nan"]),
])  # fmt: skip
def test_an_old_name_keeps_the_errors_and_exit_codes(old, new, argv, weights, capsys):
    source = weights if old == "analyze" else LLAMA
    assert main([new, source, *argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("spectune: error: ")
    assert main([old, source, *argv]) == 2
    assert capsys.readouterr().err == old_name_note(old) + "\n" + error


def test_the_old_name_of_a_verb_that_runs_in_one_process_names_itself(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["analyze", "x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == old_name_note("analyze")
    assert "spectune analyze runs in one process" in err[1]
