"""FROG inside the ``transformers`` Trainer: the guided-noise step follows the optimizer.

Imports ``transformers`` at module level (the callback subclasses ``TrainerCallback``); the
rest of :mod:`spectune.tuning.methods.frog` does not need it.
"""

from __future__ import annotations

from transformers import TrainerCallback

from spectune.tuning.methods.frog.model import set_frog_step


class FrogNoiseStep(TrainerCallback):
    """Guided noise follows the optimizer step: t = global_step x accumulation steps at the
    start of each step, so a resumed run draws the noise it would have drawn."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        set_frog_step(model, state.global_step * args.gradient_accumulation_steps)


__all__ = ["FrogNoiseStep"]
