"""Fine-tuning: the run config, the methods, the recipe, sweeps, the demo, data and judging.

- :mod:`spectune.finetune.config`: :class:`TuneConfig` (YAML + ``key=value`` overrides), with
  each method's and objective's settings in its own section.
- :mod:`spectune.finetune.methods`: the method registry and one module per method (lora,
  rslora, dora, qlora, qdora, pissa, olora, shira, frog, full); nothing else knows their names.
- :mod:`spectune.finetune.objectives`: the objective registry (sft; its data, loss, metrics).
- :mod:`spectune.finetune.recipe`: :func:`tune`, the run in named phases: set up, judge the
  base, build, train (transformers Trainer: :mod:`.trainer`), save, judge, analyze, report.
- :mod:`spectune.finetune.results`: :class:`RunMetrics`, the typed ``metrics.json``.
- :mod:`spectune.finetune.sweep`: :func:`sweep` over a grid, and the comparison folder.
- :mod:`spectune.finetune.demo`: :func:`demo`, the methods at matched budgets.
- :mod:`spectune.finetune.study`: :func:`study`, methods at their own learning rates over
  seeds, with intervals (:mod:`.stats`) and a recommendation (:mod:`.advice`).
- :mod:`spectune.finetune.search`: :func:`search`, a multi-objective Optuna search over run
  settings and its Pareto set, resumable from its SQLite storage.
- :mod:`spectune.finetune.backends`: where the runs of a sweep, study or search go: here, or
  as Ray Tune trials (:class:`Backend`).
- :mod:`spectune.finetune.runfolder`: the results-folder rules (refuse, resume, overwrite).

- :mod:`spectune.finetune.data`: Dolly JSONL / Alpaca JSON loading, chat-template prompts,
  tokenization with labels on response tokens only, truncation statistics, the padding
  collator.
- :mod:`spectune.finetune.tasks`: the default task set spectune writes itself (short
  instructions with exact answers, deterministic from a seed) and the answer checker.
- :mod:`spectune.finetune.evaluate`: held-out exact-match accuracy, held-out loss, perplexity
  on a fixed slice of ``pydoc_data.topics`` (forgetting), generation latency. Read its warning
  about bitsandbytes 4-bit models before evaluating a QLoRA model.

The names below are loaded on first use, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    # the pipeline
    "TuneConfig": "spectune.finetune.config",
    "load_config": "spectune.finetune.config",
    "tune": "spectune.finetune.recipe",
    "TuneResult": "spectune.finetune.recipe",
    "RunMetrics": "spectune.finetune.results",
    "register_method": "spectune.finetune.methods",
    "methods": "spectune.finetune.methods",
    "register_objective": "spectune.finetune.objectives",
    "objectives": "spectune.finetune.objectives",
    "sweep": "spectune.finetune.sweep",
    "demo": "spectune.finetune.demo",
    "study": "spectune.finetune.study",
    "StudyResult": "spectune.finetune.study",
    "search": "spectune.finetune.search",
    "SearchResult": "spectune.finetune.search",
    "Backend": "spectune.finetune.backends",
    "advise": "spectune.finetune.advice",
    "Constraints": "spectune.finetune.advice",
    # data
    "IGNORE_INDEX": "spectune.finetune.data",
    "InstructionCollator": "spectune.finetune.data",
    "InstructionExample": "spectune.finetune.data",
    "TokenizeStats": "spectune.finetune.data",
    "build_prompt": "spectune.finetune.data",
    "load_instructions": "spectune.finetune.data",
    "pad_token_id": "spectune.finetune.data",
    "tokenize_examples": "spectune.finetune.data",
    # tasks
    "CATEGORIES": "spectune.finetune.tasks",
    "TaskSetFiles": "spectune.finetune.tasks",
    "answers_match": "spectune.finetune.tasks",
    "generate_task_set": "spectune.finetune.tasks",
    "normalize_answer": "spectune.finetune.tasks",
    "write_task_set": "spectune.finetune.tasks",
    # evaluate
    "AccuracyResult": "spectune.finetune.evaluate",
    "LatencyResult": "spectune.finetune.evaluate",
    "LossResult": "spectune.finetune.evaluate",
    "PerplexityResult": "spectune.finetune.evaluate",
    "exact_match": "spectune.finetune.evaluate",
    "general_text": "spectune.finetune.evaluate",
    "generation_latency": "spectune.finetune.evaluate",
    "greedy_generate": "spectune.finetune.evaluate",
    "has_4bit_weights": "spectune.finetune.evaluate",
    "unpack_4bit_cpu_weights": "spectune.finetune.evaluate",
    "heldout_loss": "spectune.finetune.evaluate",
    "perplexity": "spectune.finetune.evaluate",
    "judge": "spectune.finetune.evaluate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spectune.finetune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
