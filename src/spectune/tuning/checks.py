"""The early checks of a run: what :func:`spectune.tuning.recipe.prepare` refuses before the
results folder is taken or a weight is read.

- the model folder (:func:`check_model`: a causal LM with a usable tokenizer and chat
  template, weights that are whole), the run's tokenizer given its template and end-of-turn
  marker (:func:`run_tokenizer`) and the data with its validation split
  (:func:`load_run_data`);
- a resume (:func:`check_resume_inputs`, :func:`check_saved_config`): the config it started
  with, inputs where they were and unchanged, a checkpoint that loads;
- how the processes train together (:func:`check_parallel`, :func:`check_world`): FSDP only for
  a method it can shard, no more processes than training examples.

Every refusal is a :class:`~spectune.errors.SpectuneError` whose message names the input and
the fix. (The target-module check, ``check_targets``, is still in the recipe.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers.trainer_utils import get_last_checkpoint

from spectune.data.instructions import split_validation
from spectune.errors import SpectuneError
from spectune.models.templates import apply_template
from spectune.models.tokenizer import end_of_turn
from spectune.results.runfolder import CONFIG, RunFolder
from spectune.tuning import pins as P
from spectune.tuning.config import TuneConfig, read_config_data
from spectune.tuning.methods import METHODS, get_method
from spectune.tuning.objectives import get_objective

if TYPE_CHECKING:
    from spectune.tuning.methods.base import Method
    from spectune.tuning.objectives.base import RunData
    from spectune.tuning.run import Run


def run_tokenizer(config: TuneConfig, tokenizer: Any, method: Method) -> list[str]:
    """Give the run's tokenizer its chat template and end-of-turn marker (``data.template``,
    ``data.end_of_turn``: :func:`spectune.models.templates.apply_template`), once, where the run
    loads it; a marker added to the vocabulary needs a method that trains new token rows.

    Returns:
        Notes for the run.

    Raises:
        SpectuneError: the template does not fit, or the method cannot train an added token.
    """
    notes = apply_template(tokenizer, config.data.template, config.data.end_of_turn)
    eot = end_of_turn(tokenizer)
    if eot is not None and eot.added and not method.trains_new_tokens:
        raise SpectuneError(
            f"data.end_of_turn=token adds {eot.marker!r} to the vocabulary, and method "
            f"{config.method!r} cannot train a new token's embedding rows; set "
            "data.end_of_turn=text (the marker matched as text) or a method that can: "
            + ", ".join(n for n in METHODS.names() if get_method(n).trains_new_tokens)
        )
    return notes


def load_run_data(config: TuneConfig) -> RunData:
    """The run's data, as its objective reads it; with ``data.n_validation`` that many
    training records carved out (seeded by the run's seed,
    :func:`spectune.data.instructions.split_validation`) into ``validation``: disjoint from the
    records trained on and from the held-out questions.

    Raises:
        SpectuneError: bad data, or a validation split that leaves no training record.
    """
    data = get_objective(config.objective).load_data(config)
    n = config.data.n_validation
    if n:
        data.train, data.validation = split_validation(data.train, n, config.seed)
        data.info.update(
            n_train=len(data.train),
            n_validation=len(data.validation),
            validation=f"{n} of the training records (seeded by the run's seed), "
            "disjoint from training and held-out",
        )
    return data


def check_saved_config(folder: RunFolder, config: TuneConfig) -> None:
    """On a resume of a run made before pins (:mod:`spectune.tuning.pins`): the config is the
    one its ``config.yaml`` holds (``output_dir`` aside)."""
    saved = TuneConfig.from_dict(
        read_config_data(folder.path / CONFIG),
        source=str(folder.path / CONFIG),
        foreign_sections="drop",
    )
    a, b = saved.to_dict(), config.to_dict()
    a.pop("output_dir"), b.pop("output_dir")
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise SpectuneError(
            f"--resume: this config differs from the one the run in {folder.path} started with "
            f"(in: {', '.join(diff)}); resume with the saved {CONFIG} or start over with "
            "--overwrite"
        )


def check_resume_inputs(out: Path, saved: dict[str, Any], config: TuneConfig) -> None:
    """Before a resume touches the folder: the config is the one the run started with, its
    inputs are where they were and unchanged, the last checkpoint's files can be loaded
    (for a complete run, returned as it is, the config only)."""
    marker = RunFolder(out).read_marker()
    if marker is None:
        return
    P.check_config(out, saved, config)
    if marker.get("status") == "complete":
        return
    P.check_unchanged(out, saved)
    ckpts = out / "checkpoints"
    if ckpts.is_dir():
        last = get_last_checkpoint(str(ckpts))
        if last:
            P.check_checkpoint(Path(last))


def fsdp_requested(config: TuneConfig) -> bool:
    """Whether the run shards the model with FSDP: ``train.fsdp`` or ``accelerate launch``
    with an FSDP config (``ACCELERATE_USE_FSDP``)."""
    flag = os.environ.get("ACCELERATE_USE_FSDP", "false").strip().lower() in ("1", "true", "yes")
    return bool(config.training_arguments().get("fsdp")) or flag


def check_parallel(config: TuneConfig, method: Method, world_size: int) -> list[str]:
    """Refuse FSDP for a method that cannot be sharded; notes on how the processes train.

    Returns:
        Notes for the run (FSDP asked for on a machine without GPUs...).

    Raises:
        SpectuneError: FSDP with a method whose ``shardable`` is False, or with
            ``eval.spectra_every_steps`` (rank 0 would analyze its shard of the weights).
    """
    if not fsdp_requested(config):
        return []
    ddp = "train it with DDP (remove train.fsdp, or launch without accelerate's FSDP config)"
    if not method.shardable:
        able = [n for n in METHODS.names() if get_method(n).shardable]
        raise SpectuneError(
            f"method {config.method!r} cannot be trained with FSDP: {method.unshardable}; "
            f"{ddp} or pick a method FSDP can shard: {', '.join(able)}"
        )
    if config.eval.spectra_every_steps is not None:
        raise SpectuneError(
            f"eval.spectra_every_steps={config.eval.spectra_every_steps} cannot be used with "
            "FSDP: during training each process holds only its shard of the weights, and the "
            f"spectra are analyzed by rank 0 alone; {ddp}, or remove eval.spectra_every_steps "
            "(the spectra after training are still analyzed)"
        )

    if not torch.cuda.is_available() and world_size > 1:
        return [
            "FSDP needs GPUs: on the CPU accelerate trains with DDP, every process holding "
            "the whole model"
        ]
    return []


def check_world(run: Run) -> None:
    """Refuse a launch with more processes than training examples (a process without an
    example of its own would train on repeats of the others')."""
    if run.world_size <= 1 or run.train_data is None:
        return
    n = len(run.train_data.dataset)
    if n < run.world_size:
        raise SpectuneError(
            f"{run.world_size} processes were launched but the run has only {n} training "
            f"example(s) (data.n_train, after tokenization): launch at most {n} processes "
            "(torchrun --nproc_per_node) or give the run more training data"
        )


__all__ = [
    "check_parallel",
    "check_resume_inputs",
    "check_saved_config",
    "check_world",
    "fsdp_requested",
    "load_run_data",
    "run_tokenizer",
]
