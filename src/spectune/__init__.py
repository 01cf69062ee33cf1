"""spectune: tune language models parameter-efficiently, watch their weight spectra, judge the result.

The public API is loaded lazily (PEP 562) so that ``import spectune`` and the CLI's start-up
stay fast: torch, transformers and peft are imported only when a function needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "SpectuneError": "spectune.errors",
    "load_default_model": "spectune.models.loading",
    "default_model_dir": "spectune.models.loading",
    "resolve_model_dir": "spectune.models.loading",
    "analyze": "spectune.watch",
    "describe": "spectune.watch",
    "summarize": "spectune.watch",
    "spectrum": "spectune.watch",
    "fit_powerlaw": "spectune.watch",
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
    "open_source": "spectune.weights",
    "WeightSource": "spectune.weights",
    "TensorInfo": "spectune.weights",
    "LoraPair": "spectune.weights",
    "normalize_module_name": "spectune.weights",
    # tune: FROG
    "FrogConfig": "spectune.tune.methods.frog",
    "plan_frog": "spectune.tune.methods.frog",
    "apply_frog": "spectune.tune.methods.frog",
    "save_frog": "spectune.tune.methods.frog",
    "load_frog": "spectune.tune.methods.frog",
    "merge_frog": "spectune.tune.methods.frog",
    "relevance": "spectune.tune.methods.frog",
    # tune and judge: the pipeline
    "TuneConfig": "spectune.tune.config",
    "load_config": "spectune.tune.config",
    "tune": "spectune.tune.recipe",
    "RunMetrics": "spectune.results.metrics",
    # plug-ins: methods and objectives
    "Method": "spectune.tune.methods",
    "register_method": "spectune.tune.methods",
    "unregister_method": "spectune.tune.methods",
    "methods": "spectune.tune.methods",
    "Objective": "spectune.tune.objectives",
    "register_objective": "spectune.tune.objectives",
    "unregister_objective": "spectune.tune.objectives",
    "objectives": "spectune.tune.objectives",
    "sweep": "spectune.study.sweep",
    "demo": "spectune.study.demo",
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
