"""The training objectives: one module each, registered by name.

=========  ================================================================  ================
objective  what the model learns from                                        module
=========  ================================================================  ================
sft        supervised fine-tuning: NLL of the reference response tokens      sft.py
distill    the teacher's next-token distributions (forward/reverse KL, JSD)  distill/ (folder)
lipo       ranked lists of responses (LiPO-lambda; DPO, softmax baselines)   lipo/ (folder)
=========  ================================================================  ================

An objective with more than one concern is a folder: its section, data, loss, collator and
the objective itself (with its registration) in ``objective.py``, the module the registry
imports.

An objective is an instance of :class:`~spectune.tuning.objectives.base.Objective`
registered with :func:`register_objective`; ``objective:`` in the config picks it, and the
recipe knows no objective by name. It brings its own data format (``load_data``), its own
Trainer loss (``compute_loss``) and its own judged metrics (``judge``).
"""

from __future__ import annotations

from spectune.tuning.objectives.base import JudgeContext, Objective, RunData, TrainData
from spectune.tuning.registry import Registry

BUILTIN_MODULES = (
    "spectune.tuning.objectives.sft",
    "spectune.tuning.objectives.distill.objective",
    "spectune.tuning.objectives.lipo.objective",
)

OBJECTIVES = Registry(
    "objective",
    Objective,
    BUILTIN_MODULES,
    (
        "model",
        "method",
        "objective",
        "seed",
        "output_dir",
        "target_modules",
        "exclude_modules",
        "data",
        "eval",
        "train",
    ),
)


def register_objective(name: str, spec: Objective) -> Objective:
    """Register a training objective under ``name``.

    Raises:
        SpectuneError: the name is taken, or ``spec`` is not an :class:`Objective`.
    """
    return OBJECTIVES.register(name, spec)


def unregister_objective(name: str) -> None:
    """Remove a registered objective."""
    OBJECTIVES.unregister(name)


def get_objective(name: str) -> Objective:
    """The objective called ``name``; an unknown name lists the registered ones."""
    return OBJECTIVES.get(name)


def objectives() -> dict[str, str]:
    """Registered objectives: name -> one-line description."""
    return OBJECTIVES.describe()


__all__ = [
    "OBJECTIVES",
    "JudgeContext",
    "Objective",
    "RunData",
    "TrainData",
    "get_objective",
    "objectives",
    "register_objective",
    "unregister_objective",
]
