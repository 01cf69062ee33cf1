"""``import spectune``: the public API resolves, stays lazy, and its verbs stay callable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import spectune

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves():
    unresolved = [name for name in spectune.__all__ if getattr(spectune, name, None) is None]
    assert unresolved == []
    assert len(spectune.__all__) == len(set(spectune.__all__))
    assert set(spectune.__all__) <= set(dir(spectune))


def test_the_verbs_users_call_are_exported():
    for name in ("tune", "TuneConfig", "load_config", "study", "search", "advise", "sweep",
                 "demo", "judge", "analyze", "describe", "summarize", "compare", "fit_powerlaw",
                 "Method", "register_method", "Objective", "register_objective", "methods",
                 "objectives", "plan_frog", "open_source", "WeightSource"):  # fmt: skip
        assert name in spectune.__all__, name


def test_internals_are_not_exported():
    for name in ("resolve_model_dir", "normalize_module_name"):
        assert name not in spectune.__all__


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def test_import_spectune_imports_no_torch():
    code = ("import sys, spectune\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'numpy', 'pandas')"
            " if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")  # fmt: skip
    assert "HEAVY []" in _run(code)


def test_the_verbs_stay_functions_after_every_package_is_imported():
    """Python binds an imported subpackage to its parent's attribute: a package named like a
    verb (``spectune.tune``) would replace ``st.tune`` once ``st.load_config`` imported it. No
    subpackage or top-level module is named like a public name."""
    import pkgutil

    children = {m.name for m in pkgutil.iter_modules(spectune.__path__)}
    assert children & set(spectune.__all__) == set()
    code = ("import importlib, inspect, pkgutil, sys\n"
            "import spectune as st\n"
            "config = st.load_config('configs/lora.yaml')\n"
            "for m in pkgutil.iter_modules(st.__path__):\n"
            "    if m.name != 'cli':\n"
            "        importlib.import_module('spectune.' + m.name)\n"
            "for verb in ('tune', 'study', 'judge', 'search', 'sweep', 'advise', 'demo'):\n"
            "    assert inspect.isfunction(getattr(st, verb)), verb\n"
            "print('PARAMS', list(inspect.signature(st.tune).parameters)[:2])\n")  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert "PARAMS ['config', 'out']" in out
