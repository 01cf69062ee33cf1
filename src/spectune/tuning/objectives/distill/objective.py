"""The distillation objective (:class:`Distill`): the teacher loaded once per run, the
training features, the loss of a batch (on-policy steps included), the judged agreement
with the teacher; registered as ``distill``."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from spectune.data.examples import InstructionExample
from spectune.data.instructions import build_prompt
from spectune.data.tasks import answers_match, task_rationale
from spectune.errors import SpectuneError
from spectune.models.forward import eval_mode, model_device
from spectune.models.generate import greedy_generate, stop_criteria
from spectune.models.loading import resolve_model_dir
from spectune.models.tokenizer import end_of_turn, pad_token_id
from spectune.tuning.objectives import register_objective
from spectune.tuning.objectives.base import (
    JudgeContext,
    Objective,
    RunData,
    TrainData,
    token_mean,
)
from spectune.tuning.objectives.distill.data import (
    DistillCollator,
    distill_features,
    on_policy_inputs,
)
from spectune.tuning.objectives.distill.loss import (
    distill_batch_loss,
    generalized_jsd,
    labelled_logits,
)
from spectune.tuning.objectives.distill.section import ANSWER_PREFIX, DistillSection
from spectune.tuning.objectives.distill.teacher import (
    TeacherSource,
    load_teacher,
    resolve_teacher,
    teacher_prompt,
    teacher_system,
)
from spectune.tuning.objectives.sft import load_instruction_data

if TYPE_CHECKING:
    from spectune.tuning.config import TuneConfig


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
    eot: tuple[int, ...] | None = None
    stop: Any = None
    teacher_responses: list[str] | None = None
    heldout_teacher_answers: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def teacher_agreement(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    examples: list[InstructionExample],
    *,
    system: str | None,
    teacher_system: str | None,
    shots: list[InstructionExample],
    max_length: int,
    batch_size: int = 8,
) -> dict[str, float]:
    """Teacher-forced agreement on the examples' responses: mean forward KL(teacher ||
    student) per response token (nats), and the fraction of tokens where the argmax agrees."""
    features, _ = distill_features(
        examples,
        tokenizer,
        max_length=max_length,
        system=system,
        teacher_system=teacher_system,
        shots=shots,
    )
    collate = DistillCollator(_pad_id(tokenizer))
    device = model_device(student)
    total_kl, agree, count = 0.0, 0, 0
    with eval_mode(student), eval_mode(teacher):
        for start in range(0, len(features), batch_size):
            batch = {
                k: v.to(device) for k, v in collate(features[start : start + batch_size]).items()
            }
            keep = batch["labels"][:, 1:] != -100
            t_keep = batch["teacher_labels"][:, 1:] != -100
            s = labelled_logits(student, batch["input_ids"], batch["attention_mask"], keep)
            t = labelled_logits(
                teacher, batch["teacher_input_ids"], batch["teacher_attention_mask"], t_keep
            )
            total_kl += float(generalized_jsd(s, t, beta=0.0).sum())
            agree += int((s.argmax(-1) == t.argmax(-1)).sum())
            count += int(keep.sum())
    return {
        "teacher_kl": total_kl / max(count, 1),
        "teacher_token_agreement": agree / max(count, 1),
        "n_tokens": count,
    }


def _pad_id(tokenizer: Any) -> int:
    return pad_token_id(tokenizer)


def _spectra_vs_teacher(teacher: Any, student: Any, progress: bool) -> dict[str, Any]:
    """Student vs teacher layer by layer (:func:`spectune.watch.compare.compare`), on
    merged weights (copies, for a model that keeps a peft adapter)."""
    # the spectra stack (scipy's fits) is imported here, when a run judges: the registry loads
    # every objective, and a training process should not carry it (what spectune memory counts)
    from spectune.watch.compare import compare, compare_summary

    def plain(model: Any) -> Any:  # a peft model's weights with the adapter merged in
        return (
            copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
        )

    table = compare(plain(teacher), plain(student), progress=progress, precision="float32")
    summary = compare_summary(table)
    ok = table[table["match"] == "matched"]
    summary["layers"] = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in ok[
            ["longname", "d_log_spectral_norm", "d_log_norm", "d_alpha", "collapsed"]
        ].to_dict(orient="records")
    ]
    return summary


def _teacher_answers(
    teacher: Any,
    ctx: JudgeContext,
    state: DistillState,
    examples: list[Any],
    rationales: list[str] | None,
) -> tuple[list[Any], list[str] | None, int]:
    """The examples with the teacher's greedy answers as responses (empty answers dropped),
    their rationales, and how many were dropped."""
    prompts = [
        teacher_prompt(ctx.tokenizer, ex, system=state.system, shots=state.shots) for ex in examples
    ]
    answers = greedy_generate(
        teacher,
        ctx.tokenizer,
        prompts,
        max_new_tokens=state.section.max_new_tokens,
        batch_size=ctx.config.eval.batch_size,
        progress=ctx.progress,
    )
    kept = [i for i, a in enumerate(answers) if a.strip()]
    out = [replace(examples[i], response=answers[i]) for i in kept]
    return (
        out,
        None if rationales is None else [rationales[i] for i in kept],
        len(examples) - len(kept),
    )


def _state(ctx: JudgeContext | None, hook: str) -> DistillState:
    if ctx is None or not isinstance(ctx.state, DistillState):
        raise SpectuneError(
            f"objective distill: {hook}() needs the run's state (the "
            "teacher from prepare(ctx)), passed in ctx"
        )
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
        sec = config.section("distill")
        source = resolve_teacher(sec, resolve_model_dir(config.model))
        data = load_instruction_data(config)
        if sec.rationale_weight > 0:
            data.heldout = [
                replace(ex, instruction=ANSWER_PREFIX + ex.instruction) for ex in data.heldout
            ]
        data.info["teacher"] = source.describe()
        data.extra = {"source": source}
        return data

    def prepare(self, ctx: JudgeContext) -> DistillState:
        """Load the teacher (frozen); pick the few-shot turns (from the training records);
        with ``responses: teacher`` have it answer every training and validation prompt once
        (greedy)."""
        sec = ctx.config.section("distill")
        source: TeacherSource = ctx.data.extra["source"]
        teacher = load_teacher(source, progress=ctx.progress)
        train, validation = list(ctx.data.train), list(ctx.data.validation)
        shots = []
        if sec.shots:
            rng = random.Random(f"spectune-distill-shots:{ctx.config.seed}")
            shots = rng.sample(train, min(sec.shots, len(train)))
        system = teacher_system(sec, ctx.config.data.system, source.kind)

        def rationales(examples: list[Any]) -> list[str] | None:
            return (
                [task_rationale(ex) or "" for ex in examples] if sec.rationale_weight > 0 else None
            )

        state = DistillState(
            source,
            sec,
            teacher,
            system,
            shots,
            train,
            rationales(train),
            validation,
            rationales(validation),
            pad_id=_pad_id(ctx.tokenizer),
            eot=None if (marker := end_of_turn(ctx.tokenizer)) is None else marker.ids,
            stop=stop_criteria(ctx.tokenizer),
        )
        state.info = {
            "teacher": source.describe(),
            "teacher_system": system,
            "shots": len(shots),
            "beta": sec.effective_beta,
        }
        if sec.responses == "teacher":
            start = time.perf_counter()
            state.train, state.rationales, empty = _teacher_answers(
                teacher, ctx, state, train, state.rationales
            )
            if validation:
                state.validation, state.validation_rationales, _ = _teacher_answers(
                    teacher, ctx, state, validation, state.validation_rationales
                )
            state.info.update(
                teacher_responses=len(state.train),
                teacher_responses_empty=empty,
                teacher_generation_seconds=time.perf_counter() - start,
            )
            if not state.train:
                raise SpectuneError(
                    "distill.responses=teacher: the teacher answered every "
                    "training prompt with nothing"
                )
            if validation and not state.validation:
                raise SpectuneError(
                    "distill.responses=teacher: the teacher answered every "
                    "validation prompt with nothing"
                )
        return state

    def features(
        self, config: TuneConfig, data: RunData, tokenizer: Any, ctx: JudgeContext | None = None
    ) -> TrainData:
        state = _state(ctx, "features")
        features, info = distill_features(
            state.train,
            tokenizer,
            max_length=config.data.max_length,
            system=config.data.system,
            teacher_system=state.system,
            shots=state.shots,
            rationales=state.rationales,
        )
        info.update(state.info)
        return TrainData(features, DistillCollator(_pad_id(tokenizer)), info)

    def validation_features(
        self, config: TuneConfig, data: RunData, tokenizer: Any, ctx: JudgeContext | None = None
    ) -> TrainData:
        """The validation records as training features (the teacher's answers with
        ``responses: teacher``, the same shots and rationales as training)."""
        state = _state(ctx, "validation_features")
        features, info = distill_features(
            state.validation,
            tokenizer,
            max_length=config.data.max_length,
            system=config.data.system,
            teacher_system=state.system,
            shots=state.shots,
            rationales=state.validation_rationales,
        )
        return TrainData(features, DistillCollator(_pad_id(tokenizer)), info)

    def compute_loss(
        self,
        trainer: Any,
        model: Any,
        inputs: dict[str, Any],
        *,
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if return_outputs:
            inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
            return trainer.model_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        state: DistillState = trainer.objective_state
        sec = state.section
        if sec.on_policy > 0 and model.training:  # validation scores the fixed sequences
            draw = random.Random(
                f"spectune-distill-on-policy:{trainer.args.seed}:{trainer.state.global_step}"
            ).random()
            if draw < sec.on_policy:
                inputs = on_policy_inputs(
                    model,
                    inputs,
                    pad_id=state.pad_id,
                    eot=state.eot,
                    max_new_tokens=sec.max_new_tokens,
                    stop=state.stop,
                )
        loss, n = distill_batch_loss(
            model,
            state.teacher,
            inputs,
            beta=sec.effective_beta,
            temperature=sec.temperature,
            sft_weight=sec.sft_weight,
            rationale_weight=sec.rationale_weight,
        )
        if num_items_in_batch is not None and trainer.model_accepts_loss_kwargs:
            # the Trainer then does not divide by the gradient accumulation steps itself
            return token_mean(trainer, loss * n, n, num_items_in_batch)
        return loss

    def judge(self, ctx: JudgeContext, model: Any, phase: str) -> dict[str, Any]:
        """Agreement with the teacher on the held-out examples (see the module docstring)."""
        state: DistillState = ctx.state
        if state is None:
            return {}
        config, tok, heldout = ctx.config, ctx.tokenizer, ctx.data.heldout
        e = config.eval
        student = model() if callable(model) and not hasattr(model, "parameters") else model
        if state.heldout_teacher_answers is None:
            prompts = [
                teacher_prompt(tok, ex, system=state.system, shots=state.shots) for ex in heldout
            ]
            state.heldout_teacher_answers = greedy_generate(
                state.teacher,
                tok,
                prompts,
                max_new_tokens=e.max_new_tokens,
                batch_size=e.batch_size,
                progress=ctx.progress,
            )
        t_answers = state.heldout_teacher_answers
        s_answers = greedy_generate(
            student,
            tok,
            [build_prompt(tok, ex, system=config.data.system) for ex in heldout],
            max_new_tokens=e.max_new_tokens,
            batch_size=e.batch_size,
            progress=ctx.progress,
        )
        out: dict[str, Any] = teacher_agreement(
            student,
            state.teacher,
            tok,
            heldout,
            system=config.data.system,
            teacher_system=state.system,
            shots=state.shots,
            max_length=config.data.max_length,
            batch_size=max(1, e.batch_size // 2),
        )
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
