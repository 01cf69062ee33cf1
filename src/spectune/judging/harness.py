"""Harness tasks: EleutherAI's lm-evaluation-harness run on the model in memory.

:func:`evaluate_harness` wraps the model and tokenizer in lm-eval's ``HFLM`` (nothing is
reloaded or written), loads the tasks through a ``TaskManager`` that also reads spectune's own
task folder (:data:`TASKS_DIR`), runs lm-eval's evaluator and keeps every task's scores with
their standard errors: a :class:`HarnessResult`. lm-eval is imported only when a function
runs (``pip install 'spectune[harness]'``).

spectune's own tasks (:data:`SPECTUNE_TASKS`: ``spectune_tasks``, the group of all eight
categories, and ``spectune_<category>`` each) are its bundled task set, generated on the fly
from a seed, so they run offline; a spectune_* score is spectune's exact match on the same
examples (the same user turn and chat template, greedy up to the end of turn, the same
answer check). lm-eval's own tasks (``lm_eval ls tasks``: ``hellaswag``, ``arc_easy``,
``gsm8k``...) download their data sets from the Hugging Face hub: they need network access
(or the ``datasets`` cache) the first time.

Outside spectune, the task files work with lm-eval's command line too (the task set of seed
0 with 200 held-out examples unless ``--metadata`` sets ``spectune_seed`` /
``spectune_n_eval``)::

    lm-eval run --model hf --model_args pretrained=RUN/merged --tasks spectune_tasks \\
        --include_path "$(python -c 'import spectune.judging.harness as h; print(h.TASKS_DIR)')" \\
        --apply_chat_template

Measured on SmolLM2-135M-Instruct (the embedded model), the 64 held-out questions of seed 0:
lm-eval's 64 answers and spectune's judge's were identical, string for string.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectune._quiet import logger_at
from spectune.data.tasks import CATEGORIES
from spectune.errors import SpectuneError

#: spectune's lm-eval task folder (package data)
TASKS_DIR = Path(__file__).parent / "harness_tasks"
#: the task and group names defined there
SPECTUNE_TASKS = ("spectune_tasks", *(f"spectune_{c}" for c in CATEGORIES))
#: bootstrap resamples for the standard errors lm-eval bootstraps (accuracy-like metrics
#: have a closed form and need none)
BOOTSTRAP_ITERS = 1000
#: lm-eval's default few-shot seed (``simple_evaluate``'s ``fewshot_random_seed``)
FEWSHOT_SEED = 1234
INSTALL = "pip install 'spectune[harness]'"


@dataclass
class HarnessResult:
    """Scores of lm-eval tasks.

    Attributes:
        scores: ``{task: {metric: {"value": v, "stderr": s}}}``, groups included; the metric is
            lm-eval's name, with its filter after a colon when it is not ``none``
            (``exact_match:flexible-extract``); a stderr lm-eval did not compute is None.
        n_samples: examples scored per task (after ``limit``).
        tasks: the names asked for.
        limit: examples per task asked for (None: all).
        num_fewshot: few-shot examples asked for (None: each task's own).
        chat_template: whether prompts were rendered with the chat template.
        versions: each task's version.
        lm_eval: the lm-eval version.
    """

    scores: dict[str, dict[str, dict[str, float | None]]]
    n_samples: dict[str, int] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    num_fewshot: int | None = None
    chat_template: bool = True
    versions: dict[str, Any] = field(default_factory=dict)
    lm_eval: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HarnessResult:
        """Read :meth:`to_dict` output (unknown keys ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def values(self) -> dict[tuple[str, str], float | None]:
        """``{(task, metric): value}`` in task order."""
        return {
            (task, metric): score.get("value")
            for task, metrics in self.scores.items()
            for metric, score in metrics.items()
        }


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise SpectuneError(
            f"eval.harness needs lm-eval, which is not installed: {INSTALL}"
        ) from None
    return lm_eval


def _task_manager(*, lm_evals_own: bool, metadata: dict[str, Any] | None = None) -> Any:
    """A ``TaskManager`` over spectune's task folder, and over lm-eval's own tasks with
    ``lm_evals_own`` (indexing its ~15,000 task files takes seconds)."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(TASKS_DIR), include_defaults=lm_evals_own, metadata=metadata
    )


@functools.cache
def _all_tasks() -> frozenset[str]:
    """Every task, group and tag name lm-eval and spectune's folder define (indexed once)."""
    return frozenset(_task_manager(lm_evals_own=True).all_tasks)


def check_tasks(tasks: Sequence[str]) -> None:
    """Refuse a task name lm-eval does not know, in one line that lists spectune's tasks and
    says how lm-eval's own are used.

    Raises:
        SpectuneError: lm-eval is not installed, or a name is unknown.
    """
    _lm_eval()
    missing = [t for t in tasks if t not in SPECTUNE_TASKS and t not in _all_tasks()]
    if missing:
        close = difflib.get_close_matches(missing[0], sorted(_all_tasks()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpectuneError(
            f"eval.harness.tasks: lm-eval has no task {missing[0]!r}{hint}; spectune's own "
            "(offline): "
            f"{', '.join(SPECTUNE_TASKS)}; lm-eval's tasks (`lm_eval ls tasks`, e.g. "
            "arc_easy, hellaswag, gsm8k) download their data sets from the Hugging Face hub "
            "the first time, so they need network access"
        )


@contextlib.contextmanager
def _stop_at_eos(model: Any, tokenizer: Any) -> Iterator[None]:
    """``model.generate`` ends a row at the tokenizer's end of turn (spectune's stop), as
    well as at the model's own end tokens; restored on exit."""
    config = getattr(model, "generation_config", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if config is None or eos is None:
        yield
        return
    old = config.eos_token_id
    ids = [] if old is None else list(old) if isinstance(old, (list, tuple)) else [old]
    config.eos_token_id = ids + [eos] if eos not in ids else old
    try:
        yield
    finally:
        config.eos_token_id = old


def run_harness(
    model: Any,
    tokenizer: Any,
    *,
    tasks: Sequence[str],
    limit: int | None = None,
    num_fewshot: int | None = None,
    chat_template: bool = True,
    metadata: dict[str, Any] | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    system: str | None = None,
) -> dict[str, Any]:
    """lm-eval's own result dict of ``tasks`` on the model in memory (``results``,
    ``groups``, ``n-samples``, ``versions``, ``samples``...).

    Args:
        model: a causal LM (plain, peft, or with custom linear layers); its mode is restored.
        tokenizer: its tokenizer (with a chat template when ``chat_template``).
        tasks: lm-eval task or group names (:func:`check_tasks`).
        limit: examples per task (None: all).
        num_fewshot: few-shot examples (None: each task's own, 0 where it sets none).
        chat_template: render prompts with the tokenizer's chat template (and ``system``).
        metadata: passed to the tasks (spectune's read ``spectune_seed``, ``spectune_n_eval``).
        max_new_tokens: the generation limit of spectune's tasks (lm-eval's keep their own).
        batch_size: prompts per forward pass.
        system: the system message (with the chat template).

    Raises:
        SpectuneError: lm-eval is missing or a task name is unknown.
    """
    check_tasks(tasks)
    _lm_eval()
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    from spectune.models.forward import eval_mode

    # lm-eval's info and warnings about a model passed as an object (spectune does it on
    # purpose) are kept off the terminal; its errors still show
    with logger_at("lm_eval", logging.ERROR):
        own = any(t not in SPECTUNE_TASKS for t in tasks)
        loaded = _task_manager(lm_evals_own=own, metadata=metadata).load(list(tasks))
        for name, task in loaded["tasks"].items():
            if name in SPECTUNE_TASKS:
                task.set_config("generation_kwargs", {"max_gen_toks": max_new_tokens}, update=True)
            if num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config("num_fewshot", num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config("num_fewshot", 0)
            task.set_fewshot_seed(FEWSHOT_SEED)
        with eval_mode(model), _stop_at_eos(model, tokenizer):
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=batch_size,
                add_bos_token=False if chat_template else None,
            )
            results = evaluate(
                lm=lm,
                task_dict=loaded,
                limit=limit,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=True,
                system_instruction=system if chat_template else None,
                apply_chat_template=chat_template,
                fewshot_as_multiturn=chat_template,
            )
    if results is None:  # pragma: no cover - a rank other than 0
        raise SpectuneError("lm-eval returned no results (not the main process)")
    return results


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def harness_result(
    results: dict[str, Any],
    *,
    tasks: Sequence[str],
    limit: int | None = None,
    num_fewshot: int | None = None,
    chat_template: bool = True,
) -> HarnessResult:
    """A :class:`HarnessResult` from lm-eval's result dict (:func:`run_harness`)."""
    scores: dict[str, dict[str, dict[str, float | None]]] = {}
    for task, row in results.get("results", {}).items():
        metrics: dict[str, dict[str, float | None]] = {}
        for key, value in row.items():
            name, sep, filt = key.partition(",")
            if not sep or name.endswith("_stderr"):
                continue
            metric = name if filt == "none" else f"{name}:{filt}"
            metrics[metric] = {
                "value": _number(value),
                "stderr": _number(row.get(f"{name}_stderr,{filt}")),
            }
        if metrics:
            scores[task] = metrics
    n_samples = {task: int(n["effective"]) for task, n in results.get("n-samples", {}).items()}
    return HarnessResult(
        scores=scores,
        n_samples=n_samples,
        tasks=list(tasks),
        limit=limit,
        num_fewshot=num_fewshot,
        chat_template=chat_template,
        versions=dict(results.get("versions", {})),
        lm_eval=str(getattr(_lm_eval(), "__version__", "")),
    )


def evaluate_harness(
    model: Any,
    tokenizer: Any,
    *,
    tasks: Sequence[str],
    limit: int | None = None,
    num_fewshot: int | None = None,
    chat_template: bool = True,
    metadata: dict[str, Any] | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    system: str | None = None,
) -> HarnessResult:
    """:func:`run_harness` kept as a :class:`HarnessResult` (the arguments are its)."""
    results = run_harness(
        model,
        tokenizer,
        tasks=tasks,
        limit=limit,
        num_fewshot=num_fewshot,
        chat_template=chat_template,
        metadata=metadata,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system=system,
    )
    return harness_result(
        results, tasks=tasks, limit=limit, num_fewshot=num_fewshot, chat_template=chat_template
    )


__all__ = [
    "SPECTUNE_TASKS",
    "TASKS_DIR",
    "HarnessResult",
    "check_tasks",
    "evaluate_harness",
    "harness_result",
    "run_harness",
]
