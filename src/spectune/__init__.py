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
  :func:`sweep`, :func:`study`, :func:`search`, :func:`demo`, and :func:`advise` on the
  :func:`load_candidates` of a results folder.

Everything else lives in its package (``spectune.watch``, ``spectune.tune``...) and is not part
of this list. The names are loaded on first use (PEP 562), so ``import spectune`` and the CLI's
start-up stay fast: torch, transformers and peft are imported only when a function needs them.

``tune``, ``study`` and ``judge`` are both verbs and subpackages. Python binds a subpackage to
its parent's attribute whenever it is imported, so ``st.tune`` is the package
``spectune.tune``, made callable: ``st.tune(config)`` calls the function
(:data:`_VERB_PACKAGES`), and ``spectune.tune.recipe`` stays reachable by attribute (as
``mock.patch`` and ``monkeypatch`` walk it).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
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
    "TuneConfig": "spectune.tune.config",
    "load_config": "spectune.tune.config",
    "TuneResult": "spectune.tune.recipe",
    "RunMetrics": "spectune.results.metrics",
    # tune: the plug-ins
    "Method": "spectune.tune.methods",
    "register_method": "spectune.tune.methods",
    "unregister_method": "spectune.tune.methods",
    "methods": "spectune.tune.methods",
    "Objective": "spectune.tune.objectives",
    "register_objective": "spectune.tune.objectives",
    "unregister_objective": "spectune.tune.objectives",
    "objectives": "spectune.tune.objectives",
    # tune: FROG
    "FrogConfig": "spectune.tune.methods.frog",
    "plan_frog": "spectune.tune.methods.frog",
    "apply_frog": "spectune.tune.methods.frog",
    "save_frog": "spectune.tune.methods.frog",
    "load_frog": "spectune.tune.methods.frog",
    "merge_frog": "spectune.tune.methods.frog",
    "relevance": "spectune.tune.methods.frog",
    # judge and study
    "sweep": "spectune.study.sweep",
    "demo": "spectune.study.demo",
    "search": "spectune.study.search",
    "advise": "spectune.study.advice",
    "load_candidates": "spectune.study.advice",
    "Constraints": "spectune.study.advice",
}

#: verb -> the module of the function it calls; each verb is also a subpackage of spectune
_VERB_PACKAGES: dict[str, str] = {
    "tune": "spectune.tune.recipe",
    "study": "spectune.study.study",
    "judge": "spectune.judge.evaluate",
}

__all__ = ["__version__", *_LAZY, *_VERB_PACKAGES]


class _VerbPackage(types.ModuleType):
    """A subpackage that is also a verb: calling it calls the function of the same name."""

    def _verb(self) -> Any:
        name = self.__name__.rpartition(".")[2]
        return getattr(importlib.import_module(_VERB_PACKAGES[name]), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._verb()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._verb())


class _Spectune(types.ModuleType):
    """The ``spectune`` module: binding a verb's subpackage to it makes the package callable."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _VERB_PACKAGES and type(value) is types.ModuleType:
            value.__class__ = _VerbPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Spectune


def __getattr__(name: str) -> Any:
    if name in _VERB_PACKAGES:
        return importlib.import_module(f"{__name__}.{name}")  # bound (callable) on import
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spectune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
