"""The fine-tuning recipe: one run from config to results folder, in named phases.

:func:`tune` is the phases in order, each a function of the :class:`Run` it fills in::

    setup        take the results folder (refuse / resume / overwrite), the data, the config
    judge_base   the base model's measurements (cached per model, data and settings)
    build        the method's trainable model
    train        the transformers Trainer with the objective's loss and the method's callbacks
    save         the method's adapter (and its size)
    judge_tuned  the tuned model's measurements, learning and forgetting
    analyze      the spectra of what training changed, beside the base model's
    report       metrics.json, predictions, spectra tables, plots, merged model, report.html

The recipe knows no method or objective by name: it calls their hooks
(:mod:`spectune.tune.methods`, :mod:`spectune.tune.objectives`). A study or a sweep
runs the same phases with other settings.

Launched as several processes (``torchrun``, ``accelerate launch``: see
:mod:`spectune.tune.scale.distributed`), every rank checks (``prepare``), rank 0 alone takes
the folder and judges the base model (``take_folder``, ``judge_before``) while the others
wait, every rank builds the same model and trains (DDP, or FSDP for a method whose
``shardable`` is True), and rank 0 alone saves, judges, analyzes and reports (``finish``).
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
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune._io import publish_dir, write_json, write_text
from spectune.errors import SpectuneError
from spectune.results.metrics import (
    Cost,
    Forgetting,
    Judging,
    Learning,
    RunInfo,
    RunMetrics,
    SpectraPoint,
    SpectraSummary,
    Training,
    Validation,
    ValidationPoint,
)
from spectune.results.runfolder import CONFIG, RunFolder
from spectune.tune.config import TuneConfig, yaml_dump

if TYPE_CHECKING:
    from spectune.data.instructions import InstructionExample
    from spectune.tune.methods.base import BuildContext, Built, Method
    from spectune.tune.objectives.base import Objective, RunData, TrainData
    from spectune.tune.trainer import EarlyStopping

#: version of the "before" measurements' cache entries (bump when judging changes)
JUDGE_VERSION = 1


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


@dataclass
class TuneResult:
    """Where a run went and what it measured (``metrics.json``, typed)."""

    out: Path
    metrics: RunMetrics


@dataclass
class Run:
    """The state of one run as the phases fill it in.

    Attributes:
        config: the run's own copy of the config (``output_dir`` set to ``out``).
        out: the results folder.
        folder: its :class:`RunFolder`.
        method / objective: the registered plug-ins the config names.
        model_dir: the resolved base model folder.
        data: the objective's data (training records, held-out questions).
        progress: progress output.
        resume: continue from the last checkpoint.
        main: this process writes the results folder (rank 0; the only one in one process).
        world_size: the number of processes training together (torchrun / accelerate launch).
        notes: things the user should know about the run (beside the method's).
        pins: what the run started from (:mod:`spectune.tune.pins`); ``pins_saved``:
            read from the folder (a resume) rather than made now.
        tokenizer, train_data, before, built, after...: what each phase produced
            (``validation``: the validation split's features; ``early_stopping``,
            ``best_step``, ``restored_best``, ``stopped_early``: what training did with it;
            ``correct_after`` / ``correct_before``: right or wrong per held-out question).
    """

    config: TuneConfig
    out: Path
    folder: RunFolder
    method: Method
    objective: Objective
    model_dir: Path
    data: RunData
    progress: bool = True
    resume: bool = False
    main: bool = True
    world_size: int = 1
    notes: list[str] = field(default_factory=list)
    tokenizer: Any = None
    pins: dict[str, Any] | None = None
    pins_saved: bool = False
    objective_state: Any = None
    train_data: TrainData | None = None
    validation: TrainData | None = None
    early_stopping: EarlyStopping | None = None
    best_step: int | None = None
    restored_best: bool = False
    stopped_early: bool = False
    before: Judging | None = None
    built: Built | None = None
    last_checkpoint: str | None = None
    device: str = "cpu"
    train_seconds: float = 0.0
    train_offset: float = 0.0
    tokens: int = 0
    global_step: int = 0
    peak_rss: tuple[int, bool] = (0, False)
    adapter_bytes: int = 0
    after: Judging | None = None
    after_predictions: list[str] = field(default_factory=list)
    before_predictions: list[str] | None = None
    correct_after: list[bool] = field(default_factory=list)
    correct_before: list[bool] | None = None
    details: Any = None
    summary: dict[str, Any] | None = None
    comparison: Any = None
    metrics: RunMetrics | None = None

    _scratch: Path | None = None

    @property
    def context(self) -> BuildContext:
        from spectune.tune.methods.base import BuildContext

        if not self.main:  # the run folder is rank 0's: the others keep files to themselves
            if self._scratch is None:
                import tempfile

                self._scratch = Path(tempfile.mkdtemp(prefix="spectune-rank-"))
            return BuildContext(self.config, self.model_dir, self._scratch, self.progress)
        workdir = self.out / "checkpoints"
        if not self.folder.complete:  # a complete run's checkpoints are gone for good
            workdir.mkdir(parents=True, exist_ok=True)
        return BuildContext(self.config, self.model_dir, workdir, self.progress)

    def cleanup(self) -> None:
        """Remove what this process kept outside the run folder."""
        if self._scratch is not None:
            import shutil

            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


# --------------------------------------------------------------------------- checks


def check_targets(config: TuneConfig, model_dir: Path) -> None:
    """Fail early (shapes only, no weights read) when target_modules match nothing."""
    from spectune.tune.methods import get_method

    if not get_method(config.method).uses_target_modules:
        return
    from spectune.models.targets import match_modules
    from spectune.tune.methods.base import meta_model

    match_modules(meta_model(model_dir), config.target_modules, config.exclude_modules)


def check_model(model_dir: Path) -> Any:
    """Fail early, before the results folder exists, on a model folder a run cannot use: not a
    causal LM, no usable tokenizer, no chat template, a tokenizer larger than the model's
    vocabulary, missing, truncated or corrupt weights (safetensors headers and sizes,
    PyTorch files loaded weights-only onto the meta device: a pickle is refused, not run).

    Returns:
        The model's tokenizer (checked; the run uses it, so it is loaded once).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from spectune.models.loading import read_model_config, weights_problem
    from spectune.models.tokenizer import load_tokenizer

    cfg = read_model_config(model_dir, f"model folder {model_dir}")
    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SpectuneError(
            f"model folder {model_dir} holds a {cfg.model_type!r} model, which is not a causal "
            "language model; spectune tunes causal LMs (AutoModelForCausalLM)"
        )
    try:
        tokenizer = load_tokenizer(model_dir)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SpectuneError(
            f"model folder {model_dir} has no usable tokenizer ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:160]}); copy the model's tokenizer files into it"
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise SpectuneError(
            f"model folder {model_dir}: its tokenizer has no chat template; spectune builds "
            "prompts with the model's chat template (tokenizer_config.json 'chat_template')"
        )
    vocab = getattr(cfg.get_text_config(), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise SpectuneError(
            f"model folder {model_dir}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocabulary has {vocab}; they do not belong together"
        )
    problem = weights_problem(model_dir)
    if problem:
        raise SpectuneError(f"model folder {model_dir}: {problem}")
    return tokenizer


def load_run_data(config: TuneConfig) -> RunData:
    """The run's data, as its objective reads it; with ``data.n_validation`` that many
    training records carved out (seeded by the run's seed,
    :func:`spectune.data.instructions.split_validation`) into ``validation``: disjoint from the
    records trained on and from the held-out questions.

    Raises:
        SpectuneError: bad data, or a validation split that leaves no training record.
    """
    from spectune.data.instructions import split_validation
    from spectune.tune.objectives import get_objective

    data = get_objective(config.objective).load_data(config)
    n = config.data.n_validation
    if n:
        data.train, data.validation = split_validation(data.train, n, config.seed)
        data.info.update(n_train=len(data.train), n_validation=len(data.validation),
                         validation=f"{n} of the training records (seeded by the run's seed), "
                         "disjoint from training and held-out")  # fmt: skip
    return data


def _check_resume_config(folder: RunFolder, config: TuneConfig) -> None:
    from spectune.tune.config import read_config_data

    saved = TuneConfig.from_dict(read_config_data(folder.path / CONFIG),
                                 source=str(folder.path / CONFIG), foreign_sections="drop")  # fmt: skip
    a, b = saved.to_dict(), config.to_dict()
    a.pop("output_dir"), b.pop("output_dir")
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise SpectuneError(
            f"--resume: this config differs from the one the run in {folder.path} started with "
            f"(in: {', '.join(diff)}); resume with the saved {CONFIG} or start over with "
            "--overwrite"
        )


# --------------------------------------------------------------------------- phases


def setup(config: TuneConfig, *, out: str | Path | None = None, overwrite: bool = False,
          resume: bool = False, progress: bool = True) -> Run:  # fmt: skip
    """Phase 1: check what can be checked without weights, take the results folder, write the
    resolved config. The caller's config is not changed (the run works on a copy).

    :func:`prepare` then :func:`take_folder` (several processes run the first on every rank,
    the second on rank 0 only)."""
    run = prepare(config, out=out, progress=progress, resume=resume)
    take_folder(run, overwrite=overwrite, resume=resume)
    return run


def prepare(config: TuneConfig, *, out: str | Path | None = None, progress: bool = True,
            resume: bool = False) -> Run:  # fmt: skip
    """Phase 1a: the checks that need no weights and touch no file (config, model folder,
    tokenizer, targets, training arguments, data, how the processes train together; an input
    inside the results folder; on ``resume`` the pinned inputs and config, the checkpoint's
    files: :mod:`spectune.tune.pins`): the :class:`Run`, its folder not yet taken."""
    from spectune.models.loading import resolve_model_dir
    from spectune.tune import pins as P
    from spectune.tune.methods import get_method
    from spectune.tune.objectives import get_objective
    from spectune.tune.scale import distributed

    config = copy.deepcopy(config)
    out = Path(out if out is not None else config.output_dir)
    config.output_dir = str(out)
    saved = P.read(out) if resume else None
    if saved is not None:
        check_resume_inputs(out, saved, config)
    # the inputs are read where they were when the run started, whatever the directory now
    reading = P.pinned_config(config, saved)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    world = distributed.world()
    method = get_method(config.method)
    notes = check_parallel(config, method, world.size)
    if world.size > 1:
        targs = config.training_arguments()
        per, acc = targs["per_device_train_batch_size"], targs["gradient_accumulation_steps"]
        backend = distributed.backend_for(targs.get("ddp_backend"))
        notes.append(f"trained by {world.size} processes ({backend}): global batch "
                     f"{per * acc * world.size} = {per} per process x {acc} accumulation "
                     f"step(s) x {world.size} processes")  # fmt: skip
    model_dir = resolve_model_dir(reading.model)
    tokenizer = check_model(model_dir)  # the run's tokenizer, loaded once
    check_targets(config, model_dir)
    training_arguments(config, out, progress=progress)  # a train.* typo names the key
    objective = get_objective(config.objective)
    data = load_run_data(reading)  # the validation split is carved before the folder is made
    objective.check_data(reading, data, tokenizer, model_dir)  # e.g. LiPO's batch memory
    pinned = P.pin(config, objective, model_dir, reading)
    P.check_outside(out, pinned)  # also on --resume: a complete run is not another's input
    if saved is not None:
        P.check_outside(out, saved)
        pinned = saved
    return Run(config, out, RunFolder(out, "tune"), method, objective, model_dir, data,
               progress=progress, main=world.main, world_size=world.size, notes=notes,
               tokenizer=tokenizer, pins=pinned, pins_saved=saved is not None)  # fmt: skip


def check_resume_inputs(out: Path, saved: dict[str, Any], config: TuneConfig) -> None:
    """Before a resume touches the folder: the config is the one the run started with, its
    inputs are where they were and unchanged, the last checkpoint's files can be loaded
    (for a complete run, returned as it is, the config only)."""
    from spectune.results.runfolder import RunFolder
    from spectune.tune import pins as P

    marker = RunFolder(out).read_marker()
    if marker is None:
        return
    P.check_config(out, saved, config)
    if marker.get("status") == "complete":
        return
    P.check_unchanged(out, saved)
    ckpts = out / "checkpoints"
    if ckpts.is_dir():
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(ckpts))
        if last:
            P.check_checkpoint(Path(last))


def take_folder(run: Run, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Phase 1b: take the results folder (refuse / resume / overwrite, then lock it) and write
    the resolved config; rank 0's alone.

    Returns:
        The folder's marker (:attr:`RunFolder.state`).
    """
    config, out, folder = run.config, run.out, run.folder
    if config.eval.before:
        from spectune.models.loading import check_cache_writable

        check_cache_writable(_judge_cache_dir())
    folder.open(overwrite=overwrite, resume=resume)
    try:
        if resume and not run.pins_saved and (out / CONFIG).is_file():
            _check_resume_config(folder, config)  # a run made before pins: its config.yaml
    except BaseException:
        folder.close()
        raise
    if resume:
        folder.resumed()
    run.resume = resume
    if folder.complete:
        return folder.state
    if not run.pins_saved and run.pins is not None:
        from spectune.tune.pins import PINS

        folder.own(PINS)  # what the run started from, for --resume
        write_json(out / PINS, run.pins)
    folder.own(CONFIG)
    write_text(out / CONFIG, f"# spectune tune --out {out} (resolved config)\n"
               + yaml_dump(config.to_dict()))  # fmt: skip
    return folder.state


def fsdp_requested(config: TuneConfig) -> bool:
    """Whether the run shards the model with FSDP: ``train.fsdp`` or ``accelerate launch``
    with an FSDP config (``ACCELERATE_USE_FSDP``)."""
    import os

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
        from spectune.tune.methods import METHODS, get_method

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
    import torch

    if not torch.cuda.is_available() and world_size > 1:
        return ["FSDP needs GPUs: on the CPU accelerate trains with DDP, every process holding "
                "the whole model"]  # fmt: skip
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


def _judge_kwargs(config: TuneConfig) -> dict[str, Any]:
    e = config.eval
    return dict(max_length=config.data.max_length, system=config.data.system,
                max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, ppl_chars=e.ppl_chars,
                ppl_window=e.ppl_window, ppl_stride=e.ppl_stride,
                latency_tokens=e.latency_tokens, latency_prompts=e.latency_prompts)  # fmt: skip


def _examples_hash(examples: list[InstructionExample]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.to_dolly(), sort_keys=True).encode())
    return h.hexdigest()


def _model_fingerprint(model_dir: Path) -> list[Any]:
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _judge_cache_dir() -> Path:
    from spectune.models.loading import cache_root

    return cache_root() / "judge"


def judge_base_model(model_dir: Path, tokenizer: Any, heldout: list[InstructionExample],
                     config: TuneConfig, *, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Judge the base model (in ``model_dtype``), cached under ``$SPECTUNE_CACHE/judge`` by
    model files, held-out data, settings, dtype and Python version (the forgetting text
    depends on it).

    The 4-bit methods are judged against this full-precision base too: it is the model the
    user starts from, so "forgetting" includes what quantization costs.

    Returns:
        :func:`spectune.judge.evaluate.judge`'s dict, with ``model``.
    """
    from spectune import __version__
    from spectune.judge.evaluate import judge
    from spectune.models import hardware
    from spectune.tune.methods.base import load_float_base, resolve_model_dtype

    dtype, _ = resolve_model_dtype(config.model_dtype)
    key_data = {"v": JUDGE_VERSION, "spectune": __version__, "model": str(model_dir.resolve()),
                "files": _model_fingerprint(model_dir), "heldout": _examples_hash(heldout),
                "settings": _judge_kwargs(config), "python": sys.version_info[:2]}  # fmt: skip
    if dtype != "float32":  # float32 keys stay those of the runs before model_dtype existed
        key_data["dtype"] = dtype
    if config.attn_implementation != "sdpa":
        key_data["attn"] = config.attn_implementation
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    cache = _judge_cache_dir() / f"{key}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text(encoding="utf-8"))
        except ValueError:
            pass  # a damaged entry is recomputed
    _say("judging the base model (cached for later runs)", progress)
    model = load_float_base(model_dir, dtype, attn_implementation=config.attn_implementation)
    model = hardware.to_compute_device(model)  # judged where the tuned model will be
    result = judge(model, tokenizer, heldout, progress=progress, **_judge_kwargs(config))
    result["model"] = f"base model, {dtype}"
    del model
    write_json(cache, result)
    return result


def _judge_context(run: Run) -> Any:
    from spectune.tune.objectives.base import JudgeContext

    return JudgeContext(run.config, run.tokenizer, run.data, run.model_dir, run.progress,
                        state=run.objective_state, out=run.out)  # fmt: skip


def judge_base(run: Run) -> None:
    """Phase 2: the objective's per-run state and training features; judge the base model
    (``before.json``): :func:`prepare_training` then :func:`judge_before`."""
    prepare_training(run)
    judge_before(run)


def prepare_training(run: Run) -> None:
    """Phase 2a: the objective's per-run state, the training and validation features (every
    process)."""
    from spectune.models.tokenizer import load_tokenizer

    if run.tokenizer is None:
        run.tokenizer = load_tokenizer(run.model_dir)
    run.objective_state = run.objective.prepare(_judge_context(run))
    run.train_data = run.objective.features(run.config, run.data, run.tokenizer,
                                            _judge_context(run))  # fmt: skip
    if run.data.validation:
        run.validation = run.objective.validation_features(run.config, run.data, run.tokenizer,
                                                           _judge_context(run))  # fmt: skip
        if not len(run.validation.dataset):
            raise SpectuneError(
                f"data.n_validation: none of the {len(run.data.validation)} validation examples "
                f"keeps a response token at data.max_length={run.config.data.max_length}; "
                "raise data.max_length"
            )
    check_world(run)
    tok = run.train_data.info
    val = f", {len(run.validation.dataset)} for validation" if run.validation else ""
    _say(f"data: {tok.get('n_kept', len(run.train_data.dataset))} training examples "
         f"({tok.get('n_truncated', 0)} truncated at {tok.get('max_length', '?')} tokens, "
         f"{tok.get('n_dropped', 0)} dropped){val}, {len(run.data.heldout)} held out",
         run.progress)  # fmt: skip


def judge_before(run: Run) -> None:
    """Phase 2b: judge the base model (``before.json``); rank 0's alone."""
    from spectune.models import hardware
    from spectune.tune.methods.base import load_float_base, resolve_model_dtype

    if not run.config.eval.before:
        return
    result = judge_base_model(run.model_dir, run.tokenizer, run.data.heldout, run.config,
                              progress=run.progress)  # fmt: skip
    run.before_predictions = list(result.get("predictions") or [])
    dtype, _ = resolve_model_dtype(run.config.model_dtype)
    attn = run.config.attn_implementation
    result["extras"] = run.objective.judge(_judge_context(run), lambda: hardware.to_compute_device(
        load_float_base(run.model_dir, dtype, attn_implementation=attn)), "before")  # fmt: skip
    run.before = Judging.from_dict(result)
    run.folder.own("before.json")
    write_json(run.out / "before.json", result)


def build(run: Run) -> None:
    """Phase 3: load the base model and make it trainable the method's way."""
    from transformers import set_seed

    from spectune.models import hardware

    set_seed(run.config.seed)  # the same on every rank: they all build the same start
    if run.main:
        run.folder.own("checkpoints")  # the method may keep files there (PiSSA's initial adapter)
    built = build_model(run.method, run.context, tokenizer=run.tokenizer)
    built.notes = [*run.notes, *built.notes,
                   *hardware.training_notes(run.config.training_arguments())]  # fmt: skip
    for note in built.notes:
        _say(f"note: {note}", run.progress)
    _say(f"{run.config.method}: {built.trainable:,} trainable parameters "
         f"({built.trainable_percent:.3f}% of {built.total:,})", run.progress)  # fmt: skip
    run.built = built


def build_model(method: Method, ctx: BuildContext, *, tokenizer: Any = None) -> Built:
    """The method's trainable model (base loaded by the method, counts filled in, train mode).

    Raises:
        SpectuneError: the method left no trainable parameter.
    """
    model, notes = method.load_base(ctx)
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


def training_arguments(config: TuneConfig, out: Path, *, progress: bool) -> Any:
    """``transformers.TrainingArguments`` of the run; bad keys and values name the key."""
    import dataclasses

    import torch
    from transformers import TrainingArguments

    from spectune import _check as check

    args = config.trainer_arguments()
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    check.unknown_keys("train", args, known, "TrainingArguments", list_valid=False)
    # a NaN loss must reach the log (FiniteLoss stops the run) instead of being averaged away
    args.setdefault("logging_nan_inf_filter", False)
    from spectune.tune.scale import distributed

    if distributed.active():  # the group spectune joined (gloo on the CPU, NCCL on GPUs)
        args["ddp_backend"] = distributed.backend_for(args.get("ddp_backend"))
    for flag in ("gradient_checkpointing", "activation_checkpointing"):
        if args.get(flag) and f"{flag}_kwargs" not in args:
            args[f"{flag}_kwargs"] = {"use_reentrant": False}  # needed with frozen base weights
    args.setdefault("save_strategy", "steps")
    try:
        return TrainingArguments(
            output_dir=str(out / "checkpoints"), seed=config.seed, data_seed=config.seed,
            report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=not progress,
            remove_unused_columns=False, label_names=["labels"], **args,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise SpectuneError(f"train: TrainingArguments refused the settings: {exc}") from None


def callbacks(run: Run) -> list[Any]:
    """The run's Trainer callbacks: loss log, first-step gradient check, the validation log
    and early stopping (with a validation split), the spectra watch
    (``eval.spectra_every_steps``), the method's and the objective's.

    Only rank 0 writes files: the others get no loss or validation log, wait for rank 0's
    spectra (which it computes alone) and for each checkpoint to be whole before rank 0
    records its files. Early stopping runs on every rank: the validation loss it reads is
    the same on all of them (:meth:`~spectune.tune.trainer.SpectuneTrainer.evaluate`),
    so they stop at the same step."""
    from spectune.tune.scale import distributed
    from spectune.tune.trainer import (
        EarlyStopping,
        FiniteLoss,
        GradientCheck,
        LossLog,
        RecordFiles,
        SpectraWatch,
        ValidationLog,
    )

    out: list[Any] = [LossLog(run.out / "train_log.csv")] if run.main else []
    out += [GradientCheck(), FiniteLoss(),
            RecordFiles(run.folder.record if run.main else None, sync=distributed.barrier)]  # fmt: skip
    args = run.config.training_arguments()
    if run.validation is not None:
        if run.main:
            out.append(ValidationLog(run.out / "validation_log.csv"))
        if args.get("early_stopping_patience") is not None:
            run.early_stopping = EarlyStopping(args["early_stopping_patience"],
                                               args.get("early_stopping_threshold") or 0.0)  # fmt: skip
            out.append(run.early_stopping)
    every = run.config.eval.spectra_every_steps
    if every is not None:  # rank 0 analyzes; the others wait for it (or its error)
        out.append(SpectraWatch(every, lambda: distributed.on_main(lambda: spectra_rows(run)),
                                run.out / "spectra_log.csv" if run.main else None))  # fmt: skip
    return [*out, *run.method.callbacks(run.config), *run.objective.callbacks(run.config)]


def spectra_rows(run: Run) -> list[dict[str, Any]]:
    """The spectra of the model as it is now (:meth:`Method.spectra`, without the base
    comparison), one row per analyzed matrix (the :data:`~spectune.tune.trainer.
    SPECTRA_COLUMNS`). The adapter is saved (into a temporary folder under ``checkpoints/``)
    only when the method's spectra read the saved folder (the LoRA family: its low-rank path)."""
    import math
    import tempfile

    from spectune.watch import analyze as analyze_spectra

    with tempfile.TemporaryDirectory(dir=run.out / "checkpoints", prefix="spectra-") as tmp:
        folder = Path(tmp) / "adapter"
        what = run.method.spectra(run.built, run.context, folder)
        if isinstance(what.source, (str, Path)) and Path(what.source).is_relative_to(folder):
            folder.mkdir()
            run.method.save(run.built, folder)
        details = analyze_spectra(what.source, peft=what.peft, delta=what.delta,
                                  base=run.model_dir if what.delta else None,
                                  precision=run.config.eval.spectra_precision,
                                  progress=False)  # fmt: skip
    rows = []
    for rec in details.to_dict(orient="records"):
        row = {k: rec.get(k) for k in ("layer_id", "longname", "status", "alpha", "stable_rank",
                                       "log_norm")}  # fmt: skip
        rows.append({k: None if isinstance(v, float) and not math.isfinite(v) else v
                     for k, v in row.items()})  # fmt: skip
    return rows


def train(run: Run) -> None:
    """Phase 4: train with the transformers Trainer (resuming from the last checkpoint)."""
    import warnings

    from transformers.trainer_utils import get_last_checkpoint

    from spectune._memory import PeakRSS
    from spectune.tune.trainer import LossLog, SpectuneTrainer

    # transformers 5 warns about its own internal use of renamed APIs at every step
    warnings.filterwarnings(
        "ignore", message=r".*deprecated and will be removed in v6", category=FutureWarning
    )
    from spectune.tune.scale import distributed

    args = training_arguments(run.config, run.out, progress=run.progress)
    run.device = str(args.device)
    if run.main:
        run.folder.own("checkpoints", "train_log.csv")
        if run.validation is not None:
            run.folder.own("validation_log.csv")
        if run.config.eval.spectra_every_steps is not None:
            run.folder.own("spectra_log.csv")
    cbs = callbacks(run)
    trainer = SpectuneTrainer(model=run.built.model, args=args, train_dataset=run.train_data.dataset,
                              data_collator=run.train_data.collator, callbacks=cbs,
                              objective=run.objective, method=run.method,
                              objective_state=run.objective_state,
                              validation=run.validation)  # fmt: skip
    if not run.progress:  # without tqdm, Trainer prints every log line instead
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    ckpts = run.out / "checkpoints"
    last = get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None
    run.last_checkpoint = last if run.resume else None
    if run.last_checkpoint:
        _say(f"resuming from {last}", run.progress)
        args.eval_on_start = False  # step 0 was evaluated in the first session (if asked)
    with PeakRSS() as peak:
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=run.last_checkpoint)
        run.train_seconds = time.perf_counter() - start
    run.train_offset = next((c.offset for c in cbs if isinstance(c, LossLog)), 0.0)
    # over every process: the tokens all of them trained on, the largest process's memory
    run.peak_rss = (int(distributed.largest(peak.bytes)), peak.exact)
    run.tokens = int(distributed.total(trainer.tokens))
    run.train_seconds = distributed.largest(run.train_seconds)
    run.global_step = int(result.global_step)
    state = trainer.state
    if run.validation is not None:  # the same on every rank (they agreed on every loss)
        es = run.early_stopping
        run.stopped_early = es is not None and es.stopped and state.global_step < state.max_steps
        if run.stopped_early:
            _say(f"stopped early at step {state.global_step}: the validation loss did not improve "
                 f"for {es.early_stopping_patience} evaluations", run.progress)  # fmt: skip
        best = state.best_model_checkpoint
        run.restored_best = bool(args.load_best_model_at_end and best)
        if run.restored_best:
            run.best_step = int(Path(best).name.rsplit("-", 1)[-1])
            _say(f"restored the best checkpoint: step {run.best_step} (validation loss "
                 f"{state.best_metric:.4f})", run.progress)  # fmt: skip
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
    from transformers import set_seed

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
    import torch

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
    publish_dir(lambda tmp: run.method.save(run.built, tmp), run.out / "adapter")
    run.adapter_bytes = _folder_bytes(run.out / "adapter")


def judge_tuned(run: Run) -> None:
    """Phase 6: judge the tuned model; write ``predictions.jsonl``."""
    from spectune.judge.evaluate import judge

    result = judge(run.built.model, run.tokenizer, run.data.heldout, progress=run.progress,
                   **_judge_kwargs(run.config))  # fmt: skip
    run.after_predictions = list(result["predictions"])
    run.correct_after = _correct(run.data.heldout, run.after_predictions)
    if run.before_predictions:
        run.correct_before = _correct(run.data.heldout, run.before_predictions)
    result["extras"] = run.objective.judge(_judge_context(run), lambda: run.built.model, "after")
    run.after = Judging.from_dict(result)
    run.folder.own("predictions.jsonl")
    write_text(run.out / "predictions.jsonl",
               _predictions(run.data.heldout, run.before_predictions, run.after_predictions))  # fmt: skip


def _correct(heldout: list[InstructionExample], answers: list[str]) -> list[bool]:
    """Per held-out question: is the answer right (the check of ``predictions.jsonl``)."""
    from spectune.data.tasks import answers_match

    return [answers_match(a, ex.response) for a, ex in zip(answers, heldout, strict=True)]


def _predictions(heldout: list[InstructionExample], before: list[str] | None,
                 after: list[str]) -> str:  # fmt: skip
    from spectune.data.tasks import answers_match

    lines = []
    for i, ex in enumerate(heldout):
        row = {"category": ex.category, "instruction": ex.instruction, "reference": ex.response,
               "after": after[i], "correct_after": answers_match(after[i], ex.response)}  # fmt: skip
        if before is not None:
            row["before"] = before[i]
            row["correct_before"] = answers_match(before[i], ex.response)
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def analyze(run: Run) -> None:
    """Phase 7: the spectra of what training changed (what the method says the engine reads),
    with the base model's metrics alongside; ``spectra/`` tables."""
    if not run.config.eval.spectra:
        return
    from spectune.report.files import write_results
    from spectune.watch import analyze as analyze_spectra
    from spectune.watch import summarize

    what = run.method.spectra(run.built, run.context, run.out / "adapter")
    # intruders: there is a tuned W to compare (an adapter, a full fine-tune, a sparse update)
    intruders = run.config.eval.intruders and (what.peft or what.delta or what.update)
    details = analyze_spectra(what.source, peft=what.peft, delta=what.delta, updates=what.update,
                              base=run.model_dir, precision=run.config.eval.spectra_precision,
                              intruders=intruders, progress=run.progress)  # fmt: skip
    summary = summarize(details)
    if "base_alpha" in details:
        ok = details[details["base_status"] == "success"]
        summary["base_alpha"] = float(ok["base_alpha"].mean()) if len(ok) else None
    run.details, run.summary = details, summary
    run.folder.own("spectra")
    if run.config.eval.compare_base:
        run.comparison = compare_base(run, what, details)
    if run.comparison is not None:
        summary["n_collapsed"] = run.comparison.summary["n_collapsed"]
        summary["n_flow_bent"] = run.comparison.summary["n_flow_bent"]
    write_results(details, summary, run.out / "spectra", plots=False)


def compare_base(run: Run, what: Any, details: Any) -> Any:
    """The tuned matrices (base + the update) against the base's, layer by layer: a
    :class:`~spectune.watch.compare.ModelComparison` (scale collapse, correlation flow),
    or None, with a note, when they cannot be formed.

    The tuned matrices are analyzed with the base alongside (its columns give the base's
    table): a LoRA-family adapter as W + Delta W (``peft="with_base"``; DoRA's magnitudes
    applied; a 4-bit base's rounding left out), a model (full fine-tuning) as it is, and a
    mapping of updates (FROG, ShiRA) as W_base + Delta W (``plus_base``).
    """
    from spectune.errors import SpectuneError
    from spectune.watch import analyze as analyze_spectra
    from spectune.watch.compare import base_and_tuned, compare_models

    kw = dict(base=run.model_dir, precision=run.config.eval.spectra_precision,
              progress=run.progress)  # fmt: skip
    try:
        if what.peft:
            tuned = analyze_spectra(what.source, peft="with_base", **kw)
        elif what.delta:
            tuned = analyze_spectra(what.source, layers=[str(n) for n in details["longname"]], **kw)
        else:
            tuned = analyze_spectra(what.source, plus_base=True, **kw)
        base_table, tuned_table = base_and_tuned(tuned)
        return compare_models(base_table, tuned_table, labels=("base", "tuned"))
    except SpectuneError as exc:
        run.built.notes.append(f"base against tuned comparison left out: {exc}")
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("spectune", "torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def log_rows(out: Path) -> list[dict[str, float]]:
    """The rows of a run's train_log.csv as numbers (empty when there is no log yet)."""
    path = out / "train_log.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(fh)]  # fmt: skip


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in ("", None) else None
    except ValueError:
        return None


def validation_points(out: Path) -> list[ValidationPoint]:
    """The validation curve of a run folder (``validation_log.csv``; empty without one)."""
    return [ValidationPoint(step=int(float(r["step"])), loss=float(r["validation_loss"]),
                            epoch=_float(r.get("epoch")), seconds=_float(r.get("seconds")))
            for r in _csv_rows(out / "validation_log.csv")]  # fmt: skip


def spectra_points(out: Path) -> list[SpectraPoint]:
    """Mean alpha and the fraction of fitted matrices with alpha < 2 per step of a run's
    ``spectra_log.csv`` (empty without one); a matrix counts as fitted when its status is
    ``success`` and its alpha finite (as in ``spectra/summary.json``)."""
    import math

    steps: dict[int, list[dict[str, str]]] = {}
    for r in _csv_rows(out / "spectra_log.csv"):
        steps.setdefault(int(float(r["step"])), []).append(r)
    points = []
    for step, rows in sorted(steps.items()):
        alphas = [a for r in rows if r.get("status") == "success"
                  and (a := _float(r.get("alpha"))) is not None and math.isfinite(a)]  # fmt: skip
        points.append(SpectraPoint(
            step=step, mean_alpha=sum(alphas) / len(alphas) if alphas else None,
            frac_alpha_below_2=sum(a < 2 for a in alphas) / len(alphas) if alphas else None,
            n_layers=len(rows), n_fitted=len(alphas), seconds=_float(rows[0].get("seconds"))))  # fmt: skip
    return points


def _validation(run: Run) -> Validation | None:
    if run.validation is None:
        return None
    args = run.config.training_arguments()
    curve = validation_points(run.out)
    best = min(curve, key=lambda p: (p.loss, p.step)) if curve else None
    es = run.early_stopping
    return Validation(
        n_examples=len(run.validation.dataset),
        strategy=args["eval_strategy"],
        every_steps=args.get("eval_steps") if args["eval_strategy"] == "steps" else None,
        curve=curve,
        best_step=None if best is None else best.step,
        best_loss=None if best is None else best.loss,
        adapter_step=run.best_step if run.restored_best else run.global_step,
        restored_best=run.restored_best,
        early_stopping_patience=None if es is None else es.early_stopping_patience,
        early_stopping_threshold=None if es is None else es.early_stopping_threshold,
        stopped_early=run.stopped_early,
        seconds=sum(p.seconds or 0.0 for p in curve),
    )


def collect_metrics(run: Run) -> RunMetrics:
    """The run's :class:`RunMetrics` from what the phases measured."""
    import torch

    log = log_rows(run.out)
    built, after = run.built, run.after
    targs = run.config.training_arguments()
    per_device = int(targs["per_device_train_batch_size"])
    global_batch = per_device * int(targs["gradient_accumulation_steps"]) * run.world_size
    return RunMetrics(
        run=RunInfo(name=run.out.name, method=run.config.method, objective=run.config.objective,
                    model=run.config.model, model_dir=str(run.model_dir), seed=run.config.seed,
                    device=run.device, threads=torch.get_num_threads(),
                    world_size=run.world_size,
                    resumed=bool(run.last_checkpoint), started=run.folder.state.get("started"),
                    versions=_versions()),
        config=run.config.to_dict(),
        settings={col: run.config.get(key) for col, key in run.method.settings.items()},
        data={**run.data.info, "tokenize": run.train_data.info},
        before=run.before,
        after=after,
        learning=Learning.compare(run.before, after, correct_before=run.correct_before,
                                  correct_after=run.correct_after),
        forgetting=Forgetting.compare(run.before, after),
        cost=Cost(
            train_seconds=run.train_offset + run.train_seconds,
            train_seconds_this_session=run.train_seconds,
            steps=run.global_step,
            tokens=run.tokens,
            tokens_per_second=run.tokens / run.train_seconds if run.train_seconds > 0 else None,
            peak_rss_bytes=run.peak_rss[0],
            peak_rss_exact=run.peak_rss[1],
            trainable=built.trainable,
            total=built.total,
            trainable_percent=built.trainable_percent,
            adapter_bytes=run.adapter_bytes,
            ms_per_token=None if after.latency is None else after.latency.ms_per_token,
            ms_per_token_before=None if run.before is None or run.before.latency is None
            else run.before.latency.ms_per_token,
        ),
        training=Training(
            first_loss=log[0].get("loss") if log else None,
            final_loss=log[-1].get("loss") if log else None,
            global_step=run.global_step,
            epochs=log[-1].get("epoch") if log else None,
            per_device_batch=per_device,
            global_batch=global_batch,
        ),
        spectra=None if run.summary is None else SpectraSummary.from_summary(run.summary),
        method_extras=run.method.extras(built),
        objective_extras={},
        notes=list(built.notes),
        validation=_validation(run),
        spectra_curve=spectra_points(run.out),
    )  # fmt: skip


def write_run_plots(plots: Path, metrics: RunMetrics, log: list[dict], details: Any,
                    extra: dict[str, Any] | None = None) -> list[Path]:  # fmt: skip
    """The run's figures as PNG files (each written atomically); ``extra`` are the method's."""
    from spectune.report import plots as P
    from spectune.report import tune_plots as T
    from spectune.report.files import save_figures

    figures = {"loss_curve.png": T.loss_curve({metrics.run.name: log}),
               "learning_forgetting.png": T.learning_forgetting([metrics])}  # fmt: skip
    if metrics.validation is not None and metrics.validation.curve:
        figures["validation_curve.png"] = T.validation_curve(log, metrics.validation)
    if metrics.spectra_curve:
        figures["spectra_vs_validation.png"] = T.spectra_vs_validation(
            metrics.spectra_curve, metrics.validation
        )
    if details is not None and (details["status"] == "success").any():
        figures["alpha_hist.png"] = P.alpha_histogram(details, title="Adapter alphas")
        if "base_alpha" in details:
            figures["alpha_vs_base.png"] = P.base_vs_adapter_alpha(details)
    figures.update(extra or {})
    return save_figures(figures, plots)


def write_spectra_files(spectra: Path, details: Any, comparison: Any) -> list[Path]:
    """The watch files of a run's ``spectra/``: the base against tuned comparison
    (compare.csv, compare.json, flow.csv, scale_collapse.png, correlation_flow.png) and the
    intruder figure."""
    from spectune.report.files import save_figures, spectral_figures, write_comparison_results

    written = save_figures(spectral_figures(details), spectra)
    if comparison is not None:
        written += write_comparison_results(comparison, spectra, plots=True)
    return written


def report(run: Run, *, merge: bool = False) -> RunMetrics:
    """Phase 8: metrics.json, plots, the merged model (``merge``), report.html; the run is
    then marked complete."""
    from spectune.report.html import write_run_report

    metrics = collect_metrics(run)
    run.folder.own("plots")
    write_run_plots(run.out / "plots", metrics, log_rows(run.out), run.details,
                    run.method.figures(run.built))  # fmt: skip
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
    from spectune.tune.scale import distributed

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
                distributed.on_every_rank(lambda: prepare_training(run))
                distributed.on_main(lambda: judge_before(run))
                distributed.on_every_rank(lambda: build(run))
                check_same_start(run)
                train(run)
                return TuneResult(run.out, distributed.on_main(lambda: finish(run, merge=merge)))
            except Exception as exc:  # an interruption (KeyboardInterrupt) stays "running"
                if run.main:
                    run.folder.fail(f"{type(exc).__name__}: {exc}")
                raise
            finally:
                run.cleanup()


def finish(run: Run, *, merge: bool = False) -> RunMetrics:
    """Phases 5 to 8 (save, judge the tuned model, analyze, report): rank 0's alone."""
    save(run)
    judge_tuned(run)
    analyze(run)
    return report(run, merge=merge)


def check_same_start(run: Run) -> None:
    """Every rank must start from the same model (the same seed builds the same adapter):
    refuse, on every rank, when a rank's trainable tensors differ from rank 0's."""
    from spectune.tune.scale import distributed

    if not distributed.active():
        return
    import torch

    with torch.no_grad():
        mine = [float(p.detach().double().sum()) for p in run.built.model.parameters()
                if p.requires_grad]  # fmt: skip
    first = distributed.on_main(lambda: mine)
    same = first == mine
    distributed.agree(None if same else (
        f"rank {distributed.world().rank} built other starting weights than rank 0 for method "
        f"{run.config.method!r} (its initialization is not seeded the same on every "
        "process); train it in one process"))  # fmt: skip


__all__ = [
    "Run",
    "TuneResult",
    "analyze",
    "build",
    "build_model",
    "callbacks",
    "check_parallel",
    "check_same_start",
    "check_targets",
    "check_world",
    "collect_metrics",
    "compare_base",
    "finish",
    "fsdp_requested",
    "judge_base",
    "judge_base_model",
    "judge_before",
    "judge_tuned",
    "load_run_data",
    "load_trained",
    "log_rows",
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
    "write_run_plots",
    "write_spectra_files",
]
