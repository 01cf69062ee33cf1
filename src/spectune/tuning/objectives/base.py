"""What a training objective is: the :class:`Objective` protocol every registered one follows.

An objective decides what the model is trained on and with which loss: its data format, how
examples become Trainer features, the loss the Trainer computes, and any metric of its own
that is judged before and after training. The recipe calls only these hooks, so a new
objective (distillation, preference optimization...) is one module that subclasses
:class:`Objective` and calls :func:`spectune.register_objective`.

=================================  ==========================================================
hook                               what it does
=================================  ==========================================================
``sections``                       config sections it reads (name -> dataclass)
``check(config)``                  cross-field checks when the config is validated
``prepare(ctx)``                   per-run state (a teacher model, a reference...), kept in
                                   ``ctx.state`` and ``trainer.objective_state``
``load_data(config)``              -> :class:`RunData`: training records in the objective's
                                   format, and the held-out instruction examples every run
                                   is judged on (accuracy, held-out loss)
``check_data(config, data, tok,    checks that need the data and the tokenizer but no
model_dir)``                       weights (LiPO: a batch's memory), before the results
                                   folder exists
``features(config, data, tok)``    -> :class:`TrainData`: the Trainer's dataset and collator
``validation_features(...)``        -> :class:`TrainData` of ``data.validation`` (the split
                                   ``data.n_validation`` carved from the training records),
                                   evaluated during training with ``compute_loss``; the
                                   default is ``features`` of those records
``compute_loss(trainer, ...)``     the loss of one batch (the Trainer's ``compute_loss``)
``judge(ctx, model, phase)``       objective-specific metrics of a model, ``phase`` "before"
                                   (the base model) or "after"; JSON-able
``callbacks(config)``              extra Trainer callbacks
``inputs(config)``                 the settings naming files or folders the run reads (a
                                   teacher...): pinned when the run starts
                                   (:mod:`spectune.tuning.pins`)
=================================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from spectune.data.examples import InstructionExample
    from spectune.tuning.config import TuneConfig


@dataclass
class RunData:
    """A run's data.

    Attributes:
        train: training records, in the objective's own format.
        heldout: held-out instruction examples (judged by every run).
        info: where the data came from (JSON-able, goes to ``metrics.json``).
        extra: anything else the objective keeps (held-out lists for its own metrics...).
        validation: records carved out of ``train`` by the recipe (``data.n_validation``),
            in the same format; empty without validation.
    """

    train: list[Any]
    heldout: list[InstructionExample]
    info: dict[str, Any] = field(default_factory=dict)
    extra: Any = None
    validation: list[Any] = field(default_factory=list)


@dataclass
class TrainData:
    """What the Trainer gets: a dataset (a list of feature dicts), a collator, and a
    description of how the records were tokenized (JSON-able)."""

    dataset: Any
    collator: Any
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class JudgeContext:
    """What an objective's :meth:`Objective.judge` gets.

    Attributes:
        config: the run config.
        tokenizer: the tokenizer.
        data: the run's data.
        model_dir: the base model folder.
        progress: show progress bars.
        state: what :meth:`Objective.prepare` returned for this run.
        out: the run's results folder (None outside a run).
    """

    config: TuneConfig
    tokenizer: Any
    data: RunData
    model_dir: Path
    progress: bool = False
    state: Any = None
    out: Path | None = None


class Objective:
    """A training objective; subclass, override the hooks, register an instance with
    :func:`spectune.register_objective`."""

    name: str = ""
    description: str = ""
    sections: Mapping[str, type] = {}
    #: whether the loss takes a padding-free batch (one row, ``position_ids``, no mask) from
    #: its collator's ``flattened()`` (``data.batching``)
    padding_free: bool = False

    def check(self, config: TuneConfig) -> None:
        """Cross-field checks of a config that uses this objective (raise SpectuneError)."""

    def check_data(
        self, config: TuneConfig, data: RunData, tokenizer: Any, model_dir: Path
    ) -> None:
        """Checks that need the run's data and tokenizer but no weights (memory a batch
        takes...), run before the results folder exists (raise SpectuneError)."""

    def prepare(self, ctx: JudgeContext) -> Any:
        """Per-run state made once, before the training features: a teacher model, generated
        data... It is passed back as ``ctx.state`` (features, judge) and
        ``trainer.objective_state`` (compute_loss)."""
        return None

    def load_data(self, config: TuneConfig) -> RunData:
        raise NotImplementedError(f"objective {self.name!r} does not define load_data()")

    def features(
        self, config: TuneConfig, data: RunData, tokenizer: Any, ctx: JudgeContext | None = None
    ) -> TrainData:
        """The Trainer's dataset and collator (``ctx`` carries the run's state)."""
        raise NotImplementedError(f"objective {self.name!r} does not define features()")

    def validation_features(
        self, config: TuneConfig, data: RunData, tokenizer: Any, ctx: JudgeContext | None = None
    ) -> TrainData:
        """The validation split's dataset and collator (``data.validation``), scored during
        training with :meth:`compute_loss` on the model in eval mode. The default is
        :meth:`features` of those records; an objective whose features come from its state
        (made in :meth:`prepare`) overrides it."""
        return self.features(config, replace(data, train=list(data.validation)), tokenizer, ctx)

    def compute_loss(
        self,
        trainer: Any,
        model: Any,
        inputs: dict[str, Any],
        *,
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The batch loss; the default is the model's own (``trainer.model_loss``).

        It also scores the validation split (``num_items_in_batch`` None, the model in eval
        mode, no gradient): the validation loss is the mean of these batch losses weighted by
        the batches' sizes."""
        return trainer.model_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def judge(self, ctx: JudgeContext, model: Any, phase: str) -> dict[str, Any]:
        """Objective-specific metrics of ``model`` (phase ``"before"`` or ``"after"``)."""
        return {}

    def callbacks(self, config: TuneConfig) -> list[Any]:
        return []

    def inputs(self, config: TuneConfig) -> dict[str, str]:
        """The objective's settings that name a file or folder the run reads (dotted key ->
        the value as given), beside ``model`` and the data files: pinned with a fingerprint
        when the run starts, read from there on ``--resume`` (:mod:`spectune.tuning.pins`)."""
        return {}

    def __repr__(self) -> str:
        return f"<objective {self.name or type(self).__name__}: {self.description}>"


def token_mean(trainer: Any, total: Any, n: Any, num_items_in_batch: Any = None) -> Any:
    """A loss summed over ``n`` labelled tokens, as the Trainer expects it back.

    When the Trainer counts the labelled tokens of the whole optimizer step
    (``num_items_in_batch``: over the gradient accumulation steps and, with
    ``average_tokens_across_devices``, over the processes) the sum is divided by that count
    and multiplied by the number of processes, as the Trainer's own ``compute_loss`` does:
    DDP averages the processes' gradients, so the step's gradient is the mean over every
    token of the global batch, the one a single process with the whole batch computes.
    Otherwise it is the batch's own mean.
    """
    if num_items_in_batch is not None and getattr(trainer, "model_accepts_loss_kwargs", False):
        loss = total / num_items_in_batch
        args = trainer.args
        if args.average_tokens_across_devices and args.world_size > 1:
            loss = loss * trainer.accelerator.num_processes
        return loss
    return total / max(n, 1)


__all__ = ["JudgeContext", "Objective", "RunData", "TrainData", "token_mean"]
