"""The ``transformers`` Trainer as the recipe uses it: the objective's loss, the method's
checkpoints, and the callbacks every run gets.

Imports ``transformers`` at module level, as the recipe does (a CLI verb imports the recipe
only when it runs).

- :class:`SpectuneTrainer`: ``compute_loss`` is the objective's
  (:meth:`~spectune.tuning.objectives.base.Objective.compute_loss`); checkpoints are written
  and restored by the method when it has its own format (FROG: indices and values only), the
  best checkpoint (``load_best_model_at_end``) too; ``evaluate`` scores the validation split
  with the objective's loss (:func:`validation_loss`); it counts the real tokens it trains on
  (tokens/s) in the main process, so data loader workers (``train.dataloader_num_workers``),
  which collate batches in other processes, count too.
- :class:`LossLog`: ``train_log.csv`` rewritten atomically at every log; ``elapsed_s`` counts
  training time across resumes.
- :class:`ValidationLog`: ``validation_log.csv`` (step, epoch, validation loss, seconds) from
  the Trainer's log history, so a resumed run continues its curve.
- :class:`EarlyStopping`: transformers' ``EarlyStoppingCallback`` whose patience counter is
  recounted from the log history when training resumes.
- :class:`SpectraWatch`: the adapter's spectra every N steps (``spectra_log.csv``).
- :class:`GradientCheck`: stops at the first optimizer step if the gradient is not finite or
  no trainable parameter got one (saying "4-bit" only for a 4-bit model).
- :class:`FiniteLoss`: stops a run whose loss became NaN or infinite, saying what to change.
- :class:`RecordFiles`: records the checkpoint files in the run folder's marker (rank 0,
  once every process wrote its part).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from spectune._io import check_no_links, write_text
from spectune.errors import SpectuneError
from spectune.models.quant import has_4bit_weights, unpack_4bit_cpu_weights
from spectune.tuning.scale import distributed

LOG_COLUMNS = ["step", "epoch", "loss", "learning_rate", "grad_norm", "elapsed_s"]
#: columns of validation_log.csv
VALIDATION_COLUMNS = ["step", "epoch", "validation_loss", "examples", "seconds"]
#: columns of spectra_log.csv (one row per analyzed matrix and step)
SPECTRA_COLUMNS = [
    "step",
    "layer_id",
    "longname",
    "status",
    "alpha",
    "stable_rank",
    "log_norm",
    "seconds",
]


def _write_csv(path: Path, columns: list[str], rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def validation_loss(
    trainer: Any,
    model: Any,
    dataset: Sequence[Any],
    collator: Callable,
    batch_size: int,
    *,
    share: tuple[int, int] = (0, 1),
    total: Callable[[float], float] | None = None,
) -> tuple[float, int]:
    """The objective's loss on a validation split: batches of ``batch_size`` features in the
    split's order, each scored by ``trainer.compute_loss`` in eval mode (no dropout) without
    gradients, averaged with the batches' sizes as weights.

    Afterwards the model is back in its former mode, and 4-bit weights that bitsandbytes
    repacked for CPU inference in eval mode are unpacked (or the adapters would get no
    gradient from the next step on: :func:`spectune.models.quant.unpack_4bit_cpu_weights`).

    Args:
        trainer: the :class:`SpectuneTrainer` (its objective's ``compute_loss``).
        model: the model.
        dataset: the validation features (a sequence).
        collator: the validation collator.
        batch_size: features per batch.
        share: ``(rank, processes)``: this process scores the batches ``rank``,
            ``rank + processes``, ... of that sequence; ``(0, 1)`` scores them all.
        total: sums a number over the processes sharing the batches
            (:func:`spectune.tuning.scale.distributed.total`): every process then returns the
            loss of the whole split, the one a single process computes (the same batches,
            summed in another order); None in one process.

    Returns:
        ``(loss, examples)``.
    """
    was_training = model.training
    model.eval()
    loss_sum, n = 0.0, 0
    rank, processes = share
    try:
        with torch.no_grad():
            for start in range(rank * batch_size, len(dataset), processes * batch_size):
                features = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                batch = trainer._prepare_inputs(collator(features))
                loss = trainer.compute_loss(model, batch)
                loss_sum += float(loss.detach().float()) * len(features)
                n += len(features)
    finally:
        model.train(was_training)
        unpack_4bit_cpu_weights(model)
    if total is not None:
        loss_sum, n = total(loss_sum), int(total(n))
    if n == 0:
        raise SpectuneError(
            "the validation split has no example left after tokenization; "
            "raise data.n_validation or data.max_length"
        )
    return loss_sum / n, n


class SpectuneTrainer(Trainer):
    """Trainer whose loss comes from the run's objective and whose checkpoints come from the
    run's method.

    Args:
        objective: the run's :class:`~spectune.tuning.objectives.base.Objective`.
        method: the run's :class:`~spectune.tuning.methods.base.Method`.
        objective_state: what the objective's ``prepare`` returned (a teacher...).
        **kwargs: ``transformers.Trainer`` arguments.
    """

    def __init__(
        self,
        *args: Any,
        objective: Any = None,
        method: Any = None,
        objective_state: Any = None,
        validation: Any = None,
        **kwargs: Any,
    ):
        if validation is not None:
            kwargs.setdefault("eval_dataset", validation.dataset)
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.method = method
        self.objective_state = objective_state
        self.validation = validation
        #: real (attention-mask) tokens of the batches trained on in this session
        self.tokens = 0
        #: positions of those batches (real tokens and padding) and how many batches
        self.positions = 0
        self.batches = 0
        #: wall seconds of each training step (forward and backward) in this session
        self.step_seconds: list[float] = []

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Score the validation split with the objective's loss (:func:`validation_loss`);
        logs ``eval_loss`` (with ``eval_runtime``, ``eval_samples``) and calls the callbacks'
        ``on_evaluate``, as ``Trainer.evaluate`` does. Under DDP the processes share the
        batches; the loss is the same on every rank."""
        if self.validation is None:
            raise SpectuneError("evaluation needs a validation split: set data.n_validation")
        start = time.perf_counter()
        world = distributed.world()
        # DDP: the processes share the batches and sum, so every rank gets the same loss (the
        # one a single process computes) and early stopping and the best checkpoint are
        # decided alike everywhere. FSDP: every forward gathers the shards from every
        # process, so each scores every batch, and rank 0's loss is taken.
        shared = world.size > 1 and not self.is_fsdp_enabled
        loss, n = validation_loss(
            self,
            self.model,
            self.validation.dataset,
            self.validation.collator,
            self.args.per_device_eval_batch_size,
            share=(world.rank, world.size) if shared else (0, 1),
            total=distributed.total if shared else None,
        )
        if world.size > 1 and not shared:
            loss, n = distributed.on_main(lambda: (loss, n))
        metrics = {
            f"{metric_key_prefix}_loss": loss,
            f"{metric_key_prefix}_runtime": round(time.perf_counter() - start, 4),
            f"{metric_key_prefix}_samples": n,
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        return metrics

    def training_step(self, model, inputs, num_items_in_batch=None):
        if isinstance(inputs, Mapping):
            mask = inputs.get("attention_mask")
            ids = inputs.get("input_ids")
            if mask is not None:
                self.tokens += int(mask.sum())
                self.positions += int(mask.numel())
                self.batches += 1
            elif ids is not None and "position_ids" in inputs:  # a padding-free row
                self.tokens += int(ids.numel())
                self.positions += int(ids.numel())
                self.batches += 1
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_seconds.append(time.perf_counter() - start)
        return loss

    def model_loss(self, model, inputs, *, return_outputs=False, num_items_in_batch=None):
        """The Trainer's own loss (the model's ``loss`` output); a padding-free row without a
        cache (transformers finds the packed examples only then)."""
        if "position_ids" in inputs and "attention_mask" not in inputs:
            inputs = {**inputs, "use_cache": False}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.objective is None:
            return self.model_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        return self.objective.compute_loss(
            self,
            model,
            inputs,
            return_outputs=return_outputs,
            num_items_in_batch=num_items_in_batch,
        )

    def _save_checkpoint(self, model: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's checkpoint, after refusing a symbolic link on its way inside the
        open run folder (the Trainer writes it without spectune's atomic writes)."""
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        check_no_links(Path(self.args.output_dir) / name)
        return super()._save_checkpoint(model, trial, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        folder = Path(output_dir or self.args.output_dir)
        if self.method is not None and self.args.should_save:  # rank 0 writes the model
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

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if self.method is not None and best and self.method.load_checkpoint(self.model, Path(best)):
            return None
        return super()._load_best_model()


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
        _write_csv(self.path, LOG_COLUMNS, [e for e in state.log_history if "loss" in e])


def validation_rows(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The validation points of a Trainer log history (``eval_loss`` entries) as rows of
    ``validation_log.csv``."""
    return [
        {
            "step": e.get("step"),
            "epoch": e.get("epoch"),
            "validation_loss": e["eval_loss"],
            "examples": e.get("eval_samples"),
            "seconds": e.get("eval_runtime"),
        }
        for e in log_history
        if "eval_loss" in e
    ]


class ValidationLog(TrainerCallback):
    """Rewrites ``validation_log.csv`` (atomically) after every evaluation, from the Trainer's
    log history (which a resumed run restores from its checkpoint: the curve continues).

    Args:
        path: the CSV file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        _write_csv(self.path, VALIDATION_COLUMNS, validation_rows(state.log_history))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "eval_loss" in logs:
            _write_csv(self.path, VALIDATION_COLUMNS, validation_rows(state.log_history))


class EarlyStopping(EarlyStoppingCallback):
    """transformers' ``EarlyStoppingCallback``: training stops once the validation loss has
    not improved on the best so far by more than ``early_stopping_threshold`` for
    ``early_stopping_patience`` evaluations in a row. On (re)start the patience counter is
    recounted from the log history, so a resumed run stops where an uninterrupted one would.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        self.early_stopping_patience_counter = 0
        best = None
        for entry in state.log_history:
            value = entry.get("eval_loss")
            if value is None:
                continue
            if best is None or (value < best and abs(value - best) > self.early_stopping_threshold):
                self.early_stopping_patience_counter = 0
            else:
                self.early_stopping_patience_counter += 1
            best = value if best is None else min(best, value)

    @property
    def stopped(self) -> bool:
        """Whether the patience ran out (training was stopped early)."""
        return self.early_stopping_patience_counter >= self.early_stopping_patience


class SpectraWatch(TrainerCallback):
    """The adapter's spectra every ``every`` optimizer steps and at the last step, one row per
    analyzed matrix in ``spectra_log.csv`` (rewritten atomically). A resumed run drops the rows
    after the step it resumes from, so they are computed again.

    Args:
        every: steps between two analyses.
        compute: returns the spectra of the model as it is now (rows with the
            :data:`SPECTRA_COLUMNS` keys but ``step`` and ``seconds``).
        path: the CSV file; None on the ranks other than 0 of a launched run, which write
            nothing (their ``compute`` waits for rank 0's).
    """

    def __init__(
        self, every: int, compute: Callable[[], list[dict[str, Any]]], path: Path | None
    ) -> None:
        self.every = every
        self.compute = compute
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.rows = []
        if self.path is None:
            return
        if self.path.is_file():
            with self.path.open(newline="", encoding="utf-8") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= state.global_step]
        _write_csv(self.path, SPECTRA_COLUMNS, self.rows)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.every and step < state.max_steps:
            return
        start = time.perf_counter()
        rows = self.compute()
        seconds = round(time.perf_counter() - start, 3)
        self.rows += [{**r, "step": step, "seconds": seconds} for r in rows]
        if self.path is not None:
            _write_csv(self.path, SPECTRA_COLUMNS, self.rows)


class GradientCheck(TrainerCallback):
    """Stop at the first optimizer step if the gradient is not finite, or if no trainable
    parameter got a gradient (a 4-bit model whose weights bitsandbytes repacked for CPU
    inference, or a loss that does not depend on the weights), saying which."""

    def __init__(self) -> None:
        self.checked = False

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.checked or model is None:
            return
        self.checked = True
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        present = [g for g in grads if g is not None]
        n_bad = sum(not bool(g.isfinite().all()) for g in present)
        if n_bad:
            raise SpectuneError(
                f"the gradient at the first step is not finite (NaN or infinite) in {n_bad} "
                f"of the {len(grads)} trainable tensors: the loss overflowed; lower "
                "train.learning_rate or the objective's scale (e.g. lipo.beta), then start "
                "again with --overwrite"
            )
        if not any(bool(g.abs().sum() > 0) for g in present):
            what = (
                f"no gradient reached any of the {len(grads)} trainable tensors at the first step"
            )
            if getattr(model, "is_loaded_in_4bit", False) or has_4bit_weights(model):
                raise SpectuneError(
                    f"{what}; for a 4-bit model this happens after an eval-mode forward "
                    "without gradients before training (bitsandbytes repacks the weights for "
                    "CPU inference): train a freshly loaded model"
                )
            raise SpectuneError(
                f"{what} ({len(grads) - len(present)} got none, {len(present)} got only "
                "zeros): the first batch's loss does not depend on the trained weights (e.g. "
                "a preference list whose pairs all weigh 0, or every label masked); check "
                "the training data, then start again with --overwrite"
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
        what = f"the training loss is {loss}" + (
            f" (gradient norm {norm})" if norm is not None else ""
        )
        raise SpectuneError(
            f"{what} at step {state.global_step}: training diverged; "
            f"lower train.learning_rate (now {args.learning_rate:g}), add warmup "
            "(train.warmup_steps) or clip gradients (train.max_grad_norm), then start again "
            "with --overwrite"
        )


class RecordFiles(TrainerCallback):
    """Records the run folder's files in its marker at every checkpoint, so that
    ``--overwrite`` of an interrupted run knows the checkpoints are the run's own.

    Args:
        record: saves the marker (rank 0); None on the other ranks, which record nothing.
        sync: waits until every process wrote its part of the checkpoint (each writes its
            random-number state) before rank 0 records the files; None in one process.
    """

    def __init__(self, record: Any, sync: Any = None) -> None:
        self.record = record
        self.sync = sync

    def on_save(self, args, state, control, **kwargs):
        if self.sync is not None:
            self.sync()
        if self.record is not None:
            self.record()


__all__ = [
    "LOG_COLUMNS",
    "SPECTRA_COLUMNS",
    "VALIDATION_COLUMNS",
    "EarlyStopping",
    "FiniteLoss",
    "GradientCheck",
    "LossLog",
    "RecordFiles",
    "SpectraWatch",
    "SpectuneTrainer",
    "ValidationLog",
    "validation_loss",
    "validation_rows",
]
