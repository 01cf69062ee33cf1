"""Supervised fine-tuning: the mean negative log-likelihood of the reference response tokens.

Data: the bundled task set (``data.train: tasks``, generated from the run seed), or
instruction / conversation data in any format and source :mod:`spectune.data.formats` reads (a
file, a ``save_to_disk`` folder, a ``datasets`` name); the held-out questions are ``data.eval``
or a seeded ``data.eval_fraction`` split of the training data. Prompts go through the model's
chat template and only the response tokens (and the end-of-turn token that closes them) carry a
label (:mod:`spectune.data.instructions`); in a conversation every assistant turn, or only the
last (``data.train_on``).

Loss: the same value and gradients as the model's own causal-LM loss, but the output head
(the vocabulary projection) runs only on the labelled positions: about 4 of 40 tokens of an
instruction example, and on SmolLM2 the 49152 x 576 head is a fifth of the FLOPs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spectune.data.instructions import (
    InstructionCollator,
    load_instructions,
    split_heldout,
    tokenize_examples,
)
from spectune.data.tasks import TASKS_VERSION, generate_task_set
from spectune.errors import SpectuneError
from spectune.models.forward import as_forward, decoder_and_head, labelled_nll
from spectune.models.tokenizer import pad_token_id
from spectune.tuning.objectives import register_objective
from spectune.tuning.objectives.base import Objective, RunData, TrainData, token_mean

if TYPE_CHECKING:
    from spectune.tuning.config import TuneConfig


def load_instruction_data(config: TuneConfig) -> RunData:
    """The run's training and held-out instruction examples, and where they came from.

    ``data.train = "tasks"``: the bundled task set generated from the run seed
    (``n_train`` / ``n_eval`` examples). Otherwise a file, folder or ``datasets`` name in
    ``data.format`` (:func:`~spectune.data.instructions.load_instructions`); the held-out
    examples are ``data.eval`` or, without it, a seeded ``eval_fraction`` split of the training
    data; at most ``n_eval`` of them are used.
    """
    d = config.data
    if d.train == "tasks":
        train, heldout = generate_task_set(d.n_train, d.n_eval, seed=config.seed)
        info = {"source": "spectune task set", "version": TASKS_VERSION, "seed": config.seed}
        return RunData(train, heldout, {**info, "n_train": len(train), "n_eval": len(heldout)})
    train = load_instructions(d.train, d.format)
    if d.eval is not None:
        heldout = load_instructions(d.eval, d.format)
        split = f"file {d.eval}"
    else:
        if len(train) < 2:
            raise SpectuneError(
                f"dataset file {d.train} holds {len(train)} example; a held-out split needs at "
                "least 2 (or give data.eval)"
            )
        train, heldout = split_heldout(train, d.eval_fraction, config.seed)
        split = f"{len(heldout)} of the file's examples (eval_fraction {d.eval_fraction}, seeded)"
    heldout = heldout[: d.n_eval]
    return RunData(
        train,
        heldout,
        {"source": d.train, "heldout": split, "n_train": len(train), "n_eval": len(heldout)},
    )


class SFT(Objective):
    description = "supervised fine-tuning: NLL of the reference response tokens"
    padding_free = True

    def load_data(self, config: TuneConfig) -> RunData:
        return load_instruction_data(config)

    def features(
        self, config: TuneConfig, data: RunData, tokenizer: Any, ctx: Any = None
    ) -> TrainData:
        features, stats = tokenize_examples(
            data.train,
            tokenizer,
            max_length=config.data.max_length,
            system=config.data.system,
            train_on=config.data.train_on,
        )
        return TrainData(features, InstructionCollator(pad_token_id(tokenizer)), stats.to_dict())

    def compute_loss(
        self,
        trainer: Any,
        model: Any,
        inputs: dict[str, Any],
        *,
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Mean token NLL of the labelled positions, as the model's own loss, with the head
        applied only where a label is (same loss and gradients, tested)."""
        parts = decoder_and_head(model)
        if parts is None or return_outputs:
            return trainer.model_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        ids, labels = inputs["input_ids"], inputs["labels"]
        mask, pos = inputs.get("attention_mask"), inputs.get("position_ids")
        nll, n = as_forward(model, lambda _: labelled_nll(parts, ids, mask, labels, pos))
        return token_mean(trainer, nll, n, num_items_in_batch)


register_objective("sft", SFT())

__all__ = ["SFT", "load_instruction_data"]
