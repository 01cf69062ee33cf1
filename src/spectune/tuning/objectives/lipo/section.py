"""LiPO's ``lipo:`` section: the loss, beta, list sizes, on-policy sampling and the
memory check's limit."""

from __future__ import annotations

from dataclasses import dataclass, field

from spectune import _check as check
from spectune.errors import SpectuneError

LOSSES = ("lambda", "dpo", "softmax")
LIST_SOURCES = ("generated", "on_policy")


@dataclass
class LipoSection:
    """The ``lipo:`` section."""

    loss: str = field(
        default="lambda",
        metadata={
            "help": "'lambda' (LiPO-lambda), 'dpo' (pairwise DPO logistic over every pair; "
            "K = 2 is DPO) or 'softmax' (listwise softmax cross-entropy)."
        },
    )
    beta: float = field(
        default=0.1,
        metadata={"help": "beta of the implicit reward beta * log(pi / pi_ref)."},
    )
    list_size: int = field(
        default=4,
        metadata={
            "help": "K, responses per list: generated / sampled per prompt; longer lists of a "
            "file are cut to a seeded sample of K."
        },
    )
    eval_list_size: int = field(
        default=4,
        metadata={
            "help": "responses per held-out list the ranking metrics are judged on (the same "
            "for every loss and list_size, so runs compare); longer lists of a file are cut."
        },
    )
    lists: str = field(
        default="generated",
        metadata={
            "help": "task set only: 'generated' (exact, verbose, near-miss and wrong answers) "
            "or 'on_policy' (K - 1 answers sampled from the base model plus the exact one), "
            "graded by the checker."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "on_policy: sampling temperature."})
    max_new_tokens: int = field(
        default=24, metadata={"help": "on_policy: longest sampled answer (tokens)."}
    )
    share_prompt: bool = field(
        default=True,
        metadata={
            "help": "run each list's prompt once and continue its K responses from the KV "
            "cache (same log-probs, about K times less prompt work); false: every response "
            "with its prompt. Off by itself under activation checkpointing."
        },
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "sequences per forward pass for the reference and judged log-probs."},
    )
    memory_gb: float | None = field(
        default=None,
        metadata={
            "help": "memory a training batch may take (GB), checked before training; None: "
            "the machine's available memory."
        },
    )

    def __post_init__(self) -> None:
        check.choice("lipo.loss", self.loss, LOSSES)
        check.choice("lipo.lists", self.lists, LIST_SOURCES)
        self.beta = check.number("lipo.beta", self.beta)
        if not self.beta > 0:
            raise SpectuneError(f"lipo.beta must be > 0, got {self.beta!r}")
        self.list_size = check.integer("lipo.list_size", self.list_size, minimum=2)
        self.eval_list_size = check.integer("lipo.eval_list_size", self.eval_list_size, minimum=2)
        self.temperature = check.number("lipo.temperature", self.temperature)
        if not self.temperature > 0:
            raise SpectuneError(f"lipo.temperature must be > 0, got {self.temperature!r}")
        self.max_new_tokens = check.integer("lipo.max_new_tokens", self.max_new_tokens, minimum=1)
        self.batch_size = check.integer("lipo.batch_size", self.batch_size, minimum=1)
        if not isinstance(self.share_prompt, bool):
            raise SpectuneError(
                f"lipo.share_prompt must be true or false, got {self.share_prompt!r}"
            )
        if self.memory_gb is not None:
            self.memory_gb = check.number("lipo.memory_gb", self.memory_gb)
            if not self.memory_gb > 0:
                raise SpectuneError(f"lipo.memory_gb must be > 0 or null, got {self.memory_gb!r}")
