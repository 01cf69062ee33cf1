"""spectune: tune language models parameter-efficiently, watch their weight spectra, judge the result.

The public API, what a user calls (``import spectune as st``):

- tune: ``st.tune(st.load_config(path, overrides), out=...)`` -> :class:`TuneResult` (its
  ``metrics`` a :class:`RunMetrics`); the plug-ins: :class:`Method` / :func:`register_method`
  / :func:`methods`, :class:`Objective` / :func:`register_objective` / :func:`objectives`;
  FROG's own functions (:func:`plan_frog`, :func:`apply_frog`, ...).
- watch: :func:`analyze`, :func:`describe`, :func:`summarize`, :func:`spectrum`,
  :func:`compare`, the fits (:func:`fit_powerlaw`, :func:`fit_truncated_powerlaw`,
  :func:`compare_pl_tpl`), intruder dimensions; the weights they read: :func:`open_source`.
- judge and study: :func:`judge` (a model's accuracy, held-out loss, perplexity, latency),
  :func:`judge_model` (a model or adapter that exists, judged as ``tune`` judges, into a folder),
  :func:`sweep`, :func:`study`, :func:`search`, :func:`demo`, and :func:`advise` on the
  :func:`load_candidates` of a results folder.

Everything else lives in its package (``spectune.watch``, ``spectune.tuning``...) and is not part
of this list. The names are loaded on first use (PEP 562), so ``import spectune`` and the CLI's
start-up stay fast: torch, transformers and peft are imported only when a function needs them.

The verbs are functions, and no subpackage shares a name with one: Python binds a subpackage to
its parent's attribute when it is imported, so a package called ``tune`` would replace
``st.tune`` once any of its modules loads (``st.load_config`` would break ``st.tune``). Hence
the packages ``tuning`` (one run), ``judging`` and ``studies``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "SpectuneError": "spectune.errors",
    # the embedded default model
    "load_default_model": "spectune.models.loading",
    "default_model_dir": "spectune.models.loading",
    # watch
    "analyze": "spectune.watch",
    "describe": "spectune.watch",
    "summarize": "spectune.watch",
    "spectrum": "spectune.watch",
    "fit_powerlaw": "spectune.watch",
    "PowerLawFit": "spectune.watch",
    "fit_truncated_powerlaw": "spectune.watch",
    "TruncatedPowerLawFit": "spectune.watch",
    "compare_pl_tpl": "spectune.watch",
    "FitComparison": "spectune.watch",
    "compare": "spectune.watch",
    "compare_summary": "spectune.watch",
    "correlation_flow": "spectune.watch",
    "intruder_dimensions": "spectune.watch",
    "lora_intruder_dimensions": "spectune.watch",
    "IntruderResult": "spectune.watch",
    # the weights watch reads
    "open_source": "spectune.weights",
    "WeightSource": "spectune.weights",
    "TensorInfo": "spectune.weights",
    "LoraPair": "spectune.weights",
    # tune
    "TuneConfig": "spectune.tuning.config",
    "load_config": "spectune.tuning.config",
    "tune": "spectune.tuning.recipe",
    "TuneResult": "spectune.tuning.run",
    "RunMetrics": "spectune.results.metrics",
    # tune: the plug-ins
    "Method": "spectune.tuning.methods",
    "register_method": "spectune.tuning.methods",
    "unregister_method": "spectune.tuning.methods",
    "methods": "spectune.tuning.methods",
    "Objective": "spectune.tuning.objectives",
    "register_objective": "spectune.tuning.objectives",
    "unregister_objective": "spectune.tuning.objectives",
    "objectives": "spectune.tuning.objectives",
    # tune: FROG
    "FrogConfig": "spectune.tuning.methods.frog",
    "plan_frog": "spectune.tuning.methods.frog",
    "apply_frog": "spectune.tuning.methods.frog",
    "save_frog": "spectune.tuning.methods.frog",
    "load_frog": "spectune.tuning.methods.frog",
    "merge_frog": "spectune.tuning.methods.frog",
    "relevance": "spectune.tuning.methods.frog",
    # judge and study
    "judge": "spectune.judging.all",
    "judge_model": "spectune.studies.judge_existing",
    "sweep": "spectune.studies.sweep",
    "study": "spectune.studies.study",
    "demo": "spectune.studies.demo",
    "search": "spectune.studies.search",
    "advise": "spectune.studies.advice",
    "load_candidates": "spectune.studies.advice",
    "Constraints": "spectune.studies.advice",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spectune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
