"""The ``distill:`` section: the teacher, the loss and its temperature, the response source,
on-policy steps and rationales; the task prefixes of distilling step by step."""

from __future__ import annotations

from dataclasses import dataclass, field

from spectune import _check as check
from spectune.errors import SpectuneError

#: the teacher's system prompt when ``teacher: context`` gives no ``context``
DEFAULT_CONTEXT = (
    "Answer with the final result only: no explanation, no full sentence, no extra words."
)
ANSWER_PREFIX = "[answer] "
RATIONALE_PREFIX = "[rationale] "
LOSSES = ("forward_kl", "reverse_kl", "jsd")
RESPONSES = ("reference", "teacher")


@dataclass
class DistillSection:
    """The ``distill:`` section of a run config."""

    teacher: str = field(
        default="context",
        metadata={
            "help": "'context' (the student's base model with extra context in its prompt), a "
            "model sharing the student's tokenizer (a local folder, a .gguf file or a hub id "
            "org/name[@revision], as model: takes them), or a spectune run folder."
        },
    )
    context: str | None = field(
        default=None,
        metadata={
            "help": "system prompt the teacher gets (and the student not); teacher=context "
            "without it uses a terse-answer instruction (DEFAULT_CONTEXT)."
        },
    )
    shots: int = field(
        default=0,
        metadata={"help": "solved training examples shown to the teacher as earlier chat turns."},
    )
    loss: str = field(
        default="reverse_kl",
        metadata={"help": "'forward_kl' (beta 0), 'reverse_kl' (beta 1) or 'jsd' (beta)."},
    )
    beta: float = field(
        default=0.5,
        metadata={"help": "loss=jsd: 0 is forward KL, 1 reverse KL (TRL's convention)."},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "softmax temperature of both models' logits (> 0)."}
    )
    sft_weight: float = field(
        default=0.0,
        metadata={"help": "w in (1 - w) * divergence + w * NLL of the response, in [0, 1]."},
    )
    responses: str = field(
        default="reference",
        metadata={
            "help": "'reference' (the data's responses) or 'teacher' (the teacher's greedy "
            "answers, made before training: sequence-level distillation)."
        },
    )
    max_new_tokens: int = field(
        default=32,
        metadata={"help": "longest answer generated (responses=teacher, on_policy)."},
    )
    rationale_weight: float = field(
        default=0.0,
        metadata={
            "help": "> 0: also train a [rationale] task (task-set rationales) with this "
            "weight; prompts get [answer] / [rationale] prefixes."
        },
    )
    on_policy: float = field(
        default=0.0,
        metadata={
            "help": "fraction of training steps (seeded) whose responses the student generates "
            "itself (greedy, up to max_new_tokens) for the teacher to score: on-policy."
        },
    )
    spectra_vs_teacher: bool = field(
        default=False,
        metadata={
            "help": "after training, compare the student's layer norms and alphas with the "
            "teacher's (scale collapse)."
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher:
            raise SpectuneError(
                f"distill.teacher must be 'context', a folder, a .gguf file or a hub id, got "
                f"{self.teacher!r}"
            )
        if self.context is not None and (not isinstance(self.context, str) or not self.context):
            raise SpectuneError(
                f"distill.context must be a non-empty string or null, got {self.context!r}"
            )
        self.shots = check.integer("distill.shots", self.shots, minimum=0)
        check.choice("distill.loss", self.loss, LOSSES)
        self.beta = check.number("distill.beta", self.beta)
        if not 0 <= self.beta <= 1:
            raise SpectuneError(f"distill.beta must be in [0, 1], got {self.beta!r}")
        self.temperature = check.number("distill.temperature", self.temperature)
        if not self.temperature > 0:
            raise SpectuneError(f"distill.temperature must be > 0, got {self.temperature!r}")
        self.sft_weight = check.number("distill.sft_weight", self.sft_weight)
        if not 0 <= self.sft_weight <= 1:
            raise SpectuneError(f"distill.sft_weight must be in [0, 1], got {self.sft_weight!r}")
        check.choice("distill.responses", self.responses, RESPONSES)
        self.max_new_tokens = check.integer(
            "distill.max_new_tokens", self.max_new_tokens, minimum=1
        )
        self.rationale_weight = check.number(
            "distill.rationale_weight", self.rationale_weight, nonnegative=True
        )
        self.on_policy = check.number("distill.on_policy", self.on_policy)
        if not 0 <= self.on_policy <= 1:
            raise SpectuneError(f"distill.on_policy must be in [0, 1], got {self.on_policy!r}")
        if not isinstance(self.spectra_vs_teacher, bool):
            raise SpectuneError(
                f"distill.spectra_vs_teacher must be true or false, got {self.spectra_vs_teacher!r}"
            )

    @property
    def effective_beta(self) -> float:
        """beta of the generalized JSD: 0 (forward KL), 1 (reverse KL) or ``beta``."""
        return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(self.loss, self.beta)
