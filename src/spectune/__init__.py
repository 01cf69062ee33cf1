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
    "load_default_model": "spectune.models",
    "default_model_dir": "spectune.models",
    "resolve_model_dir": "spectune.models",
    "analyze": "spectune.spectral",
    "describe": "spectune.spectral",
    "summarize": "spectune.spectral",
    "spectrum": "spectune.spectral",
    "fit_powerlaw": "spectune.spectral",
    "fit_truncated_powerlaw": "spectune.spectral",
    "TruncatedPowerLawFit": "spectune.spectral",
    "compare_pl_tpl": "spectune.spectral",
    "FitComparison": "spectune.spectral",
    "compare": "spectune.spectral",
    "compare_summary": "spectune.spectral",
    "correlation_flow": "spectune.spectral",
    "intruder_dimensions": "spectune.spectral",
    "lora_intruder_dimensions": "spectune.spectral",
    "IntruderResult": "spectune.spectral",
    "open_source": "spectune.weights",
    "WeightSource": "spectune.weights",
    "TensorInfo": "spectune.weights",
    "LoraPair": "spectune.weights",
    "normalize_module_name": "spectune.weights",
    # tune: FROG
    "FrogConfig": "spectune.frog",
    "plan_frog": "spectune.frog",
    "apply_frog": "spectune.frog",
    "save_frog": "spectune.frog",
    "load_frog": "spectune.frog",
    "merge_frog": "spectune.frog",
    "relevance": "spectune.frog",
    # tune and judge: the pipeline
    "TuneConfig": "spectune.finetune.config",
    "load_config": "spectune.finetune.config",
    "tune": "spectune.finetune.recipe",
    "RunMetrics": "spectune.finetune.results",
    # plug-ins: methods and objectives
    "Method": "spectune.finetune.methods",
    "register_method": "spectune.finetune.methods",
    "unregister_method": "spectune.finetune.methods",
    "methods": "spectune.finetune.methods",
    "Objective": "spectune.finetune.objectives",
    "register_objective": "spectune.finetune.objectives",
    "unregister_objective": "spectune.finetune.objectives",
    "objectives": "spectune.finetune.objectives",
    "sweep": "spectune.finetune.sweep",
    "demo": "spectune.finetune.demo",
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
