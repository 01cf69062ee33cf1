"""Tuning: one fine-tuning run, from a config to an adapter and its judged metrics.

- :mod:`.config`: :class:`TuneConfig`, read from YAML with ``key=value`` overrides and checked
  field by field; each method's and objective's settings sit in their own section, the run's
  own ``data:`` and ``eval:`` sections are :mod:`.sections`.
- :mod:`.registry`: the one registry mechanism behind methods and objectives (plug-ins by
  name, the sections each reads).
- :mod:`.methods`: a module or folder per method (lora, rslora, dora, qlora, qdora, pissa,
  olora, shira, frog, full) and their registry; nothing else knows their names.
- :mod:`.objectives`: a module or folder per objective (sft, distill, lipo: data, loss,
  metrics) and their registry.
- :mod:`.recipe`: :func:`tune`, the run in named phases: set up, judge the base, build, train
  (:mod:`.trainer`: the transformers Trainer with the objective's loss, the logs and
  callbacks), save, judge, watch, report; :mod:`.run` the
  state they fill in, :mod:`.checks` what a run refuses before it starts, :mod:`.judging` its
  judge settings and cached base judgment, :mod:`.watching` its spectra during and after
  training, :mod:`.collect` its metrics, figures and files.
- :mod:`.pins`: ``inputs.json``, the inputs a run was started with, checked on ``--resume``.
- :mod:`.export`: a finished run's merged model as one GGUF file (``spectune export``).
- :mod:`.scale`: more than one process (torchrun, accelerate), and the memory estimate.

The names below are loaded on first use, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "TuneConfig": "spectune.tuning.config",
    "load_config": "spectune.tuning.config",
    "tune": "spectune.tuning.recipe",
    "TuneResult": "spectune.tuning.run",
    "register_method": "spectune.tuning.methods",
    "methods": "spectune.tuning.methods",
    "register_objective": "spectune.tuning.objectives",
    "objectives": "spectune.tuning.objectives",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spectune.tuning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
