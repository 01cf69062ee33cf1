"""``import spectune``: the public API resolves, stays lazy, and its verbs stay callable."""

from __future__ import annotations

import subprocess
import sys

import spectune


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


def test_verbs_that_are_also_packages_stay_callable_after_their_package_is_imported():
    """``st.load_config`` imports ``spectune.tune``, which Python binds to ``st.tune``: the
    package is the verb (callable), and its modules stay reachable by attribute."""
    code = ("import inspect, sys\n"
            "import spectune as st\n"
            "import spectune.tune, spectune.study, spectune.judge\n"
            "for verb in ('tune', 'study', 'judge'):\n"
            "    package = getattr(st, verb)\n"
            "    assert package is sys.modules['spectune.' + verb], verb\n"
            "    assert callable(package), verb\n"
            "print('TORCH', 'torch' in sys.modules)\n"
            "from spectune.tune import recipe\n"
            "assert st.tune.recipe is recipe and st.tune.tune is recipe.tune\n"
            "print('PARAMS', list(inspect.signature(st.tune).parameters)[:2])\n")  # fmt: skip
    out = _run(code)
    assert "TORCH False" in out  # the verbs load their function only when called
    assert "PARAMS ['config', 'out']" in out


def test_calling_the_tune_package_calls_tune(monkeypatch):
    import spectune.tune.recipe

    calls = []
    monkeypatch.setattr(spectune.tune.recipe, "tune", lambda *a, **k: calls.append((a, k)))
    spectune.tune("config", out="x")
    assert calls == [(("config",), {"out": "x"})]
