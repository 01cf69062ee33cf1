"""The run config's own sections: ``data:`` (:class:`DataConfig`, where the instruction data
comes from and how it is cut) and ``eval:`` (:class:`EvalConfig`, what is judged before and
after training).

Each is a dataclass whose fields carry their help text (listed by
:meth:`spectune.tuning.config.TuneConfig.help`) and whose ``__post_init__`` checks every field,
naming it as ``data.<field>`` / ``eval.<field>``. The sections a method or an objective
reads live beside its code (:mod:`spectune.tuning.methods`, :mod:`spectune.tuning.objectives`);
the ``train:`` section is transformers' ``TrainingArguments`` (:mod:`spectune.tuning.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from spectune import _check as check
from spectune.errors import SpectuneError
from spectune.models.templates import END_OF_TURN_MODES, check_template

#: values of ``data.batching``
BATCHING_MODES = ("auto", "padding_free", "length_grouped", "padded")


@dataclass
class DataConfig:
    """Where the instruction data comes from and how it is cut."""

    train: str = field(
        default="tasks",
        metadata={
            "help": "'tasks' (the bundled task set, generated from the run seed); a .json, "
            ".jsonl, .csv, .parquet or .arrow file; a save_to_disk folder; or a datasets "
            "name (NAME, NAME:SPLIT, NAME:CONFIG:SPLIT)."
        },
    )
    eval: str | None = field(
        default=None,
        metadata={
            "help": "held-out data (same sources and formats). None: the task set's held-out "
            "split, or eval_fraction of the train data (seeded split)."
        },
    )
    format: str = field(
        default="auto",
        metadata={
            "help": "'auto' (from the records' fields), 'dolly', 'alpaca', 'messages', "
            "'prompt_completion' or 'sharegpt'."
        },
    )
    train_on: str = field(
        default="all_assistant",
        metadata={
            "help": "multi-turn conversations: 'all_assistant' (every assistant turn is a "
            "target) or 'last_assistant' (only the last; the earlier turns are context)."
        },
    )
    max_length: int = field(
        default=256,
        metadata={"help": "tokens per example; longer ones are cut (and counted)."},
    )
    n_train: int = field(
        default=2000, metadata={"help": "task set only: training examples generated."}
    )
    n_eval: int = field(
        default=200,
        metadata={
            "help": "held-out examples: generated (task set), or the most taken from the "
            "held-out data of a file."
        },
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "a train file without eval: fraction held out, in (0, 0.5]."},
    )
    n_validation: int = field(
        default=0,
        metadata={
            "help": "training examples carved out (seeded) as the validation split, evaluated "
            "during training with the objective's loss (train.eval_steps); disjoint from the "
            "training and held-out examples. 0: no validation."
        },
    )
    system: str | None = field(
        default=None,
        metadata={
            "help": "system message of every prompt (a conversation's own system message "
            "takes precedence); None keeps the chat template's default."
        },
    )
    template: str = field(
        default="tokenizer",
        metadata={
            "help": "chat template of the prompts: 'tokenizer' (the tokenizer's own), 'chatml', "
            "'alpaca' (plain ### Instruction / ### Response) or a Jinja file (a base model "
            "without a template needs one of the others; it replaces a tokenizer's own)."
        },
    )
    batching: str = field(
        default="auto",
        metadata={
            "help": "how supervised examples make a batch: 'padding_free' (concatenated into "
            "one row, position ids restarting at each example, so no position is padding; "
            "only where the model's attention keeps the examples apart, checked on the model "
            "at the start: otherwise it says so and groups by length), 'length_grouped' "
            "(padded batches of examples of similar length), 'padded' (padded batches in "
            "random order), 'auto': padding_free where it works, else padded."
        },
    )
    end_of_turn: str = field(
        default="auto",
        metadata={
            "help": "the marker that closes an answer (what the template writes after it): "
            "'token' adds it to the vocabulary as a special token (embeddings resized, the new "
            "rows trained and saved with the adapter), 'text' matches it as text (labels cover "
            "its tokens, generation stops at it), 'auto': token if it is one token already, "
            "else text."
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.train, str) or not self.train:
            raise SpectuneError(
                f"data.train must be 'tasks', a file, a folder or a datasets name, got "
                f"{self.train!r}"
            )
        if self.eval is not None and (not isinstance(self.eval, str) or not self.eval):
            raise SpectuneError(
                f"data.eval must be a file, a folder, a datasets name or null, got {self.eval!r}"
            )
        check.choice("data.format", self.format, ("auto", "dolly", "alpaca", "messages",
                     "prompt_completion", "sharegpt"))  # fmt: skip
        check.choice("data.train_on", self.train_on, ("all_assistant", "last_assistant"))
        self.max_length = check.integer("data.max_length", self.max_length, minimum=8)
        self.n_train = check.integer("data.n_train", self.n_train, minimum=1)
        self.n_eval = check.integer("data.n_eval", self.n_eval, minimum=1)
        self.n_validation = check.integer("data.n_validation", self.n_validation, minimum=0)
        if self.train == "tasks" and self.n_validation >= self.n_train:
            raise SpectuneError(
                f"data.n_validation ({self.n_validation}) must be below data.n_train "
                f"({self.n_train}): the validation examples are carved from the training ones"
            )
        self.eval_fraction = check.number("data.eval_fraction", self.eval_fraction)
        if not 0 < self.eval_fraction <= 0.5:
            raise SpectuneError(
                f"data.eval_fraction must be in (0, 0.5], got {self.eval_fraction!r}"
            )
        if self.system is not None and not isinstance(self.system, str):
            raise SpectuneError(f"data.system must be a string or null, got {self.system!r}")
        check_template(self.template)
        check.choice("data.end_of_turn", self.end_of_turn, END_OF_TURN_MODES)
        check.choice("data.batching", self.batching, BATCHING_MODES)


@dataclass
class HarnessConfig:
    """``eval.harness``: lm-evaluation-harness tasks run on the model in memory, before and
    after training (:mod:`spectune.judging.harness`)."""

    tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "lm-eval task or group names: spectune's own (offline: spectune_tasks, "
            "spectune_add...) or lm-eval's (they download their data sets: network needed)."
        },
    )
    limit: int | None = field(
        default=None, metadata={"help": "examples per task (None: all); keep it small on CPU."}
    )
    num_fewshot: int | None = field(
        default=None, metadata={"help": "solved examples before each question (None: the task's)."}
    )
    chat_template: bool = field(
        default=True,
        metadata={"help": "render prompts with the tokenizer's chat template (data.system too)."},
    )

    def __post_init__(self) -> None:
        tasks = [self.tasks] if isinstance(self.tasks, str) else self.tasks
        if (
            not isinstance(tasks, (list, tuple))
            or not tasks
            or not all(isinstance(t, str) and t.strip() for t in tasks)
        ):
            raise SpectuneError(
                "eval.harness.tasks must be a task name or a non-empty list of them (e.g. "
                f"[spectune_tasks]), got {self.tasks!r}"
            )
        self.tasks = [t.strip() for t in tasks]
        if self.limit is not None:
            self.limit = check.integer("eval.harness.limit", self.limit, minimum=1)
        if self.num_fewshot is not None:
            self.num_fewshot = check.integer(
                "eval.harness.num_fewshot", self.num_fewshot, minimum=0
            )
        if not isinstance(self.chat_template, bool):
            raise SpectuneError(
                f"eval.harness.chat_template must be true or false, got {self.chat_template!r}"
            )


def _harness(value: Any) -> HarnessConfig | None:
    """``eval.harness`` as a :class:`HarnessConfig` (a mapping's unknown keys named)."""
    if value is None or isinstance(value, HarnessConfig):
        return value
    if not isinstance(value, dict):
        raise SpectuneError(
            "eval.harness must be a mapping such as {tasks: [spectune_tasks], limit: 8} or null, "
            f"got {value!r}"
        )
    check.unknown_keys("eval.harness", value, (f.name for f in fields(HarnessConfig)), "setting")
    return HarnessConfig(**value)


@dataclass
class EvalConfig:
    """What is measured before and after training."""

    before: bool = field(
        default=True,
        metadata={"help": "also judge the base model (cached per model and settings)."},
    )
    max_new_tokens: int = field(
        default=16, metadata={"help": "longest greedy answer in the accuracy test."}
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass."})
    ppl_chars: int = field(
        default=8000,
        metadata={"help": "characters of pydoc_data.topics scored for perplexity (forgetting)."},
    )
    ppl_window: int = field(default=256, metadata={"help": "perplexity window (tokens)."})
    ppl_stride: int = field(default=128, metadata={"help": "perplexity stride (tokens)."})
    ce_samples: int = field(
        default=8,
        metadata={
            "help": "forgetting as peft's method comparison measures it: mean token "
            "cross-entropy on this many general-text samples (pydoc topics); 0: off."
        },
    )
    ce_tokens: int = field(
        default=256, metadata={"help": "tokens per cross-entropy sample (longer ones are cut)."}
    )
    latency_tokens: int = field(
        default=32, metadata={"help": "tokens generated per prompt for the latency figure."}
    )
    latency_prompts: int = field(
        default=3, metadata={"help": "prompts timed (median); 0 skips the latency figure."}
    )
    spectra: bool = field(
        default=True,
        metadata={"help": "analyze the adapter's (or the weight delta's) spectra vs the base."},
    )
    intruders: bool = field(
        default=True,
        metadata={
            "help": "count intruder dimensions (Shuttleworth et al. 2024): tuned singular "
            "vectors unlike every base one; the LoRA family (low-rank route; DoRA: undefined), "
            "full fine-tuning, FROG and SHiRA (W_base + the sparse update); one base "
            "decomposition per matrix."
        },
    )
    compare_base: bool = field(
        default=True,
        metadata={
            "help": "compare the tuned matrices (base + update) with the base's: scale collapse "
            "and correlation flow, in spectra/compare.* and flow.csv (one more analysis)."
        },
    )
    spectra_precision: str = field(
        default="float32",
        metadata={"help": "'float32' (fast) or 'float64' (WeightWatcher's exact numbers)."},
    )
    spectra_every_steps: int | None = field(
        default=None,
        metadata={
            "help": "during training, the adapter's spectra every N optimizer steps and at the "
            "last (spectra_log.csv: alpha per layer; mean alpha and the fraction of layers "
            "with alpha < 2 plotted against the validation loss). None: off."
        },
    )
    harness: HarnessConfig | None = field(
        default=None,
        metadata={
            "help": "lm-eval tasks before and after training: {tasks: [...], limit: N, "
            "num_fewshot: N, chat_template: true}. None: off."
        },
    )

    def __post_init__(self) -> None:
        for name in ("before", "spectra", "intruders", "compare_base"):
            if not isinstance(getattr(self, name), bool):
                raise SpectuneError(
                    f"eval.{name} must be true or false, got {getattr(self, name)!r}"
                )
        for name, low in (("max_new_tokens", 1), ("batch_size", 1), ("ppl_chars", 100),
                          ("ppl_window", 2), ("ppl_stride", 1), ("latency_tokens", 2),
                          ("latency_prompts", 0), ("ce_samples", 0), ("ce_tokens", 2)):  # fmt: skip
            setattr(self, name, check.integer(f"eval.{name}", getattr(self, name), minimum=low))
        if self.ppl_stride >= self.ppl_window:
            raise SpectuneError(
                f"eval.ppl_stride ({self.ppl_stride}) must be below eval.ppl_window "
                f"({self.ppl_window}): the rest of each window is context"
            )
        check.choice("eval.spectra_precision", self.spectra_precision, ("float32", "float64"))
        if self.spectra_every_steps is not None:
            self.spectra_every_steps = check.integer(
                "eval.spectra_every_steps", self.spectra_every_steps, minimum=1
            )
        from pydoc_data.topics import topics  # the general-text samples (no torch)

        if self.ce_samples > len(topics):
            raise SpectuneError(
                f"eval.ce_samples must be at most {len(topics)} (the help topics of this Python), "
                f"got {self.ce_samples}"
            )
        self.harness = _harness(self.harness)


__all__ = ["DataConfig", "EvalConfig", "HarnessConfig"]
