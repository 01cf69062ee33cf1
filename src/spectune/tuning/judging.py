"""The run's judging: the settings a config asks for, the base model judged through the judge
cache (:mod:`spectune.judging.cache`), the objective's judge context, and the per-question
verdicts of ``predictions.jsonl``. The measurements themselves are :mod:`spectune.judging`'s."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.data.tasks import answers_match
from spectune.judging.cache import judge_cached
from spectune.models import hardware
from spectune.models.templates import fit_embeddings
from spectune.tuning.config import TuneConfig
from spectune.tuning.methods.base import load_float_base, resolve_model_dtype
from spectune.tuning.objectives.base import JudgeContext

if TYPE_CHECKING:
    from spectune.data.examples import InstructionExample
    from spectune.tuning.run import Run


def judge_settings(config: TuneConfig) -> dict[str, Any]:
    """The keywords of :func:`spectune.judging.all.judge` the config's ``data`` and ``eval``
    sections ask for."""
    e = config.eval
    return dict(  # (data.template and data.end_of_turn reach the cache key by the tokenizer)
        max_length=config.data.max_length,
        system=config.data.system,
        max_new_tokens=e.max_new_tokens,
        batch_size=e.batch_size,
        ppl_chars=e.ppl_chars,
        ppl_window=e.ppl_window,
        ppl_stride=e.ppl_stride,
        latency_tokens=e.latency_tokens,
        latency_prompts=e.latency_prompts,
        ce_samples=e.ce_samples,
        ce_tokens=e.ce_tokens,
        harness=harness_settings(config),
    )


def harness_settings(config: TuneConfig) -> dict[str, Any] | None:
    """``eval.harness`` as the ``harness`` keywords of :func:`spectune.judging.all.judge`
    (None when off). spectune's own tasks get the run's seed and held-out size: with
    ``data.train: tasks`` they are the run's held-out questions, none that it trained on."""
    h = config.eval.harness
    if h is None:
        return None
    return dict(
        tasks=list(h.tasks),
        limit=h.limit,
        num_fewshot=h.num_fewshot,
        chat_template=h.chat_template,
        metadata={"spectune_seed": config.seed, "spectune_n_eval": config.data.n_eval},
    )


def base_loader(model_dir: Path, config: TuneConfig, tokenizer: Any = None) -> Callable[[], Any]:
    """Loads the base model to judge: in ``model_dtype`` (full precision for the 4-bit methods
    too), on the device the tuned model will be judged on; with ``tokenizer``, its embeddings
    hold the tokens the run's template added (:func:`spectune.models.templates.fit_embeddings`)."""
    dtype, _ = resolve_model_dtype(config.model_dtype)
    attn = config.attn_implementation

    def load() -> Any:
        model = load_float_base(model_dir, dtype, attn_implementation=attn)
        if tokenizer is not None:
            fit_embeddings(model, tokenizer)
        return hardware.to_compute_device(model)

    return load


def judge_base_model(
    model_dir: Path,
    tokenizer: Any,
    heldout: list[InstructionExample],
    config: TuneConfig,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Judge the base model (in ``model_dtype``), cached under ``$SPECTUNE_CACHE/judge`` by
    model files, held-out data, settings, dtype and Python version (the forgetting text
    depends on it): :func:`spectune.judging.cache.judge_cached`.

    The 4-bit methods are judged against this full-precision base too: it is the model the
    user starts from, so "forgetting" includes what quantization costs.

    Returns:
        :func:`spectune.judging.all.judge`'s dict, with ``model``.
    """
    dtype, _ = resolve_model_dtype(config.model_dtype)
    return judge_cached(
        base_loader(model_dir, config, tokenizer),
        tokenizer,
        heldout,
        judge_settings(config),
        model_dir=model_dir,
        dtype=dtype,
        attn_implementation=config.attn_implementation,
        progress=progress,
    )


def judge_context(run: Run) -> JudgeContext:
    """What the objective's hooks get to judge (and prepare) with."""
    return JudgeContext(
        run.config,
        run.tokenizer,
        run.data,
        run.model_dir,
        run.progress,
        state=run.objective_state,
        out=run.out,
    )


def correct(heldout: list[InstructionExample], answers: list[str]) -> list[bool]:
    """Per held-out question: is the answer right (the check of ``predictions.jsonl``)."""
    return [answers_match(a, ex.response) for a, ex in zip(answers, heldout, strict=True)]


def predictions_jsonl(
    heldout: list[InstructionExample], before: list[str] | None, after: list[str]
) -> str:
    """``predictions.jsonl``: per held-out question its category, instruction, reference and
    the answers after (and before) training, each with its verdict."""
    lines = []
    for i, ex in enumerate(heldout):
        row = {
            "category": ex.category,
            "instruction": ex.instruction,
            "reference": ex.response,
            "after": after[i],
            "correct_after": answers_match(after[i], ex.response),
        }
        if before is not None:
            row["before"] = before[i]
            row["correct_before"] = answers_match(before[i], ex.response)
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


__all__ = [
    "base_loader",
    "correct",
    "harness_settings",
    "judge_base_model",
    "judge_context",
    "judge_settings",
    "predictions_jsonl",
]
