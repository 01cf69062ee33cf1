"""Knowledge distillation into the student (``objective: distill``).

The student (the run's model, built by the run's method: LoRA, FROG, full...) learns the
teacher's next-token distributions on the response tokens of the training examples.

Teacher (``distill.teacher``):

* ``context``: the student's own base model given extra context in its prompt: a system
  prompt (``distill.context``) and/or ``distill.shots`` solved training examples as earlier
  chat turns. The student sees the plain prompt and must learn to behave as if the context
  were there (context distillation). Works on the embedded model with nothing else.
* a local Hugging Face model folder that shares the student's tokenizer and vocabulary;
* a spectune run folder (``config.yaml`` + ``adapter/``, or ``merged/``): the run's base
  model with its adapter, loaded by the run's own method (a full fine-tune distilled into a
  LoRA adapter, for example).

A teacher whose tokenizer or vocabulary size differs from the student's is refused in
:meth:`Distill.load_data`, which the recipe calls before the results folder is touched. The
teacher is a separate model in eval mode with ``requires_grad=False`` on every parameter: it
gets no gradient and no optimizer state (it is not a submodule of the trained model).

Loss (per labelled response token t, with p = teacher, q = student, both softmax(logits / T)):

======================  ================================================================
``loss: forward_kl``    KL(p || q) = sum_v p_v (log p_v - log q_v)          (beta = 0)
``loss: reverse_kl``    KL(q || p)                                          (beta = 1)
``loss: jsd``           beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q
======================  ================================================================

the generalized Jensen-Shannon divergence of Agarwal et al. 2024 (GKD), with TRL's
convention for ``beta``: 0 is forward KL, 1 is reverse KL. The token divergences are averaged
over the batch's labelled tokens; ``sft_weight`` w mixes in the plain NLL of the reference
tokens: ``(1 - w) * divergence + w * NLL``. As in TRL, logits are divided by the temperature
and the divergence is not rescaled by T^2.

Why not TRL's trainer: ``trl.experimental.gkd.GKDTrainer`` / ``trl.DistillationTrainer`` are
``Trainer`` subclasses with their own data pipeline (chat "messages" datasets, their own
collator, generation settings) and compute the vocabulary projection at every position. A
spectune run already has its Trainer (:class:`~spectune.tuning.trainer.SpectuneTrainer`:
the method's checkpoints, the loss log, the gradient check), so distillation is only a loss
here: it applies the output heads of both models only at the labelled positions (about 4 of
40 tokens of a task-set example; the head is a fifth of SmolLM2's FLOPs), and the teacher may
see a different prompt from the student (context distillation), which TRL's trainers do not
support. TRL's ``generalized_jsd_loss`` is the reference the tests check our
:func:`generalized_jsd` against (and ``torch.distributions.kl_divergence``).

Options:

* ``responses: reference`` trains on the data's responses (token-level distillation);
  ``responses: teacher`` replaces them with the teacher's own greedy answers, made once before
  training (sequence-level distillation, Kim & Rush 2016).
* ``on_policy`` f > 0: at a seeded fraction f of the training steps the student answers the
  batch's prompts itself (greedy, up to ``max_new_tokens``) and the loss is taken on its own
  tokens, the teacher scoring them after its own prompt (on-policy distillation, GKD's
  lambda). The ``sft_weight`` term is then the NLL of the student's own tokens.
* ``rationale_weight`` > 0 (distilling step by step, Hsieh et al. 2023): every training
  example also becomes a rationale task. Prompts carry a task prefix (``[answer]`` /
  ``[rationale]``); the rationale task is the NLL of a rationale written by the task-set
  generator (:func:`spectune.data.tasks.task_rationale`, which knows how each answer is
  reached); the loss is ``answer_loss + rationale_weight * rationale_loss``. Only the answer
  task runs at inference: the held-out prompts carry the ``[answer]`` prefix.

Judged metrics (before and after, in ``before.json`` / ``metrics.json`` ``extras``):
``teacher_kl`` (mean forward KL(teacher || student) per held-out response token, nats),
``teacher_token_agreement`` (the two argmax tokens agree), ``teacher_agreement`` (the greedy
answers of teacher and student match, normalized exact match), ``teacher_accuracy`` (the
teacher's own accuracy on the references). With ``spectra_vs_teacher`` the tuned student's
layers are compared with the teacher's (:func:`spectune.watch.compare.compare`: the change
of log spectral norm, log Frobenius norm and alpha, scale collapse flags) into
``objective_spectra``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune import _check as check
from spectune.errors import SpectuneError
from spectune.tuning.objectives import register_objective
from spectune.tuning.objectives.base import (
    JudgeContext,
    Objective,
    RunData,
    TrainData,
    token_mean,
)

if TYPE_CHECKING:
    import torch

    from spectune.data.instructions import InstructionExample
    from spectune.tuning.config import TuneConfig

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
            "local model folder sharing the student's tokenizer, or a spectune run folder."
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
                f"distill.teacher must be 'context' or a folder path, got {self.teacher!r}"
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
        self.max_new_tokens = check.integer("distill.max_new_tokens", self.max_new_tokens,
                                            minimum=1)  # fmt: skip
        self.rationale_weight = check.number("distill.rationale_weight", self.rationale_weight,
                                             nonnegative=True)  # fmt: skip
        self.on_policy = check.number("distill.on_policy", self.on_policy)
        if not 0 <= self.on_policy <= 1:
            raise SpectuneError(f"distill.on_policy must be in [0, 1], got {self.on_policy!r}")
        if not isinstance(self.spectra_vs_teacher, bool):
            raise SpectuneError(f"distill.spectra_vs_teacher must be true or false, got "
                                f"{self.spectra_vs_teacher!r}")  # fmt: skip

    @property
    def effective_beta(self) -> float:
        """beta of the generalized JSD: 0 (forward KL), 1 (reverse KL) or ``beta``."""
        return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(self.loss, self.beta)


# --------------------------------------------------------------------------- the loss


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                    beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Per-token generalized Jensen-Shannon divergence between teacher p and student q.

    ``beta * KL(p || m) + (1 - beta) * KL(q || m)`` with ``m = beta p + (1 - beta) q``;
    ``beta = 0`` is exactly KL(p || q) (forward), ``beta = 1`` exactly KL(q || p) (reverse).
    TRL's ``GKDTrainer.generalized_jsd_loss`` with ``reduction="none"``, summed over the
    vocabulary.

    Args:
        student_logits: (tokens, vocab).
        teacher_logits: (tokens, vocab), no gradient needed.
        beta: in [0, 1].
        temperature: both logits are divided by it.

    Returns:
        (tokens,) divergences in nats, computed in float32 (or the inputs' wider dtype).
    """
    import torch
    import torch.nn.functional as F

    if not 0 <= beta <= 1:
        raise SpectuneError(f"beta must be in [0, 1], got {beta!r}")
    if student_logits.shape != teacher_logits.shape:
        raise SpectuneError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                            f"{tuple(teacher_logits.shape)} differ in shape")  # fmt: skip
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)  # (tokens, vocab)
    t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if beta == 0:
        return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)  # KL(t || s)
    if beta == 1:
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)  # KL(s || t)
    m = torch.logaddexp(t + math.log(beta), s + math.log1p(-beta))  # log of the mixture
    kl_t = F.kl_div(m, t, reduction="none", log_target=True).sum(-1)  # KL(t || m)
    kl_s = F.kl_div(m, s, reduction="none", log_target=True).sum(-1)  # KL(s || m)
    return beta * kl_t + (1 - beta) * kl_s


# --------------------------------------------------------------------------- the teacher


@dataclass
class TeacherSource:
    """Where the teacher comes from (resolved in ``load_data``, before any weight is read).

    Attributes:
        kind: "context", "model" (a model folder) or "run" (a spectune run folder).
        path: the folder (the student's base model folder for "context").
        model_dir: the folder whose tokenizer and config the teacher uses.
        method: the run's method ("run" teachers).
    """

    kind: str
    path: Path
    model_dir: Path
    method: str | None = None

    def describe(self) -> str:
        if self.kind == "context":
            return "context (the student's base model with extra context)"
        if self.kind == "run":
            return f"spectune run {self.path} ({self.method})"
        return f"model folder {self.path}"


@dataclass
class DistillState:
    """Per-run state (``prepare``): the teacher and what is made once."""

    source: TeacherSource
    section: DistillSection
    teacher: Any
    system: str | None
    shots: list[Any]
    train: list[Any]
    rationales: list[str] | None = None
    validation: list[Any] = field(default_factory=list)
    validation_rationales: list[str] | None = None
    pad_id: int = 0
    eot: int | None = None
    teacher_responses: list[str] | None = None
    heldout_teacher_answers: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _student_config(model_dir: Path, what: str | None = None) -> Any:
    from spectune.models.loading import read_model_config

    return read_model_config(model_dir, what or f"model folder {model_dir}")


def _vocab_size(model_dir: Path, what: str | None = None) -> int | None:
    cfg = _student_config(model_dir, what)
    size = getattr(cfg, "vocab_size", None)
    if size is None and hasattr(cfg, "get_text_config"):
        size = getattr(cfg.get_text_config(), "vocab_size", None)
    return None if size is None else int(size)


def resolve_teacher(section: DistillSection, student_dir: Path) -> TeacherSource:
    """The teacher's source, checked against the student: its folder exists, it is a model or
    a complete spectune run, its tokenizer and vocabulary size are the student's. Reads only
    configs and tokenizer files.

    Raises:
        SpectuneError: a missing folder, an unusable run folder, or a tokenizer / vocabulary
            that differs from the student's (the message names both).
    """
    from spectune.tuning.config import load_config
    from spectune.tuning.pins import is_run_folder, run_base_model

    if section.teacher == "context":
        return TeacherSource("context", student_dir, student_dir)
    path = Path(section.teacher).expanduser()
    if not path.is_dir():
        raise SpectuneError(
            f"distill.teacher {section.teacher!r} is not a folder; give 'context', a local model "
            "folder or a spectune run folder"
        )
    what = f"distill.teacher {path}"
    if is_run_folder(path):
        from spectune.results.runfolder import RunFolder

        try:
            marker = RunFolder(path).read_marker() or {}
        except SpectuneError as exc:  # its advice is for an output folder, not a teacher
            why = str(exc).split("; ")[0].removeprefix(f"{path / 'run.json'}: ")
            raise SpectuneError(
                f"{what}: its run.json is damaged ({why}); restore it, or give another teacher"
            ) from None
        if marker.get("status") != "complete":
            raise SpectuneError(
                f"distill.teacher {path} is a spectune run that is not complete (status "
                f"{marker.get('status')!r}); finish it (spectune tune --resume) or pick another"
            )
        cfg = load_config(path / "config.yaml", foreign_sections="drop")
        _, model_dir = run_base_model(path, f"{what} (a spectune run)")
        if (path / "merged").is_dir():
            _check_teacher_weights(path / "merged", what)
        elif (path / "adapter").is_dir():
            _check_teacher_weights(model_dir, f"{what}: its base model {model_dir}")
            _check_adapter(path / "adapter", what)
        else:
            raise SpectuneError(f"{what}: the run has neither adapter/ nor merged/")
        source = TeacherSource("run", path, model_dir, cfg.method)
    elif (path / "config.json").is_file():
        _check_teacher_weights(path, what)
        source = TeacherSource("model", path, path)
    else:
        raise SpectuneError(
            f"distill.teacher {path} holds neither a model (config.json) nor a spectune run "
            "(config.yaml and run.json)"
        )
    check_same_vocabulary(source.model_dir, student_dir, what=what)
    return source


def _check_teacher_weights(folder: Path, what: str) -> None:
    """Refuse a teacher model folder whose config or weights cannot be loaded (read without
    a tensor: headers, sizes, PyTorch files weights-only on the meta device)."""
    from spectune.models.loading import read_model_config, weights_problem

    read_model_config(folder, what)
    problem = weights_problem(folder)
    if problem:
        raise SpectuneError(f"{what}: {problem}; the teacher cannot be loaded")


def _check_adapter(adapter: Path, what: str) -> None:
    """Refuse a teacher run whose adapter/ holds a truncated or corrupt weights file."""
    from spectune.models.loading import safetensors_problem, torch_file_problem

    files = [p for p in sorted(adapter.rglob("*")) if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    if not weights:
        raise SpectuneError(f"{what}: its adapter/ holds no weights file; the teacher cannot "
                            "be loaded")  # fmt: skip
    for path in weights:
        if path.suffix == ".safetensors":  # (the problem starts with the file's name)
            problem = safetensors_problem(path)
            problem = problem and f"{path.parent.relative_to(adapter.parent)}/{problem}"
        else:
            problem = torch_file_problem(path)
        if problem:
            raise SpectuneError(f"{what}: {problem}; the teacher cannot be loaded")


def check_same_vocabulary(teacher_dir: Path, student_dir: Path, *, what: str) -> None:
    """Refuse a teacher whose tokenizer or output vocabulary differs from the student's: the
    divergence compares distributions over the same token ids."""
    from transformers import AutoTokenizer

    ts, ss = _vocab_size(teacher_dir, what), _vocab_size(student_dir)
    if ts != ss:
        raise SpectuneError(
            f"{what}: its vocabulary has {ts} tokens and the student's ({student_dir}) {ss}; "
            "distillation compares next-token distributions over the same vocabulary: use a "
            "teacher of the student's model family (same tokenizer)"
        )
    try:
        tt = AutoTokenizer.from_pretrained(teacher_dir)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SpectuneError(
            f"{what}: its tokenizer cannot be loaded ({' '.join(str(exc).split())[:200]}); "
            "copy the student's tokenizer files into it"
        ) from None
    st = AutoTokenizer.from_pretrained(student_dir)
    if len(tt) != len(st) or tt.get_vocab() != st.get_vocab():
        va, vb = tt.get_vocab(), st.get_vocab()
        diff = sorted(set(va.items()) ^ set(vb.items()), key=lambda kv: kv[1])[:3]
        raise SpectuneError(
            f"{what}: its tokenizer ({len(tt)} tokens) differs from the student's "
            f"({student_dir}, {len(st)} tokens), e.g. {', '.join(f'{k!r}={v}' for k, v in diff)}; "
            "use a teacher that shares the student's tokenizer"
        )


def load_teacher(source: TeacherSource, *, progress: bool = False) -> Any:
    """The teacher model in float32, eval mode, no parameter requiring a gradient, on the
    device training uses (:func:`spectune.models.hardware.to_compute_device`)."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from spectune.models import hardware
    from spectune.tuning.methods.base import load_float_base

    if source.kind == "context":
        model = load_float_base(source.model_dir)
    elif source.kind == "model":
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    elif (source.path / "merged").is_dir():
        model = AutoModelForCausalLM.from_pretrained(source.path / "merged", dtype=torch.float32)
    else:
        from spectune.tuning.config import load_config
        from spectune.tuning.methods import get_method
        from spectune.tuning.methods.base import BuildContext

        cfg = load_config(source.path / "config.yaml", foreign_sections="drop")
        method = get_method(cfg.method)
        with tempfile.TemporaryDirectory(prefix="spectune-teacher-") as tmp:
            ctx = BuildContext(cfg, source.model_dir, Path(tmp), progress)
            base, _ = method.load_base(ctx)
            model = method.load(ctx, base, source.path / "adapter")
    model.eval()
    model.requires_grad_(False)
    return hardware.to_compute_device(model)  # beside the student the Trainer places


# --------------------------------------------------------------------------- prompts


def _strip_prefix(text: str) -> str:
    for prefix in (ANSWER_PREFIX, RATIONALE_PREFIX):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def teacher_prompt(tokenizer: Any, example: InstructionExample, *, system: str | None,
                   shots: list[InstructionExample]) -> str:  # fmt: skip
    """The teacher's chat prompt: its system prompt, the few-shot turns, then the question
    (without any task prefix), ending with the assistant header."""
    from spectune.data.instructions import InstructionExample, user_message

    messages = [] if system is None else [{"role": "system", "content": system}]
    for shot in shots:
        messages.append({"role": "user", "content": user_message(shot)})
        messages.append({"role": "assistant", "content": shot.response})
    plain = InstructionExample(_strip_prefix(example.instruction), example.response,
                               example.context, example.category)  # fmt: skip
    messages.append({"role": "user", "content": user_message(plain)})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _teacher_system(section: DistillSection, student_system: str | None,
                    kind: str) -> str | None:  # fmt: skip
    context = section.context
    if context is None and kind == "context":
        context = DEFAULT_CONTEXT
    if context is None:
        return student_system
    return context if student_system is None else f"{student_system}\n\n{context}"


# --------------------------------------------------------------------------- features


def distill_features(examples: list[InstructionExample], tokenizer: Any, *, max_length: int,
                     system: str | None, teacher_system: str | None,
                     shots: list[InstructionExample], rationales: list[str] | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Training features: per example the student's ids and labels (response tokens only) and
    the teacher's ids (its own prompt, the same response tokens); with ``rationales`` one more
    rationale-task row per example (student only, ``task`` 1).

    The student is cut at ``max_length``; the teacher at ``max_length`` plus its longer
    prompt, so both label the same response tokens.
    """
    from spectune.data.instructions import InstructionExample, build_chat, tokenize_example
    from spectune.models.tokenizer import IGNORE_INDEX

    features: list[dict[str, Any]] = []
    n_truncated = n_dropped = n_label = 0
    for i, ex in enumerate(examples):
        prompt, answer = build_chat(tokenizer, ex, system=system)
        ids, labels = tokenize_example(tokenizer, ex, system=system)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        t_prompt = list(tokenizer(teacher_prompt(tokenizer, ex, system=teacher_system,
                                                 shots=shots),
                                  add_special_tokens=False)["input_ids"])  # fmt: skip
        t_ids = t_prompt + ids[n_prompt:]
        t_labels = [IGNORE_INDEX] * len(t_prompt) + labels[n_prompt:]
        if len(ids) > max_length:
            n_truncated += 1
            cut = max_length + len(t_prompt) - n_prompt
            ids, labels, t_ids, t_labels = ids[:max_length], labels[:max_length], t_ids[:cut], \
                t_labels[:cut]  # fmt: skip
        n = sum(1 for lab in labels[1:] if lab != IGNORE_INDEX)
        if n == 0:
            n_dropped += 1
            continue
        n_label += n
        features.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids),
                         "teacher_input_ids": t_ids, "teacher_labels": t_labels, "task": 0,
                         "prompt_len": n_prompt, "teacher_prompt_len": len(t_prompt)})  # fmt: skip
        if rationales is not None and rationales[i]:
            rex = InstructionExample(RATIONALE_PREFIX + _strip_prefix(ex.instruction),
                                     rationales[i], ex.context, ex.category)  # fmt: skip
            r_ids, r_labels = tokenize_example(tokenizer, rex, system=system)
            r_ids, r_labels = r_ids[:max_length], r_labels[:max_length]
            if any(lab != IGNORE_INDEX for lab in r_labels[1:]):
                features.append({"input_ids": r_ids, "labels": r_labels,
                                 "attention_mask": [1] * len(r_ids), "task": 1})  # fmt: skip
    if not features:
        raise SpectuneError(
            f"all {len(examples)} examples lost their response to truncation at "
            f"data.max_length={max_length}; raise data.max_length"
        )
    info = {"n_examples": len(examples), "n_kept": len(examples) - n_dropped,
            "n_truncated": n_truncated, "n_dropped": n_dropped, "n_label_tokens": n_label,
            "n_rationale_rows": sum(f["task"] == 1 for f in features),
            "max_length": max_length}  # fmt: skip
    return features, info


class DistillCollator:
    """Pads the student's rows (all of them) and the teacher's rows (answer-task rows only,
    in the same order); ``task`` is 0 (answer) or 1 (rationale) per student row."""

    def __init__(self, pad_id: int) -> None:
        from spectune.data.instructions import InstructionCollator

        self.student = InstructionCollator(pad_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.student(features)
        batch["task"] = torch.tensor([f.get("task", 0) for f in features], dtype=torch.long)
        batch["prompt_len"] = torch.tensor([f.get("prompt_len", 0) for f in features])
        rows = [{"input_ids": f["teacher_input_ids"], "labels": f["teacher_labels"]}
                for f in features if f.get("task", 0) == 0]  # fmt: skip
        if rows:
            t = self.student(rows)
            batch["teacher_input_ids"] = t["input_ids"]
            batch["teacher_attention_mask"] = t["attention_mask"]
            batch["teacher_labels"] = t["labels"]
            batch["teacher_prompt_len"] = torch.tensor(
                [f.get("teacher_prompt_len", 0) for f in features if f.get("task", 0) == 0]
            )
        return batch


def _labelled_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor,
                     keep: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Logits of the next-token predictions at ``keep`` (batch, length - 1), the head applied
    only there when the model can be split into decoder and head. (positions, vocab)."""
    from spectune.models.forward import as_forward, decoder_and_head

    parts = decoder_and_head(model)
    if parts is None:
        return model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]
    decoder, head = parts

    def forward(_: Any) -> torch.Tensor:
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return head(hidden[:, :-1][keep])

    return as_forward(model, forward)


def distill_batch_loss(student: Any, teacher: Any, inputs: dict[str, torch.Tensor], *,
                       beta: float, temperature: float, sft_weight: float,
                       rationale_weight: float) -> tuple[torch.Tensor, int]:  # fmt: skip
    """The loss of one batch and its labelled token count.

    ``(1 - sft_weight) * mean divergence + sft_weight * mean NLL`` over the answer tokens,
    plus ``rationale_weight * mean NLL`` over the rationale tokens (when the batch has any).
    The teacher runs without gradients.
    """
    import torch
    import torch.nn.functional as F

    from spectune.models.tokenizer import IGNORE_INDEX

    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    task = inputs.get("task")
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX  # (batch, length - 1)
    answer_rows = torch.ones_like(keep[:, 0]) if task is None else task == 0  # (batch,)
    logits = _labelled_logits(student, ids, mask, keep).float()  # (labelled, vocab)
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(keep)[keep]
    is_answer = answer_rows[rows]  # (labelled,)
    y = target[keep]
    loss = logits.new_zeros(())
    if bool(is_answer.any()):
        s_logits = logits[is_answer]
        t_keep = inputs["teacher_labels"][:, 1:] != IGNORE_INDEX
        with torch.no_grad():
            t_logits = _labelled_logits(teacher, inputs["teacher_input_ids"],
                                        inputs["teacher_attention_mask"], t_keep).float()  # fmt: skip
        if t_logits.shape != s_logits.shape:
            raise SpectuneError(
                f"teacher and student label {t_logits.shape[0]} and {s_logits.shape[0]} "
                f"tokens of a batch (vocabularies {t_logits.shape[-1]} and "
                f"{s_logits.shape[-1]}); they must score the same response tokens"
            )
        div = generalized_jsd(s_logits, t_logits, beta=beta, temperature=temperature).mean()
        loss = loss + (1 - sft_weight) * div
        if sft_weight > 0:
            loss = loss + sft_weight * F.cross_entropy(s_logits, y[is_answer])
    if bool((~is_answer).any()):
        loss = loss + rationale_weight * F.cross_entropy(logits[~is_answer], y[~is_answer])
    return loss, int(keep.sum())


def on_policy_inputs(student: Any, inputs: dict[str, torch.Tensor], *, pad_id: int,
                     eot: int | None, max_new_tokens: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """The batch with each answer row's response replaced by the student's own greedy answer
    (on-policy distillation, Agarwal et al. 2024): the student's and the teacher's prompts are
    kept, the generated tokens and the end-of-turn token are labelled; rationale rows stay."""
    from spectune.models.forward import eval_mode as _eval_mode
    from spectune.models.generate import greedy_batch as _greedy_batch
    from spectune.models.tokenizer import IGNORE_INDEX

    ids, mask, labels, task = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                               inputs["task"])  # fmt: skip
    answer_rows = [r for r in range(ids.shape[0]) if int(task[r]) == 0]
    s_prompts = [ids[r, : int(inputs["prompt_len"][r])].tolist() for r in answer_rows]
    t_prompts = [inputs["teacher_input_ids"][j, : int(inputs["teacher_prompt_len"][j])].tolist()
                 for j in range(len(answer_rows))]  # fmt: skip
    with _eval_mode(student):
        generated = _greedy_batch(student, s_prompts, max_new_tokens=max_new_tokens,
                                  pad_id=pad_id, stop_ids=set() if eot is None else {eot})  # fmt: skip
    features, j = [], 0
    for r in range(ids.shape[0]):
        if int(task[r]) != 0:
            keep = mask[r] == 1
            features.append({"input_ids": ids[r][keep].tolist(), "labels": labels[r][keep].tolist(),
                             "task": 1})  # fmt: skip
            continue
        answer = generated[j] + ([] if eot is None else [eot])
        if not answer:
            answer = [pad_id]
        sp, tp = s_prompts[j], t_prompts[j]
        features.append({"input_ids": sp + answer, "labels": [IGNORE_INDEX] * len(sp) + answer,
                         "teacher_input_ids": tp + answer,
                         "teacher_labels": [IGNORE_INDEX] * len(tp) + answer, "task": 0,
                         "prompt_len": len(sp), "teacher_prompt_len": len(tp)})  # fmt: skip
        j += 1
    batch = DistillCollator(pad_id)(features)
    return {k: v.to(ids.device) for k, v in batch.items()}


# --------------------------------------------------------------------------- judging


def teacher_agreement(student: Any, teacher: Any, tokenizer: Any,
                      examples: list[InstructionExample], *, system: str | None,
                      teacher_system: str | None, shots: list[InstructionExample],
                      max_length: int, batch_size: int = 8) -> dict[str, float]:  # fmt: skip
    """Teacher-forced agreement on the examples' responses: mean forward KL(teacher ||
    student) per response token (nats), and the fraction of tokens where the argmax agrees."""
    from spectune.models.forward import eval_mode as _eval_mode
    from spectune.models.forward import model_device as _device

    features, _ = distill_features(examples, tokenizer, max_length=max_length, system=system,
                                   teacher_system=teacher_system, shots=shots)  # fmt: skip
    collate = DistillCollator(_pad_id(tokenizer))
    device = _device(student)
    total_kl, agree, count = 0.0, 0, 0
    with _eval_mode(student), _eval_mode(teacher):
        for start in range(0, len(features), batch_size):
            batch = {
                k: v.to(device) for k, v in collate(features[start : start + batch_size]).items()
            }
            keep = batch["labels"][:, 1:] != -100
            t_keep = batch["teacher_labels"][:, 1:] != -100
            s = _labelled_logits(student, batch["input_ids"], batch["attention_mask"], keep)
            t = _labelled_logits(teacher, batch["teacher_input_ids"],
                                 batch["teacher_attention_mask"], t_keep)  # fmt: skip
            total_kl += float(generalized_jsd(s, t, beta=0.0).sum())
            agree += int((s.argmax(-1) == t.argmax(-1)).sum())
            count += int(keep.sum())
    return {"teacher_kl": total_kl / max(count, 1), "teacher_token_agreement": agree / max(count, 1),
            "n_tokens": count}  # fmt: skip


def _pad_id(tokenizer: Any) -> int:
    from spectune.models.tokenizer import pad_token_id

    return pad_token_id(tokenizer)


def _spectra_vs_teacher(teacher: Any, student: Any, progress: bool) -> dict[str, Any]:
    """Student vs teacher layer by layer (:func:`spectune.watch.compare.compare`), on
    merged weights (copies, for a model that keeps a peft adapter)."""
    import copy

    from spectune.watch.compare import compare, compare_summary

    def plain(model: Any) -> Any:  # a peft model's weights with the adapter merged in
        return copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") \
            else model  # fmt: skip

    table = compare(plain(teacher), plain(student), progress=progress, precision="float32")
    summary = compare_summary(table)
    ok = table[table["match"] == "matched"]
    summary["layers"] = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v)
         for k, v in row.items()}
        for row in ok[["longname", "d_log_spectral_norm", "d_log_norm", "d_alpha",
                       "collapsed"]].to_dict(orient="records")
    ]  # fmt: skip
    return summary


def _teacher_answers(teacher: Any, ctx: JudgeContext, state: DistillState, examples: list[Any],
                     rationales: list[str] | None) -> tuple[list[Any], list[str] | None, int]:  # fmt: skip
    """The examples with the teacher's greedy answers as responses (empty answers dropped),
    their rationales, and how many were dropped."""
    from spectune.data.instructions import InstructionExample
    from spectune.models.generate import greedy_generate

    prompts = [teacher_prompt(ctx.tokenizer, ex, system=state.system, shots=state.shots)
               for ex in examples]  # fmt: skip
    answers = greedy_generate(teacher, ctx.tokenizer, prompts,
                              max_new_tokens=state.section.max_new_tokens,
                              batch_size=ctx.config.eval.batch_size, progress=ctx.progress)  # fmt: skip
    kept = [i for i, a in enumerate(answers) if a.strip()]
    out = [InstructionExample(examples[i].instruction, answers[i], examples[i].context,
                              examples[i].category) for i in kept]  # fmt: skip
    return out, None if rationales is None else [rationales[i] for i in kept], \
        len(examples) - len(kept)  # fmt: skip


def _state(ctx: JudgeContext | None, hook: str) -> DistillState:
    if ctx is None or not isinstance(ctx.state, DistillState):
        raise SpectuneError(f"objective distill: {hook}() needs the run's state (the "
                            "teacher from prepare(ctx)), passed in ctx")  # fmt: skip
    return ctx.state


# --------------------------------------------------------------------------- the objective


class Distill(Objective):
    description = "knowledge distillation: the teacher's next-token distributions (KL / JSD)"
    sections = {"distill": DistillSection}

    def check(self, config: TuneConfig) -> None:
        sec = config.section("distill")
        if sec.rationale_weight > 0 and config.data.train != "tasks":
            raise SpectuneError(
                "distill.rationale_weight > 0 needs rationales, which the bundled task set's "
                "generator writes (data.train: tasks); set distill.rationale_weight: 0 for "
                f"data file {config.data.train}"
            )
        if sec.loss != "jsd" and sec.beta != 0.5:
            raise SpectuneError(
                f"distill.beta is read only with distill.loss: jsd (loss {sec.loss!r} is beta "
                f"{sec.effective_beta:g}); remove distill.beta or set distill.loss: jsd"
            )

    def inputs(self, config: TuneConfig) -> dict[str, str]:
        """The teacher folder (not ``context``: that is the student's own base model)."""
        teacher = config.section("distill").teacher
        return {} if teacher == "context" else {"distill.teacher": teacher}

    def load_data(self, config: TuneConfig) -> RunData:
        """The instruction data (as ``sft``), with the teacher resolved and checked against
        the student's tokenizer first: a wrong teacher fails before any work."""
        from spectune.data.instructions import InstructionExample
        from spectune.models.loading import resolve_model_dir
        from spectune.tuning.objectives.sft import load_instruction_data

        sec = config.section("distill")
        source = resolve_teacher(sec, resolve_model_dir(config.model))
        data = load_instruction_data(config)
        if sec.rationale_weight > 0:
            data.heldout = [InstructionExample(ANSWER_PREFIX + ex.instruction, ex.response,
                                               ex.context, ex.category)
                            for ex in data.heldout]  # fmt: skip
        data.info["teacher"] = source.describe()
        data.extra = {"source": source}
        return data

    def prepare(self, ctx: JudgeContext) -> DistillState:
        """Load the teacher (frozen); pick the few-shot turns (from the training records);
        with ``responses: teacher`` have it answer every training and validation prompt once
        (greedy)."""
        import time

        from spectune.data.tasks import task_rationale

        sec = ctx.config.section("distill")
        source: TeacherSource = ctx.data.extra["source"]
        teacher = load_teacher(source, progress=ctx.progress)
        train, validation = list(ctx.data.train), list(ctx.data.validation)
        shots = []
        if sec.shots:
            rng = random.Random(f"spectune-distill-shots:{ctx.config.seed}")
            shots = rng.sample(train, min(sec.shots, len(train)))
        system = _teacher_system(sec, ctx.config.data.system, source.kind)

        def rationales(examples: list[Any]) -> list[str] | None:
            return [task_rationale(ex) or "" for ex in examples] if sec.rationale_weight > 0 \
                else None  # fmt: skip

        state = DistillState(source, sec, teacher, system, shots, train, rationales(train),
                             validation, rationales(validation), pad_id=_pad_id(ctx.tokenizer),
                             eot=ctx.tokenizer.eos_token_id)  # fmt: skip
        state.info = {"teacher": source.describe(), "teacher_system": system,
                      "shots": len(shots), "beta": sec.effective_beta}  # fmt: skip
        if sec.responses == "teacher":
            start = time.perf_counter()
            state.train, state.rationales, empty = _teacher_answers(
                teacher, ctx, state, train, state.rationales)  # fmt: skip
            if validation:
                state.validation, state.validation_rationales, _ = _teacher_answers(
                    teacher, ctx, state, validation, state.validation_rationales)  # fmt: skip
            state.info.update(teacher_responses=len(state.train), teacher_responses_empty=empty,
                              teacher_generation_seconds=time.perf_counter() - start)  # fmt: skip
            if not state.train:
                raise SpectuneError("distill.responses=teacher: the teacher answered every "
                                    "training prompt with nothing")  # fmt: skip
            if validation and not state.validation:
                raise SpectuneError("distill.responses=teacher: the teacher answered every "
                                    "validation prompt with nothing")  # fmt: skip
        return state

    def features(self, config: TuneConfig, data: RunData, tokenizer: Any,
                 ctx: JudgeContext | None = None) -> TrainData:  # fmt: skip
        state = _state(ctx, "features")
        features, info = distill_features(
            state.train, tokenizer, max_length=config.data.max_length, system=config.data.system,
            teacher_system=state.system, shots=state.shots, rationales=state.rationales,
        )  # fmt: skip
        info.update(state.info)
        return TrainData(features, DistillCollator(_pad_id(tokenizer)), info)

    def validation_features(self, config: TuneConfig, data: RunData, tokenizer: Any,
                            ctx: JudgeContext | None = None) -> TrainData:  # fmt: skip
        """The validation records as training features (the teacher's answers with
        ``responses: teacher``, the same shots and rationales as training)."""
        state = _state(ctx, "validation_features")
        features, info = distill_features(
            state.validation, tokenizer, max_length=config.data.max_length,
            system=config.data.system, teacher_system=state.system, shots=state.shots,
            rationales=state.validation_rationales,
        )  # fmt: skip
        return TrainData(features, DistillCollator(_pad_id(tokenizer)), info)

    def compute_loss(self, trainer: Any, model: Any, inputs: dict[str, Any], *,
                     return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:  # fmt: skip
        if return_outputs:
            inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
            return trainer.model_loss(model, inputs, return_outputs=True,
                                      num_items_in_batch=num_items_in_batch)  # fmt: skip
        state: DistillState = trainer.objective_state
        sec = state.section
        if sec.on_policy > 0 and model.training:  # validation scores the fixed sequences
            draw = random.Random(f"spectune-distill-on-policy:{trainer.args.seed}:"
                                 f"{trainer.state.global_step}").random()  # fmt: skip
            if draw < sec.on_policy:
                inputs = on_policy_inputs(model, inputs, pad_id=state.pad_id, eot=state.eot,
                                          max_new_tokens=sec.max_new_tokens)  # fmt: skip
        loss, n = distill_batch_loss(model, state.teacher, inputs, beta=sec.effective_beta,
                                     temperature=sec.temperature, sft_weight=sec.sft_weight,
                                     rationale_weight=sec.rationale_weight)  # fmt: skip
        if num_items_in_batch is not None and trainer.model_accepts_loss_kwargs:
            # the Trainer then does not divide by the gradient accumulation steps itself
            return token_mean(trainer, loss * n, n, num_items_in_batch)
        return loss

    def judge(self, ctx: JudgeContext, model: Any, phase: str) -> dict[str, Any]:
        """Agreement with the teacher on the held-out examples (see the module docstring)."""
        from spectune.data.instructions import build_prompt
        from spectune.data.tasks import answers_match
        from spectune.models.generate import greedy_generate

        state: DistillState = ctx.state
        if state is None:
            return {}
        config, tok, heldout = ctx.config, ctx.tokenizer, ctx.data.heldout
        e = config.eval
        student = model() if callable(model) and not hasattr(model, "parameters") else model
        if state.heldout_teacher_answers is None:
            prompts = [teacher_prompt(tok, ex, system=state.system, shots=state.shots)
                       for ex in heldout]  # fmt: skip
            state.heldout_teacher_answers = greedy_generate(
                state.teacher, tok, prompts, max_new_tokens=e.max_new_tokens,
                batch_size=e.batch_size, progress=ctx.progress)  # fmt: skip
        t_answers = state.heldout_teacher_answers
        s_answers = greedy_generate(
            student, tok, [build_prompt(tok, ex, system=config.data.system) for ex in heldout],
            max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, progress=ctx.progress)  # fmt: skip
        out: dict[str, Any] = teacher_agreement(
            student, state.teacher, tok, heldout, system=config.data.system,
            teacher_system=state.system, shots=state.shots, max_length=config.data.max_length,
            batch_size=max(1, e.batch_size // 2))  # fmt: skip
        out["teacher_agreement"] = sum(
            answers_match(s, t) for s, t in zip(s_answers, t_answers, strict=True)
        ) / len(heldout)
        out["teacher_accuracy"] = sum(
            answers_match(t, ex.response) for t, ex in zip(t_answers, heldout, strict=True)
        ) / len(heldout)
        if phase == "after" and config.section("distill").spectra_vs_teacher:
            out["spectra_vs_teacher"] = _spectra_vs_teacher(state.teacher, student, ctx.progress)
        return out


register_objective("distill", Distill())

__all__ = [
    "DEFAULT_CONTEXT",
    "Distill",
    "DistillCollator",
    "DistillSection",
    "DistillState",
    "TeacherSource",
    "check_same_vocabulary",
    "distill_batch_loss",
    "distill_features",
    "generalized_jsd",
    "load_teacher",
    "on_policy_inputs",
    "resolve_teacher",
    "teacher_agreement",
    "teacher_prompt",
]
