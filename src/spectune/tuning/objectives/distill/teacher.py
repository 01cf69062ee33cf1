"""The teacher of distillation (and of ``spectune augment``): its source resolved and checked
against the student before any weight is read, the frozen model loaded, and its prompt."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spectune.data.augment import Teacher
from spectune.data.examples import InstructionExample
from spectune.data.instructions import few_shot_prompt
from spectune.errors import SpectuneError
from spectune.models import hardware
from spectune.models.loading import (
    read_model_config,
    resolve_model_dir,
    safetensors_problem,
    torch_file_problem,
    weights_problem,
)
from spectune.models.sources import is_gguf_file, parse_hub_id
from spectune.models.tokenizer import load_tokenizer
from spectune.results.runfolder import RunFolder
from spectune.tuning.config import load_config
from spectune.tuning.methods import get_method
from spectune.tuning.methods.base import BuildContext, load_float_base
from spectune.tuning.objectives.distill.section import (
    ANSWER_PREFIX,
    DEFAULT_CONTEXT,
    RATIONALE_PREFIX,
    DistillSection,
)
from spectune.tuning.pins import is_run_folder, run_base_model


@dataclass
class TeacherSource:
    """Where the teacher comes from (resolved in ``load_data``, before any weight is read).

    Attributes:
        kind: "context", "model" (a model folder) or "run" (a spectune run folder).
        path: the folder (the student's base model folder for "context"; for a GGUF file or
            a hub id, the folder it resolved to).
        model_dir: the folder whose tokenizer and config the teacher uses.
        method: the run's method ("run" teachers).
        given: the GGUF file or hub id the folder was resolved from ("model" teachers).
    """

    kind: str
    path: Path
    model_dir: Path
    method: str | None = None
    given: str | None = None

    def describe(self) -> str:
        if self.kind == "context":
            return "context (the student's base model with extra context)"
        if self.kind == "run":
            return f"spectune run {self.path} ({self.method})"
        if self.given is not None:
            return f"model {self.given} ({self.path})"
        return f"model folder {self.path}"


def _student_config(model_dir: Path, what: str | None = None) -> Any:
    return read_model_config(model_dir, what or f"model folder {model_dir}")


def _vocab_size(model_dir: Path, what: str | None = None) -> int | None:
    cfg = _student_config(model_dir, what)
    size = getattr(cfg, "vocab_size", None)
    if size is None and hasattr(cfg, "get_text_config"):
        size = getattr(cfg.get_text_config(), "vocab_size", None)
    return None if size is None else int(size)


def resolve_teacher(section: DistillSection, student_dir: Path) -> TeacherSource:
    """The teacher's source, checked against the student: its folder exists, it is a model
    (a folder, a GGUF file or a hub id, as ``model:`` takes them) or a complete spectune run,
    its tokenizer and vocabulary size are the student's. Reads only configs and tokenizer
    files (a GGUF file is dequantized into the cache first, once).

    Raises:
        SpectuneError: a missing folder, an unusable run folder, or a tokenizer / vocabulary
            that differs from the student's (the message names both).
    """
    if section.teacher == "context":
        return TeacherSource("context", student_dir, student_dir)
    path = Path(section.teacher).expanduser()
    if not path.is_dir():
        hub_id = not path.exists() and parse_hub_id(section.teacher) is not None
        if not (hub_id or is_gguf_file(path)):
            raise SpectuneError(
                f"distill.teacher {section.teacher!r} is not a folder, a .gguf file or a hub "
                "id; give 'context', a model (folder, .gguf file, org/name) or a spectune "
                "run folder"
            )
        folder = resolve_model_dir(section.teacher, "distill.teacher")
        what = f"distill.teacher {section.teacher}"
        _check_teacher_weights(folder, what)
        source = TeacherSource("model", folder, folder, given=section.teacher)
        check_same_vocabulary(folder, student_dir, what=what)
        return source
    what = f"distill.teacher {path}"
    if is_run_folder(path):
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
    read_model_config(folder, what)
    problem = weights_problem(folder)
    if problem:
        raise SpectuneError(f"{what}: {problem}; the teacher cannot be loaded")


def _check_adapter(adapter: Path, what: str) -> None:
    """Refuse a teacher run whose adapter/ holds a truncated or corrupt weights file."""
    files = [p for p in sorted(adapter.rglob("*")) if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    if not weights:
        raise SpectuneError(
            f"{what}: its adapter/ holds no weights file; the teacher cannot be loaded"
        )
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
    if source.kind == "context":
        model = load_float_base(source.model_dir)
    elif source.kind == "model":
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    elif (source.path / "merged").is_dir():
        model = AutoModelForCausalLM.from_pretrained(source.path / "merged", dtype=torch.float32)
    else:
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


def strip_task_prefix(text: str) -> str:
    """``text`` without its ``[answer] `` or ``[rationale] `` task prefix."""
    for prefix in (ANSWER_PREFIX, RATIONALE_PREFIX):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def teacher_prompt(
    tokenizer: Any,
    example: InstructionExample,
    *,
    system: str | None,
    shots: list[InstructionExample],
) -> str:
    """The teacher's chat prompt: its system prompt, the few-shot turns, then the question
    (without any task prefix), ending with the assistant header."""
    plain = replace(example, instruction=strip_task_prefix(example.instruction))
    return few_shot_prompt(tokenizer, plain, system=system, shots=shots)


def teacher_system(section: DistillSection, student_system: str | None, kind: str) -> str | None:
    """The teacher's system prompt: the student's, with ``distill.context`` (or, for a
    ``context`` teacher without one, :data:`DEFAULT_CONTEXT`) after it."""
    context = section.context
    if context is None and kind == "context":
        context = DEFAULT_CONTEXT
    if context is None:
        return student_system
    return context if student_system is None else f"{student_system}\n\n{context}"


def open_teacher(
    teacher: str, model: str = "default", *, context: str | None = None, progress: bool = False
) -> Teacher:
    """The teacher ``spectune augment`` writes with: ``teacher`` (``"context"``, a model folder
    or a spectune run folder) resolved and checked against the student ``model``'s tokenizer
    before any weight is read, then loaded with the student's tokenizer.

    Raises:
        SpectuneError: as :func:`resolve_teacher`.
    """
    student_dir = resolve_model_dir(model)
    source = resolve_teacher(DistillSection(teacher=teacher, context=context), student_dir)
    start = time.perf_counter()
    tokenizer = load_tokenizer(student_dir)
    net = load_teacher(source, progress=progress)
    return Teacher(net, tokenizer, source.describe(), time.perf_counter() - start)
