"""The fine-tuning recipe: one run from config to results folder, in named phases.

:func:`tune` is the phases in order, each a function of the :class:`Run` it fills in::

    setup        take the results folder (refuse / resume / overwrite), the data, the config
    judge_base   the base model's measurements (cached per model, data and settings)
    build        the method's trainable model
    train        the transformers Trainer with the objective's loss and the method's callbacks
    save         the method's adapter (and its size)
    judge_tuned  the tuned model's measurements, learning and forgetting
    watch        the spectra of what training changed, beside the base model's
    report       metrics.json, predictions, spectra tables, plots, merged model, report.html

The recipe knows no method or objective by name: it calls their hooks
(:mod:`spectune.tuning.methods`, :mod:`spectune.tuning.objectives`). A study or a sweep
runs the same phases with other settings. The helpers live by subject: :mod:`.run` (the
:class:`~spectune.tuning.run.Run` the phases fill in), :mod:`.checks` (what is refused before the
folder is taken), :mod:`.judging` (the judge settings, the cached base judgment, predictions),
:mod:`.watching` (the spectra during and after training), :mod:`.collect` (the metrics, figures
and files of the report).

Launched as several processes (``torchrun``, ``accelerate launch``: see
:mod:`spectune.tuning.scale.distributed`), every rank checks (``prepare``), rank 0 alone takes
the folder and judges the base model (``take_folder``, ``judge_before``) while the others
wait, every rank builds the same model and trains (DDP, or FSDP for a method whose
``shardable`` is True), and rank 0 alone saves, judges, watches and reports (``finish``).
During training rank 0 alone writes the logs and analyzes the spectra
(``eval.spectra_every_steps``; the others wait for it); the processes share the validation
batches and sum, so every rank sees the same validation loss and early stopping and
``load_best_model_at_end`` decide alike everywhere. A failure on any rank is the same error
on every rank.

Results folder (every file written atomically; ``run.json`` is the marker):

====================  ===============================================================
``config.yaml``       the resolved config (every default written out)
``inputs.json``       the config the run started with and the absolute path and fingerprint
                      of each input (model, data files, teacher): what ``--resume`` checks
``run.json``          status (running / complete), times, files written
``before.json``       the base model's measurements
``train_log.csv``     step, epoch, loss, learning_rate, grad_norm, elapsed_s
``validation_log.csv`` with ``data.n_validation``: step, epoch, validation_loss, examples,
                      seconds
``spectra_log.csv``   with ``eval.spectra_every_steps``: step, layer_id, longname, status,
                      alpha, stable_rank, log_norm, seconds (one row per matrix and step)
``checkpoints/``      Trainer checkpoints (what ``--resume`` continues from)
``adapter/``          what the method saves (peft adapter, FROG adapter, the full model...)
``merged/``           with ``merge``: a plain transformers model folder
``metrics.json``      :class:`~spectune.results.metrics.RunMetrics`
``predictions.jsonl`` every held-out question, reference, answers before and after
``spectra/``          details.csv / details.json / summary.json of the adapter spectra;
                      compare.csv / compare.json / flow.csv and figures of the base against
                      the tuned matrices (``eval.compare_base``)
``plots/``            loss_curve, learning_forgetting, alpha_hist, alpha_vs_base,
                      validation_curve, spectra_vs_validation (+ method's)
``report.html``       one self-contained page
====================  ===============================================================

The spectra (scipy), plotting (matplotlib) and page modules are imported by the phases that use
them (watch, report, the spectra watch during training), not at module level: what a training
process holds in memory is what ``spectune memory`` estimates, and those stacks are ~50 MB it
does not need while it trains.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as hf_logging

from spectune import _check as check
from spectune._io import publish_dir, write_json, write_text
from spectune.errors import SpectuneError
from spectune.judging import cache as judge_cache
from spectune.judging.all import judge
from spectune.models import hardware
from spectune.models.loading import check_model, resolve_model_dir
from spectune.models.tokenizer import end_of_turn, load_tokenizer
from spectune.report import tracking
from spectune.results.logs import log_rows
from spectune.results.metrics import Judging, RunMetrics
from spectune.results.runfolder import CONFIG, RunFolder
from spectune.tuning import pins as P
from spectune.tuning.batching import LENGTH_GROUPED, PADDING_FREE, choose_batching
from spectune.tuning.checks import (
    check_parallel,
    check_resume_inputs,
    check_saved_config,
    check_world,
    load_run_data,
    run_tokenizer,
)
from spectune.tuning.config import TuneConfig, yaml_dump
from spectune.tuning.judging import (
    base_loader,
    correct,
    judge_base_model,
    judge_context,
    judge_settings,
    predictions_jsonl,
)
from spectune.tuning.measure import measured, timed
from spectune.tuning.methods import get_method
from spectune.tuning.objectives import get_objective
from spectune.tuning.pins import PINS
from spectune.tuning.run import Run, TuneResult
from spectune.tuning.scale import distributed
from spectune.tuning.trainer import (
    EarlyStopping,
    FiniteLoss,
    GradientCheck,
    LossLog,
    RecordFiles,
    SpectraWatch,
    SpectuneTrainer,
    ValidationLog,
)

if TYPE_CHECKING:
    from spectune.tuning.methods.base import BuildContext, Built, Method


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- checks


def check_targets(config: TuneConfig, model_dir: Path) -> None:
    """Fail early (shapes only, no weights read) when target_modules match nothing."""
    from spectune.tuning.methods import get_method

    if not get_method(config.method).uses_target_modules:
        return
    from spectune.models.targets import match_modules
    from spectune.tuning.methods.base import meta_model

    match_modules(meta_model(model_dir), config.target_modules, config.exclude_modules)


# --------------------------------------------------------------------------- phases


def setup(
    config: TuneConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    """Phase 1: check what can be checked without weights, take the results folder, write the
    resolved config. The caller's config is not changed (the run works on a copy).

    :func:`prepare` then :func:`take_folder` (several processes run the first on every rank,
    the second on rank 0 only)."""
    run = prepare(config, out=out, progress=progress, resume=resume)
    take_folder(run, overwrite=overwrite, resume=resume)
    return run


def prepare(
    config: TuneConfig,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
) -> Run:
    """Phase 1a: the checks that need no weights and touch no file (config, model folder,
    tokenizer, targets, training arguments, data, how the processes train together; an input
    inside the results folder; on ``resume`` the pinned inputs and config, the checkpoint's
    files: :mod:`spectune.tuning.pins`): the :class:`Run`, its folder not yet taken."""
    config = copy.deepcopy(config)
    out = Path(out if out is not None else config.output_dir)
    config.output_dir = str(out)
    saved = P.read(out) if resume else None
    if saved is not None:
        check_resume_inputs(out, saved, config)
    # the inputs are read where they were when the run started, whatever the directory now
    reading = P.pinned_config(config, saved)
    if not progress:
        hf_logging.disable_progress_bar()
    world = distributed.world()
    method = get_method(config.method)
    notes = check_parallel(config, method, world.size)
    if world.size > 1:
        targs = config.training_arguments()
        per, acc = targs["per_device_train_batch_size"], targs["gradient_accumulation_steps"]
        backend = distributed.backend_for(targs.get("ddp_backend"))
        notes.append(
            f"trained by {world.size} processes ({backend}): global batch "
            f"{per * acc * world.size} = {per} per process x {acc} accumulation "
            f"step(s) x {world.size} processes"
        )
    model_dir = resolve_model_dir(reading.model)
    tokenizer = check_model(model_dir, config.data.template)  # the run's tokenizer, loaded once
    notes += run_tokenizer(reading, tokenizer, method)  # a template file: where it was pinned
    check_targets(config, model_dir)
    training_arguments(config, out, progress=progress)  # a train.* typo names the key
    tracking.check_installed(config)  # train.report_to: each tracker's package
    objective = get_objective(config.objective)
    data = load_run_data(reading)  # the validation split is carved before the folder is made
    objective.check_data(reading, data, tokenizer, model_dir)  # e.g. LiPO's batch memory
    if config.eval.harness is not None:  # an unknown lm-eval task, before anything is trained
        from spectune.judging.harness import check_tasks

        check_tasks(config.eval.harness.tasks)
    pinned = P.pin(config, objective, model_dir, reading)
    P.check_outside(out, pinned)  # also on --resume: a complete run is not another's input
    if saved is not None:
        P.check_outside(out, saved)
        pinned = saved
    return Run(
        config,
        out,
        RunFolder(out, "tune"),
        method,
        objective,
        model_dir,
        data,
        progress=progress,
        main=world.main,
        world_size=world.size,
        notes=notes,
        tokenizer=tokenizer,
        pins=pinned,
        pins_saved=saved is not None,
    )


def take_folder(run: Run, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Phase 1b: take the results folder (refuse / resume / overwrite, then lock it) and write
    the resolved config; rank 0's alone.

    Returns:
        The folder's marker (:attr:`RunFolder.state`).
    """
    config, out, folder = run.config, run.out, run.folder
    if config.eval.before:
        judge_cache.check_writable()
    folder.open(overwrite=overwrite, resume=resume)
    try:
        if resume and not run.pins_saved and (out / CONFIG).is_file():
            check_saved_config(folder, config)  # a run made before pins: its config.yaml
    except BaseException:
        folder.close()
        raise
    if resume:
        folder.resumed()
    run.resume = resume
    if folder.complete:
        return folder.state
    if not run.pins_saved and run.pins is not None:
        folder.own(PINS)  # what the run started from, for --resume
        write_json(out / PINS, run.pins)
    folder.own(CONFIG)
    write_text(
        out / CONFIG,
        f"# spectune tune --out {out} (resolved config)\n" + yaml_dump(config.to_dict()),
    )
    return folder.state


def judge_base(run: Run) -> None:
    """Phase 2: the objective's per-run state and training features; judge the base model
    (``before.json``): :func:`prepare_training` then :func:`judge_before`."""
    prepare_training(run)
    judge_before(run)


def prepare_training(run: Run) -> None:
    """Phase 2a: the objective's per-run state, the training and validation features (every
    process)."""
    if run.tokenizer is None:
        run.tokenizer = load_tokenizer(run.model_dir)
        run_tokenizer(run.config, run.tokenizer, run.method)
    run.objective_state = run.objective.prepare(judge_context(run))
    run.train_data = run.objective.features(run.config, run.data, run.tokenizer, judge_context(run))
    if run.data.validation:
        run.validation = run.objective.validation_features(
            run.config, run.data, run.tokenizer, judge_context(run)
        )
        if not len(run.validation.dataset):
            raise SpectuneError(
                f"data.n_validation: none of the {len(run.data.validation)} validation examples "
                f"keeps a response token at data.max_length={run.config.data.max_length}; "
                "raise data.max_length"
            )
    check_world(run)
    tok = run.train_data.info
    val = f", {len(run.validation.dataset)} for validation" if run.validation else ""
    _say(
        f"data: {tok.get('n_kept', len(run.train_data.dataset))} training examples "
        f"({tok.get('n_truncated', 0)} truncated at {tok.get('max_length', '?')} tokens, "
        f"{tok.get('n_dropped', 0)} dropped){val}, {len(run.data.heldout)} held out",
        run.progress,
    )


def judge_before(run: Run) -> None:
    """Phase 2b: judge the base model (``before.json``); rank 0's alone."""
    if not run.config.eval.before:
        return
    result = judge_base_model(
        run.model_dir, run.tokenizer, run.data.heldout, run.config, progress=run.progress
    )
    run.before_predictions = list(result.get("predictions") or [])
    load_base = base_loader(run.model_dir, run.config, run.tokenizer)
    result["extras"] = run.objective.judge(judge_context(run), load_base, "before")
    run.before = Judging.from_dict(result)
    run.folder.own("before.json")
    write_json(run.out / "before.json", result)


def build(run: Run) -> None:
    """Phase 3: load the base model and make it trainable the method's way."""
    set_seed(run.config.seed)  # the same on every rank: they all build the same start
    if run.main:
        run.folder.own("checkpoints")  # the method may keep files there (PiSSA's initial adapter)
    built = build_model(run.method, run.context, tokenizer=run.tokenizer)
    built.notes = [
        *run.notes,
        *built.notes,
        *hardware.training_notes(run.config.training_arguments()),
    ]
    for note in built.notes:
        _say(f"note: {note}", run.progress)
    _say(
        f"{run.config.method}: {built.trainable:,} trainable parameters "
        f"({built.trainable_percent:.3f}% of {built.total:,})",
        run.progress,
    )
    run.built = built


def build_model(method: Method, ctx: BuildContext, *, tokenizer: Any = None) -> Built:
    """The method's trainable model (base loaded by the method, counts filled in, train mode).

    Raises:
        SpectuneError: the method left no trainable parameter.
    """
    model, notes = method.load_base(ctx)
    if tokenizer is not None:
        from spectune.models.templates import fit_embeddings

        fit_embeddings(model, tokenizer)  # a marker added as a token: its rows (ctx.new_tokens)
    built = method.build(ctx, model)
    built.notes = [*notes, *built.notes]
    built.tokenizer = tokenizer
    built.model.train()
    built.trainable, built.total = method.count_parameters(built.model)
    if built.trainable == 0:
        raise SpectuneError(
            f"method {ctx.config.method!r} left no trainable parameter; check target_modules"
        )
    return built


def training_arguments(
    config: TuneConfig,
    out: Path,
    *,
    progress: bool,
    report_to: list[str] | None = None,
    grouped: bool = False,
) -> Any:
    """``transformers.TrainingArguments`` of the run; bad keys and values name the key.
    ``report_to``: the trackers (default: those the config names); ``grouped``: batches of
    similar length (``train_sampling_strategy: group_by_length`` unless ``train`` sets one)."""
    args = config.trainer_arguments()
    if grouped:
        args.setdefault("train_sampling_strategy", "group_by_length")
    args["report_to"] = tracking.names(config) if report_to is None else report_to
    args.setdefault("run_name", out.name)  # the tracker's run is named after the folder
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    check.unknown_keys("train", args, known, "TrainingArguments", list_valid=False)
    # a NaN loss must reach the log (FiniteLoss stops the run) instead of being averaged away
    args.setdefault("logging_nan_inf_filter", False)
    if distributed.active():  # the group spectune joined (gloo on the CPU, NCCL on GPUs)
        args["ddp_backend"] = distributed.backend_for(args.get("ddp_backend"))
    for flag in ("gradient_checkpointing", "activation_checkpointing"):
        if args.get(flag) and f"{flag}_kwargs" not in args:
            args[f"{flag}_kwargs"] = {"use_reentrant": False}  # needed with frozen base weights
    args.setdefault("save_strategy", "steps")
    try:
        return TrainingArguments(
            output_dir=str(out / "checkpoints"),
            seed=config.seed,
            data_seed=config.seed,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=not progress,
            remove_unused_columns=False,
            label_names=["labels"],
            **args,
        )
    except (TypeError, ValueError) as exc:
        raise SpectuneError(f"train: TrainingArguments refused the settings: {exc}") from None


def callbacks(run: Run) -> list[Any]:
    """The run's Trainer callbacks: loss log, first-step gradient check, the validation log
    and early stopping (with a validation split), the spectra watch
    (``eval.spectra_every_steps``), the method's and the objective's.

    Only rank 0 writes files: the others get no loss or validation log, wait for rank 0's
    spectra (which it computes alone) and for each checkpoint to be whole before rank 0
    records its files. Early stopping runs on every rank: the validation loss it reads is
    the same on all of them (:meth:`~spectune.tuning.trainer.SpectuneTrainer.evaluate`),
    so they stop at the same step."""
    out: list[Any] = [LossLog(run.out / "train_log.csv")] if run.main else []
    out += [
        GradientCheck(),
        FiniteLoss(),
        RecordFiles(run.folder.record if run.main else None, sync=distributed.barrier),
    ]
    args = run.config.training_arguments()
    if run.validation is not None:
        if run.main:
            out.append(ValidationLog(run.out / "validation_log.csv"))
        if args.get("early_stopping_patience") is not None:
            run.early_stopping = EarlyStopping(
                args["early_stopping_patience"], args.get("early_stopping_threshold") or 0.0
            )
            out.append(run.early_stopping)
    every = run.config.eval.spectra_every_steps
    if every is not None:  # rank 0 analyzes; the others wait for it (or its error)
        from spectune.tuning.watching import spectra_rows  # the spectra stack: only when watched

        out.append(
            SpectraWatch(
                every,
                lambda: distributed.on_main(lambda: spectra_rows(run)),
                run.out / "spectra_log.csv" if run.main else None,
            )
        )
    return [*out, *run.method.callbacks(run.config), *run.objective.callbacks(run.config)]


def train(run: Run) -> None:
    """Phase 4: train with the transformers Trainer (resuming from the last checkpoint)."""
    # transformers 5 warns about its own internal use of renamed APIs at every step
    warnings.filterwarnings(
        "ignore", message=r".*deprecated and will be removed in v6", category=FutureWarning
    )
    notes = run.built.notes
    reporting = distributed.on_main(lambda: tracking.usable(run.config, run.out, notes))
    collator = run.train_data.collator
    run.batching, why = choose_batching(
        run.config.data.batching, run.objective, collator, run.built.model
    )
    if why:
        notes.append(why)
    if run.batching == PADDING_FREE:
        collator = collator.flattened()
    args = training_arguments(
        run.config,
        run.out,
        progress=run.progress,
        report_to=reporting,
        grouped=run.batching == LENGTH_GROUPED,
    )
    run.device = str(args.device)
    if run.main:
        run.folder.own("checkpoints", "train_log.csv")
        if run.validation is not None:
            run.folder.own("validation_log.csv")
        if run.config.eval.spectra_every_steps is not None:
            run.folder.own("spectra_log.csv")
    cbs = callbacks(run)
    trainer = SpectuneTrainer(
        model=run.built.model,
        args=args,
        train_dataset=run.train_data.dataset,
        data_collator=collator,
        callbacks=cbs,
        objective=run.objective,
        method=run.method,
        objective_state=run.objective_state,
        validation=run.validation,
    )
    if not run.progress:  # without tqdm, Trainer prints every log line instead
        trainer.remove_callback(PrinterCallback)
    if run.main:
        logdir = run.config.training_arguments().get("logging_dir")
        run.tracking = tracking.attach(trainer, reporting, run.out, run.folder, logdir)
    ckpts = run.out / "checkpoints"
    last = get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None
    run.last_checkpoint = last if run.resume else None
    if run.last_checkpoint:
        _say(f"resuming from {last}", run.progress)
        args.eval_on_start = False  # step 0 was evaluated in the first session (if asked)
    with measured(run, trainer):
        result = trainer.train(resume_from_checkpoint=run.last_checkpoint)
    run.train_offset = next((c.offset for c in cbs if isinstance(c, LossLog)), 0.0)
    run.global_step = int(result.global_step)
    state = trainer.state
    if run.validation is not None:  # the same on every rank (they agreed on every loss)
        es = run.early_stopping
        run.stopped_early = es is not None and es.stopped and state.global_step < state.max_steps
        if run.stopped_early:
            _say(
                f"stopped early at step {state.global_step}: the validation loss did not improve "
                f"for {es.early_stopping_patience} evaluations",
                run.progress,
            )
        best = state.best_model_checkpoint
        run.restored_best = bool(args.load_best_model_at_end and best)
        if run.restored_best:
            run.best_step = int(Path(best).name.rsplit("-", 1)[-1])
            _say(
                f"restored the best checkpoint: step {run.best_step} (validation loss "
                f"{state.best_metric:.4f})",
                run.progress,
            )
    if getattr(trainer, "is_fsdp_enabled", False):
        full = trainer.accelerator.get_state_dict(trainer.model)  # every rank: gathered on 0
        distributed.on_every_rank(lambda: unshard(run, full))
    run.built.model.eval()


def unshard(run: Run, state: dict[str, Any]) -> None:
    """After FSDP training, rank 0 builds the method's model again and puts the gathered
    trained tensors in it: what it saves, judges and analyzes (the other ranks keep their
    shards, which they no longer use)."""
    if not run.main:
        return
    set_seed(run.config.seed)
    built = build_model(run.method, run.context, tokenizer=run.tokenizer)
    load_trained(built.model, state)
    built.notes = run.built.notes
    run.built = built


def load_trained(model: Any, state: dict[str, Any]) -> None:
    """Copy the trainable tensors of ``model`` from a full state dict (by name).

    Raises:
        SpectuneError: a trainable tensor is missing from ``state`` or has another shape.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name not in state:
                raise SpectuneError(
                    f"the gathered FSDP state has no tensor {name}; train this method with DDP"
                )
            t = state[name]
            if tuple(t.shape) != tuple(p.shape):
                raise SpectuneError(
                    f"the gathered FSDP state's {name} has shape {tuple(t.shape)}, the model's "
                    f"{tuple(p.shape)}; train this method with DDP"
                )
            p.copy_(t.to(device=p.device, dtype=p.dtype))


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save(run: Run) -> None:
    """Phase 5: write the method's adapter (atomically, as one folder)."""
    run.folder.own("adapter")

    def write(tmp: Path) -> None:
        run.method.save(run.built, tmp)
        eot = end_of_turn(run.tokenizer)
        if run.config.data.template != "tokenizer" or (eot is not None and eot.added):
            run.tokenizer.save_pretrained(tmp)  # the template (and token) the adapter learned

    publish_dir(write, run.out / "adapter")
    run.adapter_bytes = _folder_bytes(run.out / "adapter")


def judge_tuned(run: Run) -> None:
    """Phase 6: judge the tuned model; write ``predictions.jsonl``."""
    result = judge(
        run.built.model,
        run.tokenizer,
        run.data.heldout,
        progress=run.progress,
        **judge_settings(run.config),
    )
    run.after_predictions = list(result["predictions"])
    if result["accuracy"].get("warning"):
        run.built.notes.append(f"judging the tuned model: {result['accuracy']['warning']}")
    run.correct_after = correct(run.data.heldout, run.after_predictions)
    if run.before_predictions:
        run.correct_before = correct(run.data.heldout, run.before_predictions)
    result["extras"] = run.objective.judge(judge_context(run), lambda: run.built.model, "after")
    run.after = Judging.from_dict(result)
    run.folder.own("predictions.jsonl")
    write_text(
        run.out / "predictions.jsonl",
        predictions_jsonl(run.data.heldout, run.before_predictions, run.after_predictions),
    )


def watch(run: Run) -> None:
    """Phase 7: the spectra of what training changed (what the method says the engine reads),
    with the base model's metrics alongside; ``spectra/`` tables."""
    if not run.config.eval.spectra:
        return
    from spectune.report.files import write_results
    from spectune.tuning.watching import watch_update

    what = run.method.spectra(run.built, run.context, run.out / "adapter")
    run.folder.own("spectra")
    run.details, run.summary, run.comparison = watch_update(
        what, run.model_dir, run.config, progress=run.progress, notes=run.built.notes
    )
    write_results(run.details, run.summary, run.out / "spectra", plots=False)


def report(run: Run, *, merge: bool = False) -> RunMetrics:
    """Phase 8: metrics.json, plots, the merged model (``merge``), report.html; the run is
    then marked complete."""
    from spectune.report.pages.run import write_run_report
    from spectune.tuning.collect import collect_metrics, write_run_plots, write_spectra_files

    metrics = collect_metrics(run)
    run.folder.own("plots")
    write_run_plots(
        run.out / "plots", metrics, log_rows(run.out), run.details, run.method.figures(run.built)
    )
    if run.details is not None:
        write_spectra_files(run.out / "spectra", run.details, run.comparison)
    if merge:
        run.folder.own("merged")
        merged = run.method.merge(run.built, run.context, run.out / "adapter")

        def write(tmp: Path) -> None:
            merged.save_pretrained(tmp)
            run.tokenizer.save_pretrained(tmp)

        publish_dir(write, run.out / "merged")
        metrics.run.merged = str(run.out / "merged")
    run.folder.own("metrics.json")
    metrics.save(run.out)
    run.folder.own("report.html")
    write_run_report(run.out)
    if run.tracking is not None:  # the judged results into the trackers' runs
        run.tracking.log(run.out, metrics)
    if not run.config.training_arguments()["keep_checkpoints"]:
        run.folder.disown("checkpoints")  # the adapter is written: resuming needs them no more
    run.folder.finish()
    run.metrics = metrics
    return metrics


# --------------------------------------------------------------------------- the run


def tune(
    config: TuneConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    merge: bool = False,
    progress: bool = True,
) -> TuneResult:
    """Fine-tune, judge and analyze one run; everything lands in the results folder.

    Args:
        config: the run config (not changed).
        out: results folder (default ``config.output_dir``).
        overwrite: replace a run already in ``out`` (only files that run wrote are removed).
        resume: continue an interrupted run in ``out`` from its last checkpoint (the config
            must be the one it started with); a complete run is returned as it is.
        merge: also write ``merged/``, a plain transformers model with the update merged.
        progress: progress bars and status lines on stderr (rank 0's only).

    Under ``torchrun`` / ``accelerate launch`` every process calls this with the same
    arguments; each returns the run's result (rank 0 wrote it).

    Returns:
        A :class:`TuneResult` with the run's :class:`~spectune.results.metrics.RunMetrics`.

    Raises:
        SpectuneError: bad config or data, a results folder that cannot be used, a run that
            gets no gradient; FSDP with a method that cannot be sharded, more processes than
            training examples (on every process alike).
    """
    with distributed.session(config) as world:  # a no-op in one process
        # every rank checks; rank 0 alone takes the folder and judges, the others wait for it
        run = distributed.on_every_rank(
            lambda: prepare(config, out=out, progress=progress and world.main, resume=resume)
        )
        run.resume = resume
        state = distributed.on_main(lambda: take_folder(run, overwrite=overwrite, resume=resume))
        if not run.main:
            run.folder.state = state  # rank 0's marker, read only
        with run.folder:  # the folder's lock is released however the run ends
            if run.folder.complete:
                _say(f"{run.out} holds a complete run; nothing to do", run.progress)
                return TuneResult(run.out, distributed.on_main(lambda: RunMetrics.load(run.out)))
            try:
                timed(run, "data", lambda: distributed.on_every_rank(lambda: prepare_training(run)))
                timed(run, "judge_before", lambda: distributed.on_main(lambda: judge_before(run)))
                timed(run, "build", lambda: distributed.on_every_rank(lambda: build(run)))
                check_same_start(run)
                timed(run, "train", lambda: train(run))
                return TuneResult(run.out, distributed.on_main(lambda: finish(run, merge=merge)))
            except Exception as exc:  # an interruption (KeyboardInterrupt) stays "running"
                if run.main:
                    run.folder.fail(f"{type(exc).__name__}: {exc}")
                raise
            finally:
                run.cleanup()


def finish(run: Run, *, merge: bool = False) -> RunMetrics:
    """Phases 5 to 8 (save, judge the tuned model, watch, report): rank 0's alone."""
    timed(run, "save", lambda: save(run))
    timed(run, "judge_tuned", lambda: judge_tuned(run))
    timed(run, "watch", lambda: watch(run))
    return report(run, merge=merge)


def check_same_start(run: Run) -> None:
    """Every rank must start from the same model (the same seed builds the same adapter):
    refuse, on every rank, when a rank's trainable tensors differ from rank 0's."""
    if not distributed.active():
        return
    with torch.no_grad():
        mine = [
            float(p.detach().double().sum())
            for p in run.built.model.parameters()
            if p.requires_grad
        ]
    first = distributed.on_main(lambda: mine)
    same = first == mine
    distributed.agree(
        None
        if same
        else (
            f"rank {distributed.world().rank} built other starting weights than rank 0 for method "
            f"{run.config.method!r} (its initialization is not seeded the same on every "
            "process); train it in one process"
        )
    )


__all__ = [
    "build",
    "build_model",
    "callbacks",
    "check_same_start",
    "check_targets",
    "finish",
    "judge_base",
    "judge_before",
    "judge_tuned",
    "load_trained",
    "prepare",
    "prepare_training",
    "report",
    "save",
    "setup",
    "take_folder",
    "train",
    "training_arguments",
    "tune",
    "unshard",
    "watch",
]
