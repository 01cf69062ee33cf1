"""Instruction records and their files: :class:`InstructionExample` (one exchange, or a
conversation ending with its last assistant turn), the formats ``data.format`` names
(:data:`FORMATS`), the assistant turns ``data.train_on`` labels (:data:`TRAIN_ON`), and
reading a data file's text with errors naming the file (:func:`detect_format` guesses the
layout of a plain JSON / JSON Lines file). The readers of every format are in
:mod:`spectune.data.formats`; prompts and tokenization in :mod:`spectune.data.instructions`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from spectune.errors import SpectuneError

#: Accepted values of the ``format`` argument (``data.format``).
FORMATS = ("auto", "dolly", "alpaca", "messages", "prompt_completion", "sharegpt")


#: Accepted values of ``train_on`` (``data.train_on``): which assistant turns carry labels.
TRAIN_ON = ("all_assistant", "last_assistant")


@dataclass(frozen=True)
class InstructionExample:
    """One instruction-following record: a single exchange, or the end of a conversation.

    Attributes:
        instruction: what the user asks (in a conversation: the user turn before the last
            assistant turn).
        response: the answer the model should learn to give (the reference for evaluation; in
            a conversation: its last assistant turn).
        context: optional text the instruction refers to (Dolly ``context``, Alpaca ``input``).
        category: optional label used to break results down (Dolly ``category``).
        history: the conversation's earlier turns, ``(role, content)`` pairs in order, each
            role ``"user"`` or ``"assistant"``; empty for a single exchange.
        system: the record's own system message (it takes precedence over ``data.system``);
            ``None``: the record has none.
    """

    instruction: str
    response: str
    context: str = ""
    category: str = ""
    history: tuple[tuple[str, str], ...] = ()
    system: str | None = None

    def to_dolly(self) -> dict[str, str]:
        """The record as a databricks-dolly-15k JSON object (fixed key order)."""
        return {
            "instruction": self.instruction,
            "context": self.context,
            "response": self.response,
            "category": self.category,
        }

    def to_messages(self) -> list[dict[str, str]]:
        """The whole conversation as chat messages: the record's system message (if any), the
        earlier turns, the user turn (:func:`user_message`) and the response."""
        head = [] if self.system is None else [{"role": "system", "content": self.system}]
        turns = [{"role": role, "content": content} for role, content in self.history]
        return [
            *head,
            *turns,
            {"role": "user", "content": user_message(self)},
            {"role": "assistant", "content": self.response},
        ]


def _read_text(path: Path) -> str:
    """Read ``path`` as UTF-8 (a leading BOM is dropped), with errors naming the file."""
    if not path.exists():
        raise SpectuneError(f"dataset file {path} does not exist; check the dataset path")
    if not path.is_file():
        raise SpectuneError(f"dataset path {path} is not a file; pass a data file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpectuneError(f"dataset file {path} cannot be read: {exc}") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpectuneError(
            f"dataset file {path}, line {line}: byte {exc.start} is not valid UTF-8; "
            "save the file as UTF-8"
        ) from exc


def _set_format(layout: str) -> str:
    """How a user picks ``layout``: the run config's ``data.format`` (as a YAML key or a
    command-line override; ``format=`` in Python)."""
    return f"set data.format: {layout} in the run config (data.format={layout} on the command line)"


def detect_format(path: str | os.PathLike[str], text: str | None = None) -> str:
    """Guess the JSON layout of a data file, by the names of the two formats it was first made
    for: ``"dolly"`` (JSON Lines) or ``"alpaca"`` (one JSON list). The records' own format is
    detected from their fields (:func:`spectune.data.formats.record_format`).

    ``.jsonl`` files are JSON Lines. Otherwise the content decides: a file whose first
    non-blank character is ``[`` is a JSON list, one that starts with ``{`` is JSON Lines.

    Args:
        path: the dataset file.
        text: its content, if already read.

    Returns:
        ``"dolly"`` or ``"alpaca"``.

    Raises:
        SpectuneError: the file is missing, unreadable, empty, or neither layout.
    """
    path = Path(path)
    if text is None:
        text = _read_text(path)
    if path.suffix.lower() == ".jsonl":
        return "dolly"
    head = text.lstrip()[:1]
    if head == "[":
        return "alpaca"
    if head == "{":
        return "dolly"
    if not head:
        raise SpectuneError(f"dataset file {path} is empty; it must hold at least one example")
    raise SpectuneError(
        f"dataset file {path}: cannot tell its layout (it starts with {head!r}, neither a JSON "
        "object nor a JSON list); a JSON dataset file holds JSON Lines (one object a line) or "
        "a JSON list of objects; name a CSV file .csv, a Parquet file .parquet, an Arrow file "
        ".arrow"
    )


__all__ = ["FORMATS", "TRAIN_ON", "InstructionExample", "detect_format", "user_message"]


def user_message(example: InstructionExample) -> str:
    """The user turn: the instruction, then a blank line and the context when there is one."""
    if example.context.strip():
        return f"{example.instruction}\n\n{example.context}"
    return example.instruction
