"""Distillation's training data: features with the student's and the teacher's rows (and
rationale rows), their collator, and on-policy batches of the student's own answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spectune.data.examples import InstructionExample
from spectune.data.instructions import InstructionCollator, build_chat, tokenize_example
from spectune.errors import SpectuneError
from spectune.models.forward import eval_mode
from spectune.models.generate import StopCriteria, greedy_batch
from spectune.models.tokenizer import IGNORE_INDEX
from spectune.tuning.objectives.distill.section import RATIONALE_PREFIX
from spectune.tuning.objectives.distill.teacher import strip_task_prefix, teacher_prompt


def distill_features(
    examples: list[InstructionExample],
    tokenizer: Any,
    *,
    max_length: int,
    system: str | None,
    teacher_system: str | None,
    shots: list[InstructionExample],
    rationales: list[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Training features: per example the student's ids and labels (response tokens only) and
    the teacher's ids (its own prompt, the same response tokens); with ``rationales`` one more
    rationale-task row per example (student only, ``task`` 1).

    The student is cut at ``max_length``; the teacher at ``max_length`` plus its longer
    prompt, so both label the same response tokens.
    """
    features: list[dict[str, Any]] = []
    n_truncated = n_dropped = n_label = 0
    for i, ex in enumerate(examples):
        prompt, answer = build_chat(tokenizer, ex, system=system)
        ids, labels = tokenize_example(tokenizer, ex, system=system)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        t_prompt = list(
            tokenizer(
                teacher_prompt(tokenizer, ex, system=teacher_system, shots=shots),
                add_special_tokens=False,
            )["input_ids"]
        )
        t_ids = t_prompt + ids[n_prompt:]
        t_labels = [IGNORE_INDEX] * len(t_prompt) + labels[n_prompt:]
        if len(ids) > max_length:
            n_truncated += 1
            cut = max_length + len(t_prompt) - n_prompt
            ids, labels, t_ids, t_labels = (
                ids[:max_length],
                labels[:max_length],
                t_ids[:cut],
                t_labels[:cut],
            )
        n = sum(1 for lab in labels[1:] if lab != IGNORE_INDEX)
        if n == 0:
            n_dropped += 1
            continue
        n_label += n
        features.append(
            {
                "input_ids": ids,
                "labels": labels,
                "attention_mask": [1] * len(ids),
                "teacher_input_ids": t_ids,
                "teacher_labels": t_labels,
                "task": 0,
                "prompt_len": n_prompt,
                "teacher_prompt_len": len(t_prompt),
            }
        )
        if rationales is not None and rationales[i]:
            rex = InstructionExample(
                RATIONALE_PREFIX + strip_task_prefix(ex.instruction),
                rationales[i],
                ex.context,
                ex.category,
            )
            r_ids, r_labels = tokenize_example(tokenizer, rex, system=system)
            r_ids, r_labels = r_ids[:max_length], r_labels[:max_length]
            if any(lab != IGNORE_INDEX for lab in r_labels[1:]):
                features.append(
                    {
                        "input_ids": r_ids,
                        "labels": r_labels,
                        "attention_mask": [1] * len(r_ids),
                        "task": 1,
                    }
                )
    if not features:
        raise SpectuneError(
            f"all {len(examples)} examples lost their response to truncation at "
            f"data.max_length={max_length}; raise data.max_length"
        )
    info = {
        "n_examples": len(examples),
        "n_kept": len(examples) - n_dropped,
        "n_truncated": n_truncated,
        "n_dropped": n_dropped,
        "n_label_tokens": n_label,
        "n_rationale_rows": sum(f["task"] == 1 for f in features),
        "max_length": max_length,
    }
    return features, info


class DistillCollator:
    """Pads the student's rows (all of them) and the teacher's rows (answer-task rows only,
    in the same order); ``task`` is 0 (answer) or 1 (rationale) per student row."""

    def __init__(self, pad_id: int) -> None:
        self.student = InstructionCollator(pad_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.student(features)
        batch["task"] = torch.tensor([f.get("task", 0) for f in features], dtype=torch.long)
        batch["prompt_len"] = torch.tensor([f.get("prompt_len", 0) for f in features])
        rows = [
            {"input_ids": f["teacher_input_ids"], "labels": f["teacher_labels"]}
            for f in features
            if f.get("task", 0) == 0
        ]
        if rows:
            t = self.student(rows)
            batch["teacher_input_ids"] = t["input_ids"]
            batch["teacher_attention_mask"] = t["attention_mask"]
            batch["teacher_labels"] = t["labels"]
            batch["teacher_prompt_len"] = torch.tensor(
                [f.get("teacher_prompt_len", 0) for f in features if f.get("task", 0) == 0]
            )
        return batch


def on_policy_inputs(
    student: Any,
    inputs: dict[str, torch.Tensor],
    *,
    pad_id: int,
    eot: int | Sequence[int] | None,
    max_new_tokens: int,
    stop: StopCriteria | None = None,
) -> dict[str, torch.Tensor]:
    """The batch with each answer row's response replaced by the student's own greedy answer
    (on-policy distillation, Agarwal et al. 2024): the student's and the teacher's prompts are
    kept, the generated tokens and the end-of-turn marker (``eot``: its id, or its ids when
    it is several tokens) are labelled; rationale rows stay. ``stop``: where generation stops
    (default: at ``eot``)."""
    marker = [] if eot is None else [eot] if isinstance(eot, int) else [int(i) for i in eot]
    ids, mask, labels, task = (
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs["labels"],
        inputs["task"],
    )
    answer_rows = [r for r in range(ids.shape[0]) if int(task[r]) == 0]
    s_prompts = [ids[r, : int(inputs["prompt_len"][r])].tolist() for r in answer_rows]
    t_prompts = [
        inputs["teacher_input_ids"][j, : int(inputs["teacher_prompt_len"][j])].tolist()
        for j in range(len(answer_rows))
    ]
    with eval_mode(student):
        generated = greedy_batch(
            student,
            s_prompts,
            max_new_tokens=max_new_tokens,
            pad_id=pad_id,
            stop_ids=set(marker) if len(marker) == 1 else set(),
            stop=stop if stop is not None or len(marker) < 2 else StopCriteria((), [marker]),
        )
    features, j = [], 0
    for r in range(ids.shape[0]):
        if int(task[r]) != 0:
            keep = mask[r] == 1
            features.append(
                {"input_ids": ids[r][keep].tolist(), "labels": labels[r][keep].tolist(), "task": 1}
            )
            continue
        answer = generated[j] + marker
        if not answer:
            answer = [pad_id]
        sp, tp = s_prompts[j], t_prompts[j]
        features.append(
            {
                "input_ids": sp + answer,
                "labels": [IGNORE_INDEX] * len(sp) + answer,
                "teacher_input_ids": tp + answer,
                "teacher_labels": [IGNORE_INDEX] * len(tp) + answer,
                "task": 0,
                "prompt_len": len(sp),
                "teacher_prompt_len": len(tp),
            }
        )
        j += 1
    batch = DistillCollator(pad_id)(features)
    return {k: v.to(ids.device) for k, v in batch.items()}
