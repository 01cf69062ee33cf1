"""Bad inputs a user can give watch, describe and report: one line on stderr, exit code 2.

Output folders are checked before any computing. The tests run as any user, root included:
root can write into a folder whatever its mode, so an "unwritable folder" here is a path under
a regular file (no folder can be made there); where the machine has a folder that even root
cannot write (sysfs), that is tested too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import spectune.watch
from spectune.cli.main import main


def _unwritable_root_folder() -> Path | None:
    """A folder that exists and cannot be written, even by root (sysfs), or None."""
    folder = Path("/sys")
    if not folder.is_dir():
        return None
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError:
        return folder


UNWRITABLE = _unwritable_root_folder()


@pytest.fixture(scope="module")
def few_matrices(tmp_path_factory) -> Path:
    """A safetensors file with three matrices: fewer than the 5 + 5 rows analyze shows."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("few") / "few.safetensors"
    save_file(
        {f"layers.{i}.proj.weight": torch.randn(96, 48, generator=g) for i in range(3)},
        str(path),
    )
    return path


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "plain.txt"
    path.write_text("not a folder")
    return path


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if the analysis starts: output checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the analysis ran before the output folder was checked")

    monkeypatch.setattr(spectune.watch, "analyze", refuse)
    monkeypatch.setattr(spectune.watch, "describe", refuse)


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("spectune: error: "), err
    assert "Traceback" not in err
    return err


def test_analyze_out_under_a_file_exits_2_before_computing(few_matrices, a_file, no_compute,
                                                          capsys):  # fmt: skip
    out = a_file / "results"
    assert main(["watch", str(few_matrices), "--out", str(out), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "--out" in err and str(out) in err and "is a file" in err


def test_analyze_out_that_is_a_file_exits_2(few_matrices, a_file, no_compute, capsys):
    assert main(["watch", str(few_matrices), "--out", str(a_file), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert f"--out {a_file} is a file" in err
    assert a_file.read_text() == "not a folder"


@pytest.mark.skipif(UNWRITABLE is None, reason="no folder here that root cannot write")
def test_analyze_out_in_a_read_only_folder_exits_2(few_matrices, no_compute, capsys):
    out = UNWRITABLE / "spectune-results"
    assert main(["watch", str(few_matrices), "--out", str(out), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "not writable" in err and str(out) in err


def test_describe_csv_into_an_unwritable_folder_exits_2(few_matrices, a_file, no_compute,
                                                       capsys):  # fmt: skip
    target = a_file / "sub" / "desc.csv"
    assert main(["describe", str(few_matrices), "--csv", str(target)]) == 2
    err = one_line_error(capsys)
    assert "--csv" in err and "is a file" in err


def test_describe_csv_given_a_folder_exits_2(few_matrices, tmp_path, no_compute, capsys):
    assert main(["describe", str(few_matrices), "--csv", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert f"--csv {tmp_path} is a folder" in err and "out.csv" in err


@pytest.mark.skipif(UNWRITABLE is None, reason="no folder here that root cannot write")
def test_describe_csv_in_a_read_only_folder_exits_2(few_matrices, no_compute, capsys):
    assert main(["describe", str(few_matrices), "--csv", str(UNWRITABLE / "d.csv")]) == 2
    assert "not writable" in one_line_error(capsys)


def test_describe_csv_into_a_new_folder_still_works(few_matrices, tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "desc.csv"
    assert main(["describe", str(few_matrices), "--csv", str(target)]) == 0
    assert target.read_text().count("\n") == 4  # header + 3 matrices


def test_describe_csv_never_replaces_a_file_it_did_not_write(few_matrices, tmp_path, capsys):
    target = tmp_path / "mine.csv"
    target.write_text("my,own\n1,2\n")
    assert main(["describe", str(few_matrices), "--csv", str(target)]) == 2
    err = one_line_error(capsys)
    assert f"--csv {target} exists and is not a table spectune describe wrote" in err
    assert target.read_text() == "my,own\n1,2\n"
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert main(["describe", str(few_matrices), "--csv", str(link)]) == 2
    assert "is a symbolic link" in one_line_error(capsys)
    ours = tmp_path / "desc.csv"
    assert main(["describe", str(few_matrices), "--csv", str(ours)]) == 0
    assert main(["describe", str(few_matrices), "--csv", str(ours)]) == 0  # its own: replaced


def test_describe_layers_matching_nothing_exits_2_like_analyze(few_matrices, capsys):
    assert main(["describe", str(few_matrices), "--layers", "no_such_layer"]) == 2
    err = one_line_error(capsys)
    assert "--layers 'no_such_layer' selects no matrix" in err
    assert capsys.readouterr().out == ""
    assert main(["watch", str(few_matrices), "--layers", "no_such_layer", "--no-progress"]) == 2
    assert "selects no matrix" in one_line_error(capsys)


def test_report_on_a_missing_folder_says_it_is_missing(tmp_path, a_file, capsys):
    missing = tmp_path / "no_run_here"
    assert main(["report", str(missing)]) == 2
    err = one_line_error(capsys)
    assert str(missing) in err and "no such folder" in err
    assert main(["report", str(a_file)]) == 2
    assert "is a file" in one_line_error(capsys)
    assert main(["report", str(tmp_path)]) == 2  # exists, but holds no run
    assert "neither metrics.json" in one_line_error(capsys)


def test_analyze_table_shows_each_row_once_with_few_matrices(few_matrices, capsys):
    assert main(["watch", str(few_matrices), "--no-progress", "--min-evals", "4"]) == 0
    out = capsys.readouterr().out
    for i in range(3):
        assert out.count(f"layers.{i}.proj") == 1, out


def test_analyze_table_shows_5_lowest_and_5_highest_of_many(tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    path = tmp_path / "many.safetensors"
    save_file({f"m{i:02d}.weight": torch.randn(64, 32, generator=g) for i in range(12)},
              str(path))  # fmt: skip
    assert main(["watch", str(path), "--no-progress", "--min-evals", "4"]) == 0
    out = capsys.readouterr().out
    shown = [i for i in range(12) if f"m{i:02d}" in out]
    assert len(shown) == 10 and all(out.count(f"m{i:02d}") == 1 for i in shown)


def test_an_os_error_naming_a_file_is_one_line_and_debug_shows_it(monkeypatch, tmp_path,
                                                                  capsys):  # fmt: skip
    """The last net in main: an OSError about a path the user gave (no permission, disk full)
    that no check caught is one line with exit 2; --debug keeps the traceback."""
    import spectune.cli.report as report_cli

    def denied(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(report_cli, "run", denied)
    assert main(["report", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 'x'}: Permission denied" in err and "--debug" in err
    with pytest.raises(PermissionError):
        main(["--debug", "report", str(tmp_path)])

    def disk_full(args):
        raise OSError(28, "No space left on device", str(tmp_path / "y"))

    monkeypatch.setattr(report_cli, "run", disk_full)
    assert main(["report", str(tmp_path)]) == 2
    assert "No space left on device" in one_line_error(capsys)

    for bug in (OSError("no file named: a bug, not the user's input"),
                FileNotFoundError(2, "No such file or directory", "spectune/internal.json")):  # fmt: skip

        def raise_bug(args, bug=bug):
            raise bug

        monkeypatch.setattr(report_cli, "run", raise_bug)
        with pytest.raises(OSError):
            main(["report", str(tmp_path)])


# --------------------------------------------------------------------------- issue 20


def _alias_bomb(levels: int = 9) -> str:
    """A billion-laughs YAML value: nine anchors each listing the previous one nine times
    (9^9 strings once expanded) in a few hundred characters."""
    parts = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        parts.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "{" + ", ".join(parts) + "}"


def test_an_override_with_yaml_aliases_is_refused_at_once(tmp_path, capsys):
    """Issue 20, case 11: a billion-laughs value in a key=value override took 39 s and ended in
    MemoryError; it is refused before it is expanded, naming the override."""
    import time

    config = Path(__file__).parents[2] / "configs" / "lora.yaml"
    start = time.perf_counter()
    code = main(["tune", str(config), f"data.system={_alias_bomb()}", "--out",
                 str(tmp_path / "run")])  # fmt: skip
    assert code == 2 and time.perf_counter() - start < 10
    err = one_line_error(capsys)
    assert "override 'data.system={a0: &a0" in err and "anchors and aliases" in err
    assert not (tmp_path / "run").exists()
    from spectune.tuning.config import apply_overrides

    assert apply_overrides({}, ["data.system=a*b&c", "x=[1, 2]"]) == {
        "data": {"system": "a*b&c"}, "x": [1, 2]}  # fmt: skip


@pytest.mark.parametrize(("argv", "option"), [
    (["--max-evals", "0"], "--max-evals"), (["--max-evals", "4"], "--max-evals"),
    (["--min-evals", "0"], "--min-evals"),
])  # fmt: skip
def test_analyze_refuses_evals_limits_that_skip_everything(few_matrices, no_compute, capsys,
                                                          argv, option):  # fmt: skip
    """Issue 20, case 12: --max-evals 0 was accepted (every matrix skipped)."""
    assert main(["watch", str(few_matrices), *argv, "--no-progress"]) == 2
    assert one_line_error(capsys).startswith(f"spectune: error: {option} must be >= ")


@pytest.mark.parametrize(("argv", "option"), [
    (["--z", "nan"], "--z"), (["--z", "inf"], "--z"), (["--z", "0"], "--z"),
    (["--min-drop", "nan"], "--min-drop"), (["--min-drop", "-1"], "--min-drop"),
])  # fmt: skip
def test_compare_refuses_a_threshold_that_is_not_a_finite_number(few_matrices, no_compute,
                                                                capsys, argv, option):  # fmt: skip
    """Issue 20, case 12: --z nan was accepted."""
    assert main(["compare", str(few_matrices), str(few_matrices), *argv, "--no-progress"]) == 2
    assert one_line_error(capsys).startswith(f"spectune: error: {option} must be a finite number")


@pytest.mark.parametrize("n", ["0", "-3"])
def test_augment_n_seeds_below_1_names_the_option(tmp_path, capsys, n):
    """Issue 20, case 12: the message named n_train, a setting augment has not."""
    out = tmp_path / "aug.jsonl"
    assert main(["augment", "--out", str(out), "--n-seeds", n, "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "--n-seeds must be >= 1" in err and "n_train" not in err
    assert list(tmp_path.iterdir()) == []


class _Writes:
    """A stream that records each write call (as an unbuffered ``python -u`` stderr does)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        self.calls.append("<flush>")


def test_each_rank_writes_its_error_line_whole_and_names_itself(monkeypatch, capsys):
    """Issue 20, case 12: under torchrun the two ranks' error lines came out glued together
    (print writes the text and the newline apart): one write of the whole line, flushed, and
    each rank's line says which rank it is."""
    from spectune.tuning.scale.distributed import error_line, write_line

    stream = _Writes()
    write_line(error_line("bad input"), stream)
    assert stream.calls == ["spectune: error: bad input\n", "<flush>"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(["describe", "nothing-here"]) == 2
        err = one_line_error(capsys)
        assert err.startswith(f"spectune: error: (rank {rank} of 2) spectune describe runs in one")
        assert err.endswith("\n")


def test_two_processes_error_lines_stay_apart(tmp_path):
    """Two real processes (ranks 0 and 1 of 2) sharing one unbuffered stderr pipe."""
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[2] / "src")
    code = ("import sys\nfrom spectune.cli.main import main\n"
            "sys.exit(main(['describe', 'nothing-here']))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": src, "PYTHONUNBUFFERED": "1", "WORLD_SIZE": "2"}
    read, write = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**env, "RANK": str(r)},
                              stderr=write, stdout=subprocess.DEVNULL) for r in (0, 1)]  # fmt: skip
    os.close(write)
    with os.fdopen(read) as fh:
        text = fh.read()
    assert [p.wait(timeout=120) for p in procs] == [2, 2]
    lines = text.splitlines()
    assert len(lines) == 2 and text.endswith("\n"), text
    assert sorted(line[:32] for line in lines) == [
        "spectune: error: (rank 0 of 2) s", "spectune: error: (rank 1 of 2) s"]  # fmt: skip
