"""Tune: one fine-tuning run, from a config to an adapter and its judged metrics.

- :mod:`.config`: :class:`TuneConfig` (YAML + ``key=value`` overrides), with each method's and
  objective's settings in its own section.
- :mod:`.methods`: the method registry and a module or folder per method (lora, rslora, dora,
  qlora, qdora, pissa, olora, shira, frog, full); nothing else knows their names.
- :mod:`.objectives`: the objective registry (sft, distill, lipo; their data, loss, metrics).
- :mod:`.recipe`: :func:`tune`, the run in named phases: set up, judge the base, build, train
  (:mod:`.trainer`, the transformers Trainer), save, judge, watch, report; :mod:`.run` the
  state they fill in, :mod:`.checks` what a run refuses before it starts, :mod:`.judging` its
  judge settings and cached base judgment, :mod:`.watching` its spectra during and after
  training, :mod:`.collect` its metrics, figures and files.
- :mod:`.pins`: ``inputs.json``, the inputs a run was started with, checked on ``--resume``.
- :mod:`.scale`: more than one process, and the memory plan.

The names below are loaded on first use, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "TuneConfig": "spectune.tune.config",
    "load_config": "spectune.tune.config",
    "tune": "spectune.tune.recipe",
    "TuneResult": "spectune.tune.run",
    "register_method": "spectune.tune.methods",
    "methods": "spectune.tune.methods",
    "register_objective": "spectune.tune.objectives",
    "objectives": "spectune.tune.objectives",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spectune.tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
