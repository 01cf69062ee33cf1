"""The fine-tuning recipe: one linear run from config to results folder.

:func:`tune` reads top to bottom::

    take the results folder (refuse / resume / overwrite: spectune.finetune.runfolder)
    data       -> train examples (tokenized, response-only labels) and held-out examples
    before     -> judge the base model (cached per model, data and settings)
    build      -> the model of the method (spectune.finetune.methods)
    train      -> transformers Trainer (+ callbacks: loss log, FROG noise step, gradient check)
    save       -> the adapter (peft / FROG format / full model), optionally the merged model
    after      -> judge the tuned model
    spectra    -> the adapter's (or the weight delta's) spectra beside the base model's
    write      -> metrics.json, predictions.jsonl, spectra/, plots/, report.html

Results folder (every file written atomically; ``run.json`` is the marker):

====================  ===============================================================
``config.yaml``       the resolved config (every default written out)
``run.json``          status (running / complete), times, files written
``before.json``       the base model's measurements
``train_log.csv``     step, epoch, loss, learning_rate, grad_norm, elapsed_s
``checkpoints/``      Trainer checkpoints (what ``--resume`` continues from)
``adapter/``          peft adapter, FROG adapter, or the full model (method ``full``)
``merged/``           with ``merge``: a plain transformers model folder
``metrics.json``      learning, forgetting, cost, spectra summary (see :func:`tune`)
``predictions.jsonl`` every held-out question, reference, answers before and after
``spectra/``          details.csv / details.json / summary.json of the adapter spectra
``plots/``            loss_curve, learning_forgetting, alpha_hist, alpha_vs_base (+ FROG)
``report.html``       one self-contained page
====================  ===============================================================
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune._io import publish_dir, write_json, write_text
from spectune.errors import SpectuneError
from spectune.finetune.config import LORA_METHODS, QUANT_METHODS, TuneConfig, yaml_dump
from spectune.finetune.runfolder import CONFIG, RunFolder

if TYPE_CHECKING:
    from spectune.finetune.data import InstructionExample
    from spectune.finetune.methods import Built

#: version of the "before" measurements' cache entries (bump when judging changes)
JUDGE_VERSION = 1

LOG_COLUMNS = ["step", "epoch", "loss", "learning_rate", "grad_norm", "elapsed_s"]


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def load_run_data(
    config: TuneConfig,
) -> tuple[list[InstructionExample], list[InstructionExample], dict[str, Any]]:
    """The run's training and held-out examples, and a description of where they came from.

    ``data.train = "tasks"``: the bundled task set generated from the run seed
    (``n_train`` / ``n_eval`` examples). A file: loaded as Dolly/Alpaca; the held-out examples
    are ``data.eval`` or, without it, a seeded ``eval_fraction`` split of the file; at most
    ``n_eval`` of them are used.
    """
    from spectune.finetune.data import load_instructions
    from spectune.finetune.tasks import TASKS_VERSION, generate_task_set

    d = config.data
    if d.train == "tasks":
        train, heldout = generate_task_set(d.n_train, d.n_eval, seed=config.seed)
        info = {"source": "spectune task set", "version": TASKS_VERSION, "seed": config.seed}
        return train, heldout, {**info, "n_train": len(train), "n_eval": len(heldout)}
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
        order = list(range(len(train)))
        random.Random(f"spectune-split:{config.seed}").shuffle(order)
        n_hold = min(len(train) - 1, max(1, math.ceil(d.eval_fraction * len(train))))
        held = set(order[:n_hold])
        heldout = [ex for i, ex in enumerate(train) if i in held]
        train = [ex for i, ex in enumerate(train) if i not in held]
        split = f"{n_hold} of the file's examples (eval_fraction {d.eval_fraction}, seeded)"
    heldout = heldout[: d.n_eval]
    return train, heldout, {"source": d.train, "heldout": split,
                            "n_train": len(train), "n_eval": len(heldout)}  # fmt: skip


def _examples_hash(examples: list[InstructionExample]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.to_dolly(), sort_keys=True).encode())
    return h.hexdigest()


def check_targets(config: TuneConfig, model_dir: Path) -> None:
    """Fail early (shapes only, no weights read) when target_modules match nothing."""
    if config.method == "full":
        return
    from spectune.finetune.methods import meta_model
    from spectune.frog.model import match_modules

    match_modules(meta_model(model_dir), config.target_modules, config.exclude_modules)


# --------------------------------------------------------------------------- judging


def _judge_kwargs(config: TuneConfig) -> dict[str, Any]:
    e = config.eval
    return dict(max_length=config.data.max_length, system=config.data.system,
                max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, ppl_chars=e.ppl_chars,
                ppl_window=e.ppl_window, ppl_stride=e.ppl_stride,
                latency_tokens=e.latency_tokens, latency_prompts=e.latency_prompts)  # fmt: skip


def _model_fingerprint(model_dir: Path) -> list[Any]:
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _judge_cache_dir() -> Path:
    from spectune.models import cache_root

    return cache_root() / "judge"


def judge_base(
    model_dir: Path, tokenizer: Any, heldout: list[InstructionExample], config: TuneConfig,
    *, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Judge the float32 base model, cached under ``$SPECTUNE_CACHE/judge`` by model files,
    held-out data, settings and Python version (the forgetting text depends on it).

    The 4-bit methods are judged against this full-precision base too: it is the model the
    user starts from, so "forgetting" includes what quantization costs.
    """
    from spectune import __version__
    from spectune.finetune.evaluate import judge

    key_data = {"v": JUDGE_VERSION, "spectune": __version__, "model": str(model_dir.resolve()),
                "files": _model_fingerprint(model_dir), "heldout": _examples_hash(heldout),
                "settings": _judge_kwargs(config), "python": sys.version_info[:2]}  # fmt: skip
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    cache = _judge_cache_dir() / f"{key}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text(encoding="utf-8"))
        except ValueError:
            pass  # a damaged entry is recomputed
    from spectune.finetune.methods import load_base

    _say("judging the base model (cached for later runs)", progress)
    model, _ = load_base(model_dir)
    result = judge(model, tokenizer, heldout, progress=progress, **_judge_kwargs(config))
    result["model"] = "base model, float32"
    del model
    write_json(cache, result)
    return result


# --------------------------------------------------------------------------- training


def _trainer_classes() -> tuple[type, type]:
    """The Trainer subclass and the callback base (imported lazily: transformers is slow)."""
    from transformers import Trainer, TrainerCallback

    from spectune.finetune.evaluate import decoder_and_head, labelled_nll

    class SpectuneTrainer(Trainer):
        """Trainer that computes the output head only where a label is, and checkpoints FROG
        models in FROG's own format (indices + values), restoring them on resume."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """Mean token NLL of the labelled positions, as the model's own loss, but the
            vocabulary projection runs only on those positions (about 4 of 40 tokens of an
            instruction example; on SmolLM2 the 49152 x 576 head is a fifth of the FLOPs)."""
            parts = decoder_and_head(model)
            if parts is None or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            nll, n = labelled_nll(
                parts, inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
            )
            if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
                # Trainer then expects the loss already divided across gradient accumulation
                return nll / num_items_in_batch
            return nll / max(n, 1)

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            from spectune.frog import frog_modules, save_frog

            if not frog_modules(self.model):
                return super()._save(output_dir, state_dict)
            save_frog(self.model, output_dir or self.args.output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            from spectune.frog import frog_modules

            model = model if model is not None else self.model
            if not frog_modules(model):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            load_frog_values(model, Path(resume_from_checkpoint))

    return SpectuneTrainer, TrainerCallback


def load_frog_values(model: Any, folder: Path) -> None:
    """Put the delta values of a FROG checkpoint into a FROG model with the same layers."""
    import torch

    from spectune.frog import frog_modules
    from spectune.frog.model import _read_adapter

    _, targets, tensors = _read_adapter(folder)
    layers = frog_modules(model)
    if set(targets) != set(layers):
        raise SpectuneError(
            f"checkpoint {folder} holds FROG layers for other modules than this run's; resume "
            "with the config the run was started with"
        )
    for name, layer in layers.items():
        idx = tensors[name + ".frog_indices"].to(torch.int64)
        if not torch.equal(idx, layer.indices.cpu()):
            raise SpectuneError(
                f"checkpoint {folder}: the trainable entries of {name} differ from this run's "
                "plan; resume with the same model and config"
            )
        with torch.no_grad():
            layer.delta.copy_(tensors[name + ".frog_values"].to(layer.delta.dtype))


def _callbacks(config: TuneConfig, folder: RunFolder) -> list[Any]:
    """Loss log (train_log.csv), FROG noise step, first-step gradient check."""
    _, TrainerCallback = _trainer_classes()

    class LossLog(TrainerCallback):
        """Rewrites train_log.csv (atomically) at every log; elapsed_s counts training time
        across resumes."""

        def __init__(self) -> None:
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
            write_text(folder.path / "train_log.csv", buf.getvalue())

    class FrogNoiseStep(TrainerCallback):
        """Guided noise follows the optimizer step: t = global_step x accumulation steps at
        the start of each step, so a resumed run draws the noise it would have drawn."""

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            from spectune.frog import set_frog_step

            set_frog_step(model, state.global_step * args.gradient_accumulation_steps)

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

    callbacks = [LossLog(), GradientCheck()]
    if config.method == "frog":
        callbacks.append(FrogNoiseStep())
    return callbacks


class _CountingCollator:
    """The padding collator, counting the real tokens it batches (for tokens/s)."""

    def __init__(self, pad_id: int) -> None:
        from spectune.finetune.data import InstructionCollator

        self.inner = InstructionCollator(pad_id)
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


def training_arguments(config: TuneConfig, out: Path, *, progress: bool) -> Any:
    """``transformers.TrainingArguments`` of the run; bad keys and values name the key."""
    import dataclasses

    import torch
    from transformers import TrainingArguments

    from spectune import _check as check

    args = config.training_arguments()
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    check.unknown_keys("train", args, known, "TrainingArguments")
    for flag in ("gradient_checkpointing", "activation_checkpointing"):
        if args.get(flag) and f"{flag}_kwargs" not in args:
            args[f"{flag}_kwargs"] = {"use_reentrant": False}  # needed with frozen base weights
    try:
        return TrainingArguments(
            output_dir=str(out / "checkpoints"), seed=config.seed, data_seed=config.seed,
            report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=not progress,
            remove_unused_columns=False, label_names=["labels"], save_strategy="steps", **args,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise SpectuneError(f"train: TrainingArguments refused the settings: {exc}") from None


# --------------------------------------------------------------------------- saving


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save_adapter(built: Built, config: TuneConfig, path: Path) -> int:
    """Write the trained part (atomically, as one folder); returns its size in bytes.

    LoRA family: peft's ``adapter_config.json`` + ``adapter_model.safetensors`` (loads with
    ``PeftModel.from_pretrained``). FROG: :func:`spectune.frog.save_frog`. full: the whole
    model and tokenizer (``from_pretrained`` works).
    """

    def write(tmp: Path) -> None:
        if config.method == "frog":
            from spectune.frog import save_frog

            save_frog(built.model, tmp)
        else:
            built.model.save_pretrained(tmp)
            if config.method == "full":
                built.tokenizer.save_pretrained(tmp)

    publish_dir(write, path)
    return _folder_bytes(path)


def save_merged(
    built: Built, config: TuneConfig, model_dir: Path, adapter: Path, path: Path
) -> None:
    """A plain transformers model folder with the update merged into the weights.

    The 4-bit methods merge into a freshly loaded float32 base (merging into 4-bit weights
    would round the update away). Changes ``built.model`` for lora/dora/frog (call last).
    """
    from spectune.finetune.methods import load_base

    if config.method in QUANT_METHODS:
        from peft import PeftModel

        base, _ = load_base(model_dir)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    elif config.method in LORA_METHODS:
        merged = built.model.merge_and_unload()
    elif config.method == "frog":
        from spectune.frog import merge_frog

        merged = merge_frog(built.model)
    else:
        merged = built.model

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        built.tokenizer.save_pretrained(tmp)

    publish_dir(write, path)


# --------------------------------------------------------------------------- spectra


def adapter_spectra(built: Built, config: TuneConfig, model_dir: Path, adapter: Path,
                    *, progress: bool) -> Any:  # fmt: skip
    """The spectra of what training changed, with the base model's metrics alongside.

    LoRA family: the saved adapter, one row per pair (Delta W = scaling B A, exact rank-r
    route). FROG: the sparse delta D of each target. full: W_tuned - W_base of every matrix
    (with rank90). Rows carry ``base_alpha`` etc. of the matching base matrix.
    """
    from spectune.spectral import analyze

    opts = dict(base=model_dir, precision=config.eval.spectra_precision, progress=progress)
    if config.method in LORA_METHODS:
        return analyze(adapter, peft=True, **opts)
    if config.method == "frog":
        from spectune.frog import frog_modules

        deltas = {f"{n}.weight": m.delta_weight() for n, m in frog_modules(built.model).items()}
        return analyze(deltas, **opts)
    return analyze(built.model, delta=True, **opts)


# --------------------------------------------------------------------------- metrics


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("spectune", "torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    return after - before


def summarize_judging(before: dict | None, after: dict) -> tuple[dict, dict]:
    """(learning, forgetting) from the before/after measurements."""
    get = lambda d, *keys: None if d is None else d[keys[0]][keys[1]]  # noqa: E731
    learning = {
        "accuracy_before": get(before, "accuracy", "accuracy"),
        "accuracy_after": after["accuracy"]["accuracy"],
        "accuracy_gain": _change(
            get(before, "accuracy", "accuracy"), after["accuracy"]["accuracy"]
        ),
        "heldout_loss_before": get(before, "heldout_loss", "loss"),
        "heldout_loss_after": after["heldout_loss"]["loss"],
    }
    p0, p1 = get(before, "perplexity", "perplexity"), after["perplexity"]["perplexity"]
    forgetting = {
        "perplexity_before": p0,
        "perplexity_after": p1,
        "perplexity_change": _change(p0, p1),
        "perplexity_ratio": None if p0 is None else p1 / p0,
    }
    return learning, forgetting


def log_rows(out: Path) -> list[dict[str, float]]:
    """The rows of a run's train_log.csv as numbers (empty when there is no log yet)."""
    path = out / "train_log.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(fh)]  # fmt: skip


def _predictions(heldout: list[InstructionExample], before: dict | None, after: dict) -> str:
    from spectune.finetune.tasks import answers_match

    lines = []
    for i, ex in enumerate(heldout):
        row = {"category": ex.category, "instruction": ex.instruction, "reference": ex.response,
               "after": after["predictions"][i],
               "correct_after": answers_match(after["predictions"][i], ex.response)}  # fmt: skip
        if before is not None:
            row["before"] = before["predictions"][i]
            row["correct_before"] = answers_match(before["predictions"][i], ex.response)
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """One flat row of a run's metrics (for results.csv of sweeps and the demo)."""
    cost, learn, forget = metrics["cost"], metrics["learning"], metrics["forgetting"]
    spectra = metrics.get("spectra") or {}
    lora = metrics["run"]["method"] in LORA_METHODS  # r etc. mean nothing to frog / full
    return {
        "name": metrics["run"]["name"],
        "method": metrics["run"]["method"],
        **{
            k: metrics["config"].get(k) if lora else None
            for k in ("r", "lora_alpha", "lora_dropout")
        },  # fmt: skip
        "frog_budget": (metrics.get("frog") or {}).get("budget"),
        "trainable": cost["trainable"],
        "trainable_percent": cost["trainable_percent"],
        "train_loss": metrics["training"]["final_loss"],
        "accuracy_before": learn["accuracy_before"],
        "accuracy_after": learn["accuracy_after"],
        "heldout_loss_after": learn["heldout_loss_after"],
        "perplexity_before": forget["perplexity_before"],
        "perplexity_after": forget["perplexity_after"],
        "perplexity_change": forget["perplexity_change"],
        "train_seconds": cost["train_seconds"],
        "tokens_per_second": cost["tokens_per_second"],
        "peak_rss_mib": cost["peak_rss_bytes"] / 2**20,
        "adapter_mib": cost["adapter_bytes"] / 2**20,
        "ms_per_token": cost["ms_per_token"],
        "adapter_alpha": spectra.get("alpha"),
        "base_alpha": spectra.get("base_alpha"),
    }


# --------------------------------------------------------------------------- the run


@dataclass
class TuneResult:
    """Where a run went and what it measured (the content of ``metrics.json``)."""

    out: Path
    metrics: dict[str, Any]


def _check_resume_config(folder: RunFolder, config: TuneConfig) -> None:
    from spectune.finetune.config import read_config_data

    saved = TuneConfig.from_dict(
        read_config_data(folder.path / CONFIG), source=str(folder.path / CONFIG)
    )
    a, b = saved.to_dict(), config.to_dict()
    a.pop("output_dir"), b.pop("output_dir")
    if a != b:
        diff = sorted(k for k in a if a[k] != b.get(k))
        raise SpectuneError(
            f"--resume: this config differs from the one the run in {folder.path} started with "
            f"(in: {', '.join(diff)}); resume with the saved {CONFIG} or start over with "
            "--overwrite"
        )


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
        config: the run config.
        out: results folder (default ``config.output_dir``).
        overwrite: replace a run already in ``out`` (only files that run wrote are removed).
        resume: continue an interrupted run in ``out`` from its last checkpoint (the config
            must be the one it started with); a complete run is returned as it is.
        merge: also write ``merged/``, a plain transformers model with the update merged.
        progress: progress bars and status lines on stderr.

    Returns:
        A :class:`TuneResult`; ``metrics`` holds ``run``, ``config``, ``data``, ``before``,
        ``after`` (each: accuracy, heldout_loss, perplexity, latency, seconds), ``learning``,
        ``forgetting``, ``cost``, ``training``, ``spectra`` and, for FROG, ``frog``.

    Raises:
        SpectuneError: bad config or data, a results folder that cannot be used, a run that
            gets no gradient.
    """
    import warnings

    import torch
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from spectune._memory import PeakRSS
    from spectune.finetune.data import pad_token_id, tokenize_examples
    from spectune.finetune.evaluate import judge
    from spectune.finetune.methods import build, load_tokenizer
    from spectune.models import resolve_model_dir

    # transformers 5 warns about its own internal use of renamed APIs at every step
    warnings.filterwarnings(
        "ignore", message=r".*deprecated and will be removed in v6", category=FutureWarning
    )
    out = Path(out if out is not None else config.output_dir)
    config.output_dir = str(out)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    folder = RunFolder(out, "tune")
    # what can be checked without loading weights is checked before the folder is touched
    model_dir = resolve_model_dir(config.model)
    check_targets(config, model_dir)
    train_examples, heldout, data_info = load_run_data(config)
    folder.open(overwrite=overwrite, resume=resume)
    if resume and (out / CONFIG).is_file():
        _check_resume_config(folder, config)
    if folder.complete:
        _say(f"{out} holds a complete run; nothing to do", progress)
        return TuneResult(out, json.loads((out / "metrics.json").read_text(encoding="utf-8")))
    folder.own(CONFIG)
    write_text(out / CONFIG, f"# spectune tune --out {out} (resolved config)\n"
               + yaml_dump(config.to_dict()))  # fmt: skip
    set_seed(config.seed)

    # data
    tokenizer = load_tokenizer(model_dir)
    features, stats = tokenize_examples(train_examples, tokenizer,
                                        max_length=config.data.max_length, system=config.data.system)  # fmt: skip
    _say(f"data: {stats.n_kept} training examples ({stats.n_truncated} truncated at "
         f"{stats.max_length} tokens, {stats.n_dropped} dropped), {len(heldout)} held out", progress)  # fmt: skip
    args = training_arguments(config, out, progress=progress)

    # before
    before = None
    if config.eval.before:
        before = judge_base(model_dir, tokenizer, heldout, config, progress=progress)
        folder.own("before.json")
        write_json(out / "before.json", before)

    # build
    set_seed(config.seed)
    built = build(config, model_dir, progress=progress)
    for note in built.notes:
        _say(f"note: {note}", progress)
    _say(f"{config.method}: {built.trainable:,} trainable parameters "
         f"({built.trainable_percent:.3f}% of {built.total:,})", progress)  # fmt: skip

    # train
    Trainer, _ = _trainer_classes()
    collator = _CountingCollator(pad_token_id(tokenizer))
    folder.own("checkpoints", "train_log.csv")
    callbacks = _callbacks(config, folder)  # callbacks[0] logs the loss and the elapsed time
    trainer = Trainer(model=built.model, args=args, train_dataset=features,
                      data_collator=collator, callbacks=callbacks)  # fmt: skip
    if not progress:  # without tqdm, Trainer prints every log line instead
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    last = get_last_checkpoint(str(out / "checkpoints")) if (out / "checkpoints").is_dir() else None
    if resume and last:
        _say(f"resuming from {last}", progress)
    with PeakRSS() as peak:
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=last)
        train_seconds = time.perf_counter() - start
    built.model.eval()

    # save
    folder.own("adapter")
    adapter_bytes = save_adapter(built, config, out / "adapter")

    # after
    after = judge(built.model, tokenizer, heldout, progress=progress, **_judge_kwargs(config))
    learning, forgetting = summarize_judging(before, after)
    folder.own("predictions.jsonl")
    write_text(out / "predictions.jsonl", _predictions(heldout, before, after))

    # spectra
    details = summary = None
    if config.eval.spectra:
        from spectune.spectral import summarize

        details = adapter_spectra(built, config, model_dir, out / "adapter", progress=progress)
        summary = summarize(details)
        if "base_alpha" in details:
            ok = details[details["base_status"] == "success"]
            summary["base_alpha"] = float(ok["base_alpha"].mean()) if len(ok) else None

    # metrics
    log = log_rows(out)
    ms_before = (before or {}).get("latency") or {}
    metrics: dict[str, Any] = {
        "run": {
            "name": out.name,
            "method": config.method,
            "model": config.model,
            "model_dir": str(model_dir),
            "seed": config.seed,
            "device": str(args.device),
            "threads": torch.get_num_threads(),
            "resumed": bool(resume and last),
            "started": folder.state.get("started"),
            **_versions(),
        },  # fmt: skip
        "config": config.to_dict(),
        "data": {**data_info, "tokenize": stats.to_dict()},
        "before": None
        if before is None
        else {k: v for k, v in before.items() if k != "predictions"},
        "after": {k: v for k, v in after.items() if k != "predictions"},
        "learning": learning,
        "forgetting": forgetting,
        "cost": {
            # across resumes: the time up to the checkpoint resumed from, plus this session
            "train_seconds": callbacks[0].offset + train_seconds,
            "train_seconds_this_session": train_seconds,
            "steps": int(result.global_step),
            "tokens": collator.tokens,  # this session's; so is tokens_per_second
            "tokens_per_second": collator.tokens / train_seconds if train_seconds > 0 else None,
            "peak_rss_bytes": peak.bytes,
            "peak_rss_exact": peak.exact,
            "trainable": built.trainable,
            "total": built.total,
            "trainable_percent": built.trainable_percent,
            "adapter_bytes": adapter_bytes,
            "ms_per_token": (after.get("latency") or {}).get("ms_per_token"),
            "ms_per_token_before": ms_before.get("ms_per_token"),
        },
        "training": {
            "first_loss": log[0]["loss"] if log else None,
            "final_loss": log[-1]["loss"] if log else None,
            "global_step": int(result.global_step),
            "epochs": log[-1].get("epoch") if log else None,
        },
        "spectra": None
        if summary is None
        else {
            k: summary.get(k)
            for k in (
                "n_layers",
                "n_analyzed",
                "alpha",
                "alpha_weighted",
                "log_norm",
                "stable_rank",
                "base_alpha",
                "rank90",
                "status_counts",
                "warning_counts",
            )
        },  # fmt: skip
        "frog": None if built.frog_plan is None else built.frog_plan.summary(),
        "notes": built.notes,
    }

    # write
    if details is not None:
        from spectune.cli.analyze import write_results

        folder.own("spectra")
        write_results(details, summary, out / "spectra", plots=False)
    folder.own("plots")
    write_run_plots(out / "plots", metrics, log, details, built.frog_plan)
    if merge:
        folder.own("merged")
        save_merged(built, config, model_dir, out / "adapter", out / "merged")
        metrics["run"]["merged"] = str(out / "merged")
    folder.own("metrics.json")
    write_json(out / "metrics.json", metrics)
    from spectune.report.html import write_run_report

    folder.own("report.html")
    write_run_report(out)
    folder.finish()
    return TuneResult(out, metrics)


def write_run_plots(
    plots: Path, metrics: dict, log: list[dict], details: Any, plan: Any
) -> list[Path]:
    """The run's figures as PNG files (each written atomically)."""
    from spectune.cli._common import save_figure
    from spectune.report import plots as P
    from spectune.report import tune_plots as T

    figures = {"loss_curve.png": T.loss_curve({metrics["run"]["name"]: log}),
               "learning_forgetting.png": T.learning_forgetting([metrics])}  # fmt: skip
    if details is not None and (details["status"] == "success").any():
        figures["alpha_hist.png"] = P.alpha_histogram(details, title="Adapter alphas")
        if "base_alpha" in details:
            figures["alpha_vs_base.png"] = P.base_vs_adapter_alpha(details)
    if plan is not None:
        from spectune.report.frog_plots import layer_importance_figure

        figures["frog_layer_importance.png"] = layer_importance_figure(plan.table)
    written = []
    for name, fig in figures.items():
        save_figure(fig, plots / name)
        written.append(plots / name)
    return written


__all__ = [
    "TuneResult",
    "adapter_spectra",
    "check_targets",
    "flat_metrics",
    "judge_base",
    "load_run_data",
    "log_rows",
    "save_adapter",
    "save_merged",
    "summarize_judging",
    "training_arguments",
    "tune",
]
