"""Teacher-written training data: new instruction examples from seed examples.

:func:`augment` has a teacher (``context``: the base model itself, a model folder sharing the
student's tokenizer, or a spectune run folder, as in ``objective: distill``) write new
examples. The teacher comes loaded (:class:`Teacher`): a run-folder teacher is built by its
method, which the tune layer above this one knows
(:func:`spectune.tuning.objectives.distill.teacher.open_teacher` loads it).

1. pick a seed category (seed examples without a category form one group) and ``shots`` seed
   examples of it;
2. *instruction*: the teacher is shown the seeds' instructions and asked for one new task of
   the same kind; sampled (``temperature``, ``top_p``), the first non-empty line kept (a
   preamble line ending with a colon is skipped);
3. *response*: the teacher answers the new instruction greedily, after the seeds as solved
   chat turns (and ``context`` as its system prompt), so answers follow the seeds' format;
4. de-duplication: an instruction equal (normalized: case, spaces, quotes) to a seed or to an
   earlier new one is dropped and counted, as are empty instructions or answers.

The result is Dolly records (category = the seeds' category) that ``spectune tune`` reads
(``data.train: <file>``), and an :class:`AugmentInfo` with every generation setting and
count, which ``spectune augment`` writes beside the file (``<file>.json``). Sampling is seeded
(``torch.manual_seed`` before each batch, :func:`spectune.models.generate.sample_batch`), so a
seed gives the same file on one machine.

**Never over a file of the user's.** :func:`check_output` runs before any work and again
before writing: the output and its sidecar may not be the seeds file (never, not even with
``overwrite``) or a symbolic link; when either exists, it is replaced only with ``overwrite``
and only when spectune augment wrote both: the sidecar carries ``"spectune_augment": 1`` and
the SHA-256 of the file it describes, and the file still has that hash (an edited file is the
user's).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectune import __version__
from spectune._io import write_json, write_text
from spectune._progress import progress_bar
from spectune.data.examples import InstructionExample
from spectune.data.instructions import few_shot_prompt
from spectune.data.tasks import normalize_answer
from spectune.errors import SpectuneError
from spectune.models.generate import Sampling, greedy_generate, sample_batch, stop_criteria
from spectune.models.tokenizer import pad_token_id

#: what the teacher is asked to write an instruction from
INSTRUCTION_REQUEST = (
    "Here are some example tasks:\n{examples}\n\nWrite one new task of the same kind, with "
    "different details. Reply with the task only, on one line."
)
_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*])\s*")


@dataclass
class AugmentInfo:
    """How a file of teacher-written examples was made (JSON-able)."""

    teacher: str
    seeds: str
    n_seeds: int
    n_requested: int
    n_written: int = 0
    n_attempts: int = 0
    n_duplicates: int = 0
    n_empty: int = 0
    shots: int = 3
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 48
    answer_tokens: int = 32
    context: str | None = None
    seed: int = 0
    seconds: float = 0.0
    categories: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Teacher:
    """A loaded teacher for :func:`augment` (the tune layer loads it:
    :func:`spectune.tuning.objectives.distill.teacher.open_teacher`).

    Attributes:
        model: the teacher model, in eval mode.
        tokenizer: the student's tokenizer, which the teacher shares.
        description: what the teacher is (recorded in :class:`AugmentInfo`).
        load_seconds: how long loading took (counted in ``AugmentInfo.seconds``).
    """

    model: Any
    tokenizer: Any
    description: str
    load_seconds: float = 0.0


def _first_line(text: str) -> str:
    """The first non-empty line that is not a preamble ("Here is a new task:")."""
    lines = [_NUMBERING.sub("", line).strip().strip('"').strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if not line.endswith(":"):
            return line
    return ""


def check_settings(
    seeds: list[InstructionExample],
    n: int,
    *,
    shots: int = 3,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 48,
    answer_tokens: int = 32,
    batch_size: int = 8,
) -> None:
    """Refuse settings :func:`augment` cannot use (before the teacher is loaded).

    Raises:
        SpectuneError: one line naming the setting.
    """
    if n < 1:
        raise SpectuneError(f"n (new examples) must be >= 1, got {n}")
    if not seeds:
        raise SpectuneError("augment needs at least one seed example")
    if shots < 1:
        raise SpectuneError(f"shots must be >= 1, got {shots}")
    if not temperature > 0 or not 0 < top_p <= 1:
        raise SpectuneError(
            f"temperature must be > 0 and top_p in (0, 1], got {temperature}, {top_p}"
        )
    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("answer_tokens", answer_tokens),
        ("batch_size", batch_size),
    ):
        if value < 1:
            raise SpectuneError(f"{name} must be >= 1, got {value}")


#: one planned new example: (category, the seed examples shown)
_Plan = tuple[str, list[InstructionExample]]


def _plan_batch(
    rng: random.Random, groups: dict[str, list[InstructionExample]], shots: int, size: int
) -> list[_Plan]:
    """Step 1: ``size`` seeded picks of a category and ``shots`` of its seed examples."""
    names = sorted(groups)
    plans = []
    for _ in range(size):
        cat = rng.choice(names)
        group = groups[cat]
        plans.append((cat, rng.sample(group, min(shots, len(group)))))
    return plans


def _new_instructions(
    teacher: Teacher, plans: list[_Plan], *, sampling: Sampling, max_new_tokens: int, seed: int
) -> list[str]:
    """Step 2: the teacher, shown each plan's seed instructions, writes one new task each
    (sampled, seeded)."""
    tok = teacher.tokenizer
    requests = []
    for _, shown in plans:
        listed = "\n".join(f"{i + 1}. {ex.instruction}" for i, ex in enumerate(shown))
        message = {"role": "user", "content": INSTRUCTION_REQUEST.format(examples=listed)}
        requests.append(
            tok.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
        )
    prompts = [tok(r, add_special_tokens=False)["input_ids"] for r in requests]
    samples = sample_batch(
        teacher.model,
        prompts,
        sampling,
        max_new_tokens=max_new_tokens,
        pad_id=pad_token_id(tok),
        stop=stop_criteria(tok),
        seed=seed,
    )
    return [tok.decode(ids, skip_special_tokens=True) for ids in samples]


def _fresh(
    plans: list[_Plan], texts: list[str], seen: set[str], info: AugmentInfo
) -> list[tuple[str, list[InstructionExample], str]]:
    """Step 4 for instructions: (category, shots, instruction) of each new one; empty ones and
    those already seen (normalized) are counted and dropped."""
    fresh = []
    for (cat, shots_used), text in zip(plans, texts, strict=True):
        instruction = _first_line(text)
        if not instruction:
            info.n_empty += 1
            continue
        key = normalize_answer(instruction)
        if key in seen:
            info.n_duplicates += 1
            continue
        seen.add(key)
        fresh.append((cat, shots_used, instruction))
    return fresh


def _answers(
    teacher: Teacher,
    fresh: list[tuple[str, list[InstructionExample], str]],
    *,
    context: str | None,
    answer_tokens: int,
    batch_size: int,
) -> list[str]:
    """Step 3: the teacher's greedy answers, after the seeds as solved chat turns."""
    prompts = [
        few_shot_prompt(
            teacher.tokenizer, InstructionExample(instr, ""), system=context, shots=shots_used
        )
        for _, shots_used, instr in fresh
    ]
    return greedy_generate(
        teacher.model,
        teacher.tokenizer,
        prompts,
        max_new_tokens=answer_tokens,
        batch_size=batch_size,
    )


def augment(
    seeds: list[InstructionExample],
    n: int,
    teacher: Teacher,
    *,
    context: str | None = None,
    shots: int = 3,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 48,
    answer_tokens: int = 32,
    batch_size: int = 8,
    seed: int = 0,
    seeds_name: str = "",
    progress: bool = False,
) -> tuple[list[InstructionExample], AugmentInfo]:
    """Have the teacher write ``n`` new examples from ``seeds`` (see the module docstring).

    Args:
        seeds: the seed examples (instructions and responses).
        n: new examples wanted; fewer come back when the attempts (4 n) run out.
        teacher: the loaded teacher and the student's tokenizer (:class:`Teacher`).
        context: the teacher's system prompt when it answers.
        shots: seed examples shown per new example.
        temperature, top_p: sampling of the new instructions.
        max_new_tokens: longest new instruction; ``answer_tokens``: longest answer.
        batch_size: prompts per generation batch.
        seed: seeds the choice of shots and the sampling.
        seeds_name: where the seeds came from (recorded).
        progress: a progress bar.

    Returns:
        ``(examples, info)``.

    Raises:
        SpectuneError: bad settings (:func:`check_settings`), or no usable example written.
    """
    check_settings(
        seeds,
        n,
        shots=shots,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        answer_tokens=answer_tokens,
        batch_size=batch_size,
    )
    start = time.perf_counter() - teacher.load_seconds
    groups: dict[str, list[InstructionExample]] = {}
    for ex in seeds:
        groups.setdefault(ex.category, []).append(ex)
    rng = random.Random(f"spectune-augment:{seed}")
    seen = {normalize_answer(ex.instruction) for ex in seeds}
    info = AugmentInfo(
        teacher.description,
        seeds_name,
        len(seeds),
        n,
        shots=shots,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        answer_tokens=answer_tokens,
        context=context,
        seed=seed,
        versions={"spectune": __version__},
    )
    # top-k 50: transformers' default, which augment sampled with when it called generate()
    sampling = Sampling(temperature=temperature, top_k=50, top_p=top_p)
    out: list[InstructionExample] = []
    bar = progress_bar(n, "augment", unit="example") if progress else None
    batch_no = 0
    while len(out) < n and info.n_attempts < 4 * n:
        plans = _plan_batch(rng, groups, shots, min(batch_size, 4 * n - info.n_attempts))
        texts = _new_instructions(
            teacher,
            plans,
            sampling=sampling,
            max_new_tokens=max_new_tokens,
            seed=seed * 100003 + batch_no,
        )
        batch_no += 1
        info.n_attempts += len(plans)
        fresh = _fresh(plans, texts, seen, info)
        if not fresh:
            continue
        answers = _answers(
            teacher, fresh, context=context, answer_tokens=answer_tokens, batch_size=batch_size
        )
        for (cat, _, instr), answer in zip(fresh, answers, strict=True):
            if not answer.strip():
                info.n_empty += 1
                continue
            if len(out) < n:
                out.append(InstructionExample(instr, answer.strip(), category=cat))
                info.categories[cat] = info.categories.get(cat, 0) + 1
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    info.n_written = len(out)
    info.seconds = round(time.perf_counter() - start, 3)
    if not out:
        raise SpectuneError(
            f"the teacher wrote no usable example in {info.n_attempts} attempts "
            f"({info.n_duplicates} duplicates, {info.n_empty} empty); raise temperature or "
            "give more varied seeds"
        )
    return out, info


#: the sidecar field that says spectune augment wrote the file pair
MARK = "spectune_augment"


def sidecar_of(path: str | Path) -> Path:
    """The settings file beside an augmented file: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _our_sidecar(sidecar: Path, path: Path) -> dict[str, Any] | None:
    """The sidecar's content when spectune augment wrote it for ``path``, else None."""
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get(MARK) != 1 or data.get("file") != path.name:
        return None
    if not isinstance(data.get("sha256"), str):
        return None
    return data


def check_output(
    path: str | Path, *, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()
) -> Path:
    """Check, before any work, that writing ``path`` and its sidecar replaces no file of the
    user's (see the module docstring).

    Args:
        path: the ``.jsonl`` to write (``--out``).
        overwrite: replace a file pair spectune augment wrote.
        inputs: files the command reads (the seeds), never replaced.

    Returns:
        ``path`` as a Path.

    Raises:
        SpectuneError: one line naming the file in the way and what to do.
    """
    path = Path(path).expanduser()
    sidecar = sidecar_of(path)
    for src in inputs:
        for target in (path, sidecar):
            if _same_file(target, Path(src).expanduser()):
                what = "" if target == path else f": its settings file {target}"
                raise SpectuneError(
                    f"--out {path}{what} is the seeds file {src}; spectune never "
                    "replaces its input: pick another --out"
                )
    for target in (path, sidecar):
        if target.is_symlink():
            raise SpectuneError(
                f"--out {path}: {target} is a symbolic link; spectune never "
                "writes through a link: remove it or pick another --out"
            )
        if target.is_dir():
            raise SpectuneError(f"--out {path}: {target} is a folder; pick another --out")
    there = [t for t in (path, sidecar) if t.exists()]
    if not there:
        return path
    meta = _our_sidecar(sidecar, path) if sidecar.exists() else None
    never = "spectune never replaces a file it did not write: move it or pick another --out"
    if meta is None:
        what = (
            f"{sidecar} is not the settings file spectune augment writes for it"
            if sidecar.exists()
            else f"{path} has no settings file {sidecar.name} beside it"
        )
        raise SpectuneError(
            f"--out {path}: {what}, so it was not written by spectune augment; {never}"
        )
    if path.exists() and _sha256(path) not in (meta.get("sha256"), meta.get("previous_sha256")):
        raise SpectuneError(
            f"--out {path} changed since spectune augment wrote it (its SHA-256 "
            f"is not the one in {sidecar.name}); {never}"
        )
    if not overwrite:
        raise SpectuneError(
            f"--out {path}: {there[0]} already exists (spectune augment wrote "
            "it); pass --overwrite to replace it, or pick another --out"
        )
    return path


def write_augmented(
    path: str | Path,
    examples: list[InstructionExample],
    info: AugmentInfo,
    *,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
) -> Path:
    """Write the examples as Dolly JSON Lines and ``<path>.json`` with the settings and the
    file's SHA-256 (both atomically), after :func:`check_output`. Returns the sidecar's path.

    The sidecar is written first, with the new hash and the replaced file's, so an
    interruption between the two writes leaves a pair that ``overwrite`` still replaces.

    Raises:
        SpectuneError: as :func:`check_output` (nothing is written).
    """
    path = check_output(path, overwrite=overwrite, inputs=inputs)
    text = "".join(json.dumps(ex.to_dolly(), ensure_ascii=False) + "\n" for ex in examples)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    old = _sha256(path) if path.exists() else None
    sidecar = sidecar_of(path)
    meta = {"format": "dolly", "file": path.name, MARK: 1, "sha256": sha, **info.to_dict()}
    write_json(sidecar, {**meta, "previous_sha256": old} if old and old != sha else meta)
    write_text(path, text)
    if old and old != sha:
        write_json(sidecar, meta)
    return sidecar


__all__ = [
    "INSTRUCTION_REQUEST",
    "MARK",
    "AugmentInfo",
    "Teacher",
    "augment",
    "check_output",
    "check_settings",
    "sidecar_of",
    "write_augmented",
]
