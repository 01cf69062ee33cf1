"""Atomic writes and the CLI's start-up."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from spectune._io import atomic_path, publish_dir, write_json
from spectune.cli.main import COMMANDS, main


def test_atomic_path_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_write_json_nan_becomes_null_and_mode_follows_umask(tmp_path):
    import numpy as np

    write_json(tmp_path / "x.json", {"a": math.nan, "b": np.float32(1.5), "c": [np.int64(3)]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": 1.5, "c": [3]}
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_publish_dir_replaces_whole_or_nothing(tmp_path):
    final = tmp_path / "out"
    publish_dir(lambda d: (d / "one").write_text("1"), final)
    assert sorted(os.listdir(final)) == ["one"]

    def broken(d):
        (d / "two").write_text("2")
        raise OSError("disk full")

    with pytest.raises(OSError):
        publish_dir(broken, final)
    assert sorted(os.listdir(final)) == ["one"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
    publish_dir(lambda d: (d / "two").write_text("2"), final)
    assert sorted(os.listdir(final)) == ["two"]


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys\n"
        "from spectune.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'numpy', 'pandas', 'datasets', 'mlflow',\n"
        "'lm_eval', 'tensorboard', 'gguf') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY []" in out
    for name in COMMANDS:
        assert name in out


def test_version_and_no_command(capsys):
    from spectune import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 2


def test_progress_is_one_style_tqdm_on_stderr_and_silent_when_disabled(capsys):
    """analyze's bar is drawn by tqdm like the Trainer's and judging's, not by rich."""
    from spectune._progress import progress_bar, track

    assert list(track(iter(range(3)), 3, "spectra")) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.search(r"spectra: +\d+%\|.*\| \d/3 \[", captured.err)  # tqdm's own layout
    assert list(track(range(3), 3, "quiet", enabled=False)) == [0, 1, 2]
    with progress_bar(2, "hidden", enabled=False) as bar:
        bar.update(2)
    assert capsys.readouterr().err == ""
    with progress_bar(4, "matrices", unit="matrix") as bar:
        bar.update(4)
    assert re.search(r"matrices: +\d+%\|.*\| \d/4 \[.*matrix/s", capsys.readouterr().err)


def test_analyze_progress_uses_the_shared_tqdm_bar(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({f"m{i}.weight": torch.randn(48, 24) for i in range(3)}, str(path))
    assert main(["watch", str(path), "--min-evals", "4"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"spectra: +\d+%\|.*\| \d/3 \[", err)


def test_plain_pytest_collects_tests_importing_shared_helpers(tmp_path):
    """``pytest`` (not only ``python -m pytest``), run from another folder, imports the shared
    helpers that test modules take from ``tests.<package>.conftest``."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pytest_bin = Path(sys.executable).with_name("pytest")
    if not pytest_bin.exists():
        pytest.skip(f"no pytest script beside {sys.executable}")
    users = [str(p) for p in sorted(root.glob("tests/**/test_*.py"))
             if "from tests." in p.read_text(encoding="utf-8")]  # fmt: skip
    if not users:
        pytest.skip("no test module imports from tests.<package>")
    proc = subprocess.run(
        [str(pytest_bin), "--collect-only", "-q", "-p", "no:cacheprovider", *users],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ModuleNotFoundError" not in proc.stdout
