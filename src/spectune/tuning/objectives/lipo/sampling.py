"""On-policy lists (``lipo.lists: on_policy``): K - 1 answers per question sampled from the
base model, plus the exact answer, graded by the task checker."""

from __future__ import annotations

from typing import Any

from spectune._progress import track
from spectune.data.examples import InstructionExample
from spectune.data.instructions import build_prompt
from spectune.errors import SpectuneError
from spectune.models.generate import Sampling, sample_batch, stop_criteria
from spectune.models.tokenizer import pad_token_id
from spectune.tuning.objectives.lipo.data import ListStats, RankedList, grade, keep_list
from spectune.tuning.objectives.lipo.section import LipoSection


def sample_lists(
    model: Any,
    tokenizer: Any,
    examples: list[InstructionExample],
    sec: LipoSection,
    *,
    system: str | None,
    seed: int,
    progress: bool = False,
) -> tuple[list[RankedList], ListStats]:
    """On-policy lists: K - 1 answers sampled from ``model`` per question (temperature
    ``sec.temperature``), plus the exact answer, each labelled by :func:`grade`."""
    n = sec.list_size - 1
    stats = ListStats()
    lists = []
    per_batch = max(1, sec.batch_size // n)
    starts = range(0, len(examples), per_batch)
    pad, stop = pad_token_id(tokenizer), stop_criteria(tokenizer)
    sampling = Sampling(temperature=sec.temperature)
    for start in track(
        starts, len(starts), "sampling on-policy lists", enabled=progress, unit="batch"
    ):
        chunk = examples[start : start + per_batch]
        prompts = [
            tokenizer(build_prompt(tokenizer, ex, system=system), add_special_tokens=False)[
                "input_ids"
            ]
            for ex in chunk
        ]
        samples = sample_batch(
            model,
            prompts,
            sampling,
            max_new_tokens=sec.max_new_tokens,
            pad_id=pad,
            stop=stop,
            n_samples=n,
            seed=seed if start == 0 else None,
        )
        texts = tokenizer.batch_decode(samples, skip_special_tokens=True)
        for i, ex in enumerate(chunk):
            answers = [ex.response] + [t.strip() for t in texts[i * n : (i + 1) * n]]
            lst = RankedList(
                ex.instruction,
                tuple(answers),
                tuple(float(grade(a, ex.response)) for a in answers),
                ex.category,
                ex.response,
            )
            stats.n_read += 1
            if keep_list(lst, stats):
                lists.append(lst)
    stats.n_kept = len(lists)
    if not lists:
        raise SpectuneError(
            f"lipo.lists: on_policy: all {stats.n_read} sampled lists got equal grades; raise "
            "lipo.temperature or use lipo.lists: generated"
        )
    return lists, stats
