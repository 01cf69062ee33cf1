"""The tree keeps the shape the README's layout section describes: every package sits in one layer
of the import-linter contract (pyproject.toml), the contract holds, and no package, file or
function grows back into the house the reorganisation took apart (issue 21's limits)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "spectune"

#: the limits: a top-level package's share of the lines, lines of a file, of a function
MAX_PACKAGE_SHARE = 0.35
MAX_FILE_LINES = 800
MAX_LONG_FILES = 3
MAX_FUNCTION_LINES = 120


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _layer_modules() -> set[str]:
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    names: set[str] = set()
    for layer in layers["layers"]:
        names.update(part.strip() for part in layer.replace(":", "|").split("|"))
    return names


def _top_level() -> set[str]:
    """spectune's subpackages and top-level modules (``spectune.x``), ``__init__`` aside."""
    names = {f"spectune.{p.name}" for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    names |= {f"spectune.{p.stem}" for p in SRC.glob("*.py") if p.stem != "__init__"}
    return names


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_every_package_and_module_has_a_layer():
    assert _top_level() - _layer_modules() == set(), "add it to [tool.importlinter] layers"
    assert _layer_modules() - _top_level() == set(), "the contract names a module that is gone"


def test_the_plugin_contract_names_every_builtin_method():
    (forbidden,) = [c for c in _contracts() if c["type"] == "forbidden"]
    methods = SRC / "tuning" / "methods"
    builtins = {p.stem for p in methods.glob("*.py") if p.stem not in {"__init__", "base"}}
    builtins |= {p.name for p in methods.iterdir() if (p / "__init__.py").is_file()}
    named = {m.rsplit(".", 1)[1] for m in forbidden["forbidden_modules"]}
    assert builtins == named


def test_the_import_contracts_hold():
    """`lint-imports` (import-linter, also run by `make lint` and `make test`) keeps them."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        from tests.conftest import require

        require("importlinter", "the layers contract's checker")
        pytest.skip("lint-imports is not on the path")
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_no_package_holds_more_than_its_share():
    files = list(SRC.rglob("*.py"))
    total = sum(_lines(p) for p in files)
    by_package: dict[str, int] = {}
    for p in files:
        top = p.relative_to(SRC).parts[0]
        by_package[top] = by_package.get(top, 0) + _lines(p)
    shares = {k: round(v / total, 3) for k, v in by_package.items()}
    assert max(shares.values()) <= MAX_PACKAGE_SHARE, shares


def test_few_long_files_and_no_long_functions():
    long_files = sorted(
        (_lines(p), str(p.relative_to(SRC)))
        for p in SRC.rglob("*.py")
        if _lines(p) > MAX_FILE_LINES
    )
    assert len(long_files) <= MAX_LONG_FILES, long_files
    long_functions = []
    for p in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({n})")
    assert long_functions == []
