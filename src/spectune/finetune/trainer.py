"""The ``transformers`` Trainer as the recipe uses it: the objective's loss, the method's
checkpoints, and the callbacks every run gets.

Imports ``transformers`` at module level; the recipe imports this module only when it trains.

- :class:`SpectuneTrainer`: ``compute_loss`` is the objective's
  (:meth:`~spectune.finetune.objectives.base.Objective.compute_loss`); checkpoints are written
  and restored by the method when it has its own format (FROG: indices and values only); it
  counts the real tokens it trains on (tokens/s) in the main process, so data loader workers
  (``train.dataloader_num_workers``), which collate batches in other processes, count too.
- :class:`LossLog`: ``train_log.csv`` rewritten atomically at every log; ``elapsed_s`` counts
  training time across resumes.
- :class:`GradientCheck`: stops at the first optimizer step if no trainable parameter got a
  gradient (a 4-bit model whose weights bitsandbytes repacked for CPU inference).
- :class:`FiniteLoss`: stops a run whose loss became NaN or infinite, saying what to change.
- :class:`RecordFiles`: records the checkpoint files in the run folder's marker.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from spectune._io import write_text
from spectune.errors import SpectuneError

LOG_COLUMNS = ["step", "epoch", "loss", "learning_rate", "grad_norm", "elapsed_s"]


class SpectuneTrainer(Trainer):
    """Trainer whose loss comes from the run's objective and whose checkpoints come from the
    run's method.

    Args:
        objective: the run's :class:`~spectune.finetune.objectives.base.Objective`.
        method: the run's :class:`~spectune.finetune.methods.base.Method`.
        objective_state: what the objective's ``prepare`` returned (a teacher...).
        **kwargs: ``transformers.Trainer`` arguments.
    """

    def __init__(self, *args: Any, objective: Any = None, method: Any = None,
                 objective_state: Any = None, **kwargs: Any):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.method = method
        self.objective_state = objective_state
        #: real (attention-mask) tokens of the batches trained on in this session
        self.tokens = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
        if mask is not None:
            self.tokens += int(mask.sum())
        return super().training_step(model, inputs, num_items_in_batch)

    def model_loss(self, model, inputs, *, return_outputs=False, num_items_in_batch=None):
        """The Trainer's own loss (the model's ``loss`` output)."""
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.objective is None:
            return self.model_loss(model, inputs, return_outputs=return_outputs,
                                   num_items_in_batch=num_items_in_batch)  # fmt: skip
        return self.objective.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                           num_items_in_batch=num_items_in_batch)  # fmt: skip

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        folder = Path(output_dir or self.args.output_dir)
        if self.method is not None:
            folder.mkdir(parents=True, exist_ok=True)
            if self.method.save_checkpoint(self.model, folder):
                return None
        return super()._save(output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        model = model if model is not None else self.model
        if self.method is not None and self.method.load_checkpoint(
            model, Path(resume_from_checkpoint)
        ):
            return None
        return super()._load_from_checkpoint(resume_from_checkpoint, model)


class LossLog(TrainerCallback):
    """Rewrites ``train_log.csv`` (atomically) at every log; ``elapsed_s`` counts training
    time across resumes (``offset`` is the time already done when this session started).

    Args:
        path: the CSV file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.perf_counter()
        self.offset = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        done = [e.get("elapsed_s") for e in state.log_history if "elapsed_s" in e]
        self.offset = float(done[-1]) if done else 0.0
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.log_history and "loss" in state.log_history[-1]:
            state.log_history[-1]["elapsed_s"] = round(
                self.offset + time.perf_counter() - self.start, 3
            )
        rows = [e for e in state.log_history if "loss" in e]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, buf.getvalue())


class GradientCheck(TrainerCallback):
    """Stop at the first optimizer step if no trainable parameter got a gradient (e.g. a
    4-bit model whose weights bitsandbytes repacked for CPU inference)."""

    def __init__(self) -> None:
        self.checked = False

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.checked or model is None:
            return
        self.checked = True
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        if not any(g is not None and bool(g.abs().sum() > 0) for g in grads):
            raise SpectuneError(
                f"no gradient reached any of the {len(grads)} trainable tensors at the first "
                "step; for a 4-bit model this happens after an eval-mode forward without "
                "gradients before training (bitsandbytes repacks the weights for CPU "
                "inference): train a freshly loaded model"
            )


class FiniteLoss(TrainerCallback):
    """Stop a run whose training loss is NaN or infinite, saying what to change (the files
    written so far stay; the run is marked failed)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.stop(args, state, loss)
        norm = (logs or {}).get("grad_norm")
        if norm is not None and not math.isfinite(float(norm)):
            self.stop(args, state, loss if loss is not None else "unknown", norm)

    @staticmethod
    def stop(args: Any, state: Any, loss: Any, norm: Any = None) -> None:
        what = f"the training loss is {loss}" + (f" (gradient norm {norm})" if norm is not None
                                                 else "")  # fmt: skip
        raise SpectuneError(
            f"{what} at step {state.global_step}: training diverged; "
            f"lower train.learning_rate (now {args.learning_rate:g}), add warmup "
            "(train.warmup_steps) or clip gradients (train.max_grad_norm), then start again "
            "with --overwrite"
        )


class RecordFiles(TrainerCallback):
    """Records the run folder's files in its marker at every checkpoint, so that
    ``--overwrite`` of an interrupted run knows the checkpoints are the run's own."""

    def __init__(self, record: Any) -> None:
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        self.record()


__all__ = [
    "LOG_COLUMNS",
    "FiniteLoss",
    "GradientCheck",
    "LossLog",
    "RecordFiles",
    "SpectuneTrainer",
]
