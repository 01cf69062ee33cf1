"""Instruction and conversation data in every format, read through the ``datasets`` library.

Formats (``data.format``; ``auto`` takes the format of the first record, by its fields):

=====================  ===========================================================================
format                 a record
=====================  ===========================================================================
``dolly``              ``instruction``, ``response`` (``context``, ``category`` optional)
``alpaca``             ``instruction``, ``output`` (``input`` optional)
``messages``           ``messages``: a list of ``{role, content}``, roles ``system`` / ``user`` /
                       ``assistant`` (transformers' chat templates, TRL's conversational data)
``prompt_completion``  ``prompt``, ``completion``: two strings, or two lists of ``{role,
                       content}`` (TRL's conversational prompt-completion: the prompt's messages,
                       then the completion's)
``sharegpt``           ``conversations``: a list of ``{from, value}``, from ``system`` /
                       ``human`` / ``gpt``
=====================  ===========================================================================

A conversation (``messages``, ``sharegpt``, conversational ``prompt_completion``) may open with a
system message, then alternates user and assistant turns, starting with the user and ending with
an assistant turn: that last turn is the response (the reference when judged), the user turn
before it the instruction, the turns before that the record's ``history``. A ``category`` field
is kept in every format.

Sources (``data.train``, ``data.eval``; :func:`open_source`): a file, by its extension
(``.csv``; ``.parquet`` / ``.pq``; ``.arrow``, Arrow IPC stream or file; anything else is JSON:
JSON Lines or one JSON list), read with ``load_dataset(<type>, data_files=..., streaming=True)``
(nothing is written to the ``datasets`` cache); a folder written by ``save_to_disk``
(``load_from_disk``) or holding data files (``load_dataset(folder)``); a ``datasets`` name,
``NAME``, ``NAME:SPLIT`` or ``NAME:CONFIG:SPLIT`` (``load_dataset``, its cache honoured and
``HF_HUB_OFFLINE`` too). A dataset with several splits needs the split named (``:SPLIT``).
CSV cells are read as text (``5`` stays ``"5"``, an empty cell is ``""``); a CSV cell of
``messages`` or ``conversations`` (or a conversational ``prompt`` / ``completion``) holds the
list as JSON text.

Errors name the file (or folder, or dataset), the record (``line N`` of a JSON Lines or CSV
file, ``record N (0-based)`` of a JSON list, ``row N (0-based)`` otherwise) and the fields
expected: a record that fits no format, a record of another format than the file's first (a
file holds one format), a conversation without an assistant turn, a role spectune does not
know. ``datasets`` is imported only when data is read.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectune._quiet import logger_at
from spectune.data.examples import (
    FORMATS,
    InstructionExample,
    _read_text,
    _set_format,
    detect_format,
)
from spectune.errors import SpectuneError

#: the fields each format expects, as errors name them
EXPECTED = {
    "dolly": "instruction, response (context, category optional)",
    "alpaca": "instruction, output (input optional)",
    "messages": "messages (a list of {role, content})",
    "prompt_completion": "prompt, completion (strings, or lists of {role, content})",
    "sharegpt": "conversations (a list of {from, value})",
}
#: per conversational format: its role and text keys, and its roles -> ours
ROLES = {
    "messages": ("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "sharegpt": ("from", "value", {"system": "system", "human": "user", "gpt": "assistant"}),
}
#: file extension -> the ``datasets`` builder that reads it (anything else: ``json``)
FILE_TYPES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}
_DATA_SUFFIXES = (".json", ".jsonl", ".txt", *FILE_TYPES)
_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+){0,2}")
_SAVED = ("state.json", "dataset_info.json")  # a Dataset.save_to_disk folder holds both
_SAVED_DICT = "dataset_dict.json"  # a DatasetDict.save_to_disk folder


# --------------------------------------------------------------------------- records


def record_format(record: dict[str, Any]) -> str | None:
    """The format a record's fields say (fields set to null do not count), or None."""
    present = {key for key, value in record.items() if value is not None}
    if "messages" in present:
        return "messages"
    if "conversations" in present:
        return "sharegpt"
    if {"prompt", "completion"} <= present:
        return "prompt_completion"
    if {"instruction", "response"} <= present:
        return "dolly"
    if {"instruction", "output"} <= present:
        return "alpaca"
    return None


def _text(record: dict[str, Any], name: str, required: bool, where: object) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise SpectuneError(f"{where}: required field {name!r} is missing")
        return ""
    if not isinstance(value, str):
        raise SpectuneError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise SpectuneError(f"{where}: required field {name!r} is empty")
    return value


def _dolly(record: dict[str, Any], where: object) -> InstructionExample:
    return InstructionExample(
        instruction=_text(record, "instruction", True, where),
        response=_text(record, "response", True, where),
        context=_text(record, "context", False, where),
        category=_text(record, "category", False, where),
    )


def _alpaca(record: dict[str, Any], where: object) -> InstructionExample:
    return InstructionExample(
        instruction=_text(record, "instruction", True, where),
        response=_text(record, "output", True, where),
        context=_text(record, "input", False, where),
        category=_text(record, "category", False, where),
    )


def _turns(items: Any, kind: str, where: object, field: str) -> list[tuple[str, str]]:
    """``(role, text)`` of a list of messages, roles mapped to ours and checked."""
    role_key, text_key, roles = ROLES[kind]
    if items is None:
        raise SpectuneError(f"{where}: required field {field!r} is missing")
    if not isinstance(items, list) or not items:
        got = "an empty list" if isinstance(items, list) else type(items).__name__
        raise SpectuneError(
            f"{where}: field {field!r} must be a non-empty list of {{{role_key}, {text_key}}} "
            f"objects, got {got}"
        )
    out = []
    for j, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(role_key), str):
            raise SpectuneError(
                f"{where}: {field} message {j} must be an object with a string {role_key!r} and "
                f"{text_key!r}, got {json.dumps(item, default=str)[:80]}"
            )
        role, text = item[role_key], item.get(text_key)
        if role not in roles:
            raise SpectuneError(
                f"{where}: {field} message {j} has the role {role!r}, which spectune does not "
                f"know; the roles known in {kind} data are {', '.join(roles)} (tool calls and "
                "other roles: drop those messages, or the record)"
            )
        if not isinstance(text, str):
            raise SpectuneError(
                f"{where}: {field} message {j} ({role}): {text_key!r} must be a string, got "
                f"{type(text).__name__}"
            )
        out.append((roles[role], text))
    return out


def conversation_example(
    turns: list[tuple[str, str]], where: object, category: str = ""
) -> InstructionExample:
    """A conversation (``(role, text)`` pairs, roles ``system`` / ``user`` / ``assistant``) as
    an :class:`InstructionExample`: the last assistant turn is the response, the user turn
    before it the instruction, the turns before that the history.

    Raises:
        SpectuneError: no assistant turn; a system message that is not the first; turns that do
            not alternate user, assistant (from the user); a trailing user turn; an empty
            instruction or response. ``where`` names the record.
    """
    roles = [role for role, _ in turns]
    if "assistant" not in roles:
        raise SpectuneError(
            f"{where}: the conversation has no assistant turn (its roles: {', '.join(roles)}); "
            "a record needs an assistant turn to learn from and to judge against"
        )
    system, first = (turns[0][1], 1) if roles[0] == "system" else (None, 0)
    body = turns[first:]
    for j, (role, _) in enumerate(body):
        expected = "user" if j % 2 == 0 else "assistant"
        if role != expected:
            what = "a system message must come first; " if role == "system" else ""
            article = "a" if expected == "user" else "an"
            raise SpectuneError(
                f"{where}: message {j + first} is a {role} turn where {article} {expected} turn belongs: "
                f"{what}after the system message a conversation alternates user and assistant "
                "turns, starting with the user"
            )
    if body[-1][0] != "assistant":
        raise SpectuneError(
            f"{where}: the conversation ends with a user turn after its last assistant turn; "
            "the last assistant turn is the reference answer: drop the trailing user turn"
        )
    instruction, response = body[-2][1], body[-1][1]
    for name, text in (("user turn", instruction), ("assistant turn", response)):
        if not text.strip():
            raise SpectuneError(f"{where}: the last {name} of the conversation is empty")
    return InstructionExample(
        instruction, response, category=category, history=tuple(body[:-2]), system=system
    )


def _conversation(record: dict[str, Any], where: object, field: str, kind: str) -> Any:
    turns = _turns(record.get(field), kind, where, field)
    return conversation_example(turns, where, _text(record, "category", False, where))


def _prompt_completion(record: dict[str, Any], where: object) -> InstructionExample:
    prompt, completion = record.get("prompt"), record.get("completion")
    category = _text(record, "category", False, where)
    if isinstance(prompt, list) and isinstance(completion, list):
        turns = _turns(prompt, "messages", where, "prompt")
        turns += _turns(completion, "messages", where, "completion")
        return conversation_example(turns, where, category)
    if isinstance(prompt, list) or isinstance(completion, list):
        raise SpectuneError(
            f"{where}: prompt and completion must both be strings, or both lists of {{role, "
            f"content}}, got {type(prompt).__name__} and {type(completion).__name__}"
        )
    return InstructionExample(
        _text(record, "prompt", True, where),
        _text(record, "completion", True, where),
        category=category,
    )


PARSERS: dict[str, Callable[[dict[str, Any], object], InstructionExample]] = {
    "dolly": _dolly,
    "alpaca": _alpaca,
    "messages": lambda r, w: _conversation(r, w, "messages", "messages"),
    "prompt_completion": _prompt_completion,
    "sharegpt": lambda r, w: _conversation(r, w, "conversations", "sharegpt"),
}


def _json_cells(record: dict[str, Any]) -> dict[str, Any]:
    """A CSV record with its conversation cells (JSON text) decoded."""
    out = dict(record)
    for key in ("messages", "conversations", "prompt", "completion"):
        text = out.get(key)
        if not isinstance(text, str) or not text.lstrip().startswith("["):
            continue
        try:
            value = json.loads(text)
        except ValueError:
            continue
        chat = isinstance(value, list) and all(isinstance(m, dict) for m in value)
        if key in ("messages", "conversations") or (chat and value and "role" in value[0]):
            out[key] = value
    return out


# --------------------------------------------------------------------------- sources


@dataclass
class Source:
    """Records to read, and how errors name them.

    Attributes:
        label: the source as errors name it (``dataset file X``, ``dataset folder X``...).
        rows: the records (dicts), in order.
        locate: record index -> where it is (``line N``, ``record N (0-based)``, ``row N
            (0-based)``); called only for an error.
        failed: a read error -> the :class:`SpectuneError` that explains it.
        csv: the records come from a CSV file (conversation cells are JSON text).
    """

    label: str
    rows: Iterable[dict[str, Any]]
    locate: Callable[[int], str]
    failed: Callable[[Exception], SpectuneError]
    csv: bool = False


class _Where:
    """``"<source>, <record>"`` for an error message, worked out only when it is formatted."""

    def __init__(self, source: Source, index: int) -> None:
        self.source, self.index = source, index

    def __str__(self) -> str:
        return f"{self.source.label}, {self.source.locate(self.index)}"


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _row_index(i: int) -> str:
    return f"row {i} (0-based)"


def _stream(builder: str, path: Path, **kw: Any) -> Iterable[dict[str, Any]]:
    from datasets import load_dataset

    return load_dataset(builder, data_files=str(path), split="train", streaming=True, **kw)


def _head(path: Path, size: int = 1 << 16) -> str:
    with open(path, "rb") as f:
        return f.read(size).decode("utf-8-sig", errors="ignore")


def _jsonl_line(path: Path, index: int) -> str:
    """``line N``: the number of the ``index``-th non-blank line of a JSON Lines file."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="\n") as f:
        n = -1
        for lineno, line in enumerate(f, start=1):
            n += bool(line.strip())
            if n == index:
                return f"line {lineno}"
    return _row_index(index)


def _diagnose_json(path: Path, layout: str, exc: Exception) -> SpectuneError:
    """Why ``datasets`` could not read a JSON file: the line and what is wrong there."""
    label = f"dataset file {path}"
    text = _read_text(path)  # raises for bytes that are not UTF-8, naming the line
    if layout == "alpaca":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            return SpectuneError(
                f"{label}, line {err.lineno}: malformed JSON ({err.msg} at column {err.colno}); "
                "a JSON dataset file is one list of objects, or one object a line"
            )
        for i, record in enumerate(records if isinstance(records, list) else []):
            if not isinstance(record, dict):
                return SpectuneError(
                    f"{label}, record {i} (0-based): expected a JSON object with the fields of "
                    f"a record, got {type(record).__name__}"
                )
    else:
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{label}, line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                return SpectuneError(
                    f"{where}: malformed JSON ({err.msg} at column {err.colno}); each line of a "
                    "JSON Lines file must be one JSON object"
                )
            if not isinstance(record, dict):
                what = (
                    "a JSON list" if isinstance(record, list) else f"a JSON {type(record).__name__}"
                )
                return SpectuneError(
                    f"{where}: {what}, not an object; each line of a JSON Lines file must be "
                    "one JSON object"
                )
    return SpectuneError(f"{label} cannot be read as JSON by datasets: {_reason(exc)}")


def _json_source(path: Path, format: str) -> Source:
    head = _head(path)
    if not head.strip():
        head = _read_text(path)
    if not head.strip():
        if path.suffix.lower() == ".jsonl":
            raise SpectuneError(f"dataset file {path} holds no examples; it must hold at least one")
        detect_format(path, head)  # raises: the file is empty
    layout = detect_format(path, head)  # "dolly": JSON Lines, "alpaca": one JSON list
    first = head.lstrip()[:1]
    if path.suffix.lower() == ".jsonl" and first == "[" and format in ("auto", "dolly"):
        raise SpectuneError(
            f"dataset file {path}, line 1: a JSON list, but a .jsonl file holds one JSON object "
            f"a line; the file looks like a JSON list: {_set_format('alpaca')}, or name the "
            "file .json"
        )
    if format == "alpaca" and first == "{" and path.suffix.lower() != ".jsonl":
        raise SpectuneError(
            f"dataset file {path}: an Alpaca .json file must be a JSON list of objects, got an "
            f"object; for JSON Lines {_set_format('dolly')} (Alpaca records in JSON Lines: name "
            "the file .jsonl, or data.format: auto)"
        )
    if first == "[":
        layout = "alpaca"

    def locate(i: int) -> str:
        return f"record {i} (0-based)" if layout == "alpaca" else _jsonl_line(path, i)

    from datasets.packaged_modules.json.json import JsonConfig

    # datasets >= 5 reads files of agent traces into their own columns: not here
    kw = {"parse_agent_traces": False} if hasattr(JsonConfig, "parse_agent_traces") else {}
    return Source(
        f"dataset file {path}",
        _lazy(lambda: _stream("json", path, **kw)),
        locate,
        lambda exc: _diagnose_json(path, layout, exc),
    )


def _csv_line(path: Path, index: int) -> str:
    """``line N``: where the ``index``-th data row of a CSV file starts (blank lines skipped, a
    quoted value may span lines)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        start, n = reader.line_num + 1, -1
        for row in reader:
            n += bool(row)
            if n == index and row:
                return f"line {start}"
            start = reader.line_num + 1
    return _row_index(index)


def _csv_source(path: Path) -> Source:
    from datasets import Features, Value

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError:
        _read_text(path)  # names the line
        raise
    if not header:
        raise SpectuneError(f"dataset file {path} holds no examples; it must hold at least one")
    # every column as text: "5" stays a string, an empty cell is ""
    features = Features({name: Value("string") for name in header})

    def failed(exc: Exception) -> SpectuneError:
        _read_text(path)
        return SpectuneError(f"dataset file {path} cannot be read as CSV: {_reason(exc)}")

    rows = _lazy(
        lambda: _stream("csv", path, features=features, keep_default_na=False, na_filter=False)
    )
    return Source(f"dataset file {path}", rows, lambda i: _csv_line(path, i), failed, csv=True)


def _typed_file_source(path: Path, builder: str) -> Source:
    def failed(exc: Exception) -> SpectuneError:
        return SpectuneError(
            f"dataset file {path} cannot be read as {builder.capitalize()} ({_reason(exc)}); "
            f"check the file, or its extension ({', '.join(_DATA_SUFFIXES)})"
        )

    return Source(f"dataset file {path}", _lazy(lambda: _stream(builder, path)), _row_index, failed)


def _lazy(make: Callable[[], Any]) -> Iterable[dict[str, Any]]:
    """The rows of the ``datasets`` dataset ``make()`` returns, made on first iteration (so that
    ``datasets``' own errors surface where the reader explains them) and read a thousand at a
    time (one at a time is several times slower)."""

    def rows() -> Iterator[dict[str, Any]]:
        for batch in make().iter(batch_size=1000):
            keys = list(batch)
            for values in zip(*(batch[key] for key in keys), strict=True):
                yield dict(zip(keys, values, strict=True))

    class _Rows:
        def __iter__(self) -> Iterator[dict[str, Any]]:
            return rows()

    return _Rows()


def _pick_split(dsets: Any, split: str | None, label: str, how: str) -> tuple[Any, str]:
    """One split of a ``DatasetDict``: the one named, or the only one."""
    names = list(dsets)
    if split is None and len(names) == 1:
        split = names[0]
    if split not in names:
        wanted = "has several splits" if split is None else f"has no split {split!r}"
        raise SpectuneError(f"{label} {wanted} ({', '.join(names) or 'none'}); name one: {how}")
    return dsets[split], split


def _folder_source(path: Path, split: str | None) -> Source:
    import datasets

    if all((path / name).is_file() for name in _SAVED) or (path / _SAVED_DICT).is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise SpectuneError(
                f"dataset folder {path} cannot be loaded by datasets.load_from_disk: {_reason(exc)}"
            ) from None
        label = f"dataset folder {path}"
        if isinstance(loaded, datasets.DatasetDict):
            loaded, split = _pick_split(loaded, split, label, f"{path}:SPLIT or {path}/SPLIT")
            label += f" (split {split})"
        elif split is not None:
            raise SpectuneError(f"{label} holds one dataset without splits; drop ':{split}'")
        return Source(label, _lazy(lambda: loaded), _row_index, lambda e: _source_error(label, e))
    files = [p for p in path.rglob("*") if p.suffix.lower() in _DATA_SUFFIXES and p.is_file()]
    if not files:
        raise SpectuneError(
            f"dataset path {path} is not a file, nor a folder written by save_to_disk or "
            f"holding data files ({', '.join(_DATA_SUFFIXES)}); check the dataset path"
        )
    # datasets logs a failed read before raising it; spectune explains the failure itself
    with logger_at("datasets", logging.CRITICAL):
        try:
            found = datasets.load_dataset(str(path), streaming=True)
        except Exception as exc:
            raise SpectuneError(
                f"dataset folder {path} cannot be loaded by datasets: {_reason(exc)}"
            ) from None
    label = f"dataset folder {path}"
    rows, split = _pick_split(found, split, label, f"{path}:SPLIT")
    label += f" (split {split})"
    return Source(label, _lazy(lambda: rows), _row_index, lambda e: _source_error(label, e))


def _source_error(label: str, exc: Exception) -> SpectuneError:
    return SpectuneError(f"{label} cannot be read: {_reason(exc)}")


def is_dataset_name(spec: str) -> bool:
    """Whether a data setting names a ``datasets`` dataset (``NAME``, ``NAME:SPLIT``,
    ``NAME:CONFIG:SPLIT``) rather than a path: nothing exists there, it has no data-file
    extension, no leading ``/``, ``.`` or ``~``, and it is spelled like a hub id."""
    if not isinstance(spec, str) or Path(os.path.expanduser(spec)).exists():
        return False
    if spec.startswith(("/", ".", "~")) or Path(spec).suffix.lower() in _DATA_SUFFIXES:
        return False
    if Path(spec.rpartition(":")[0]).exists():  # a local folder with a split
        return False
    return _NAME.fullmatch(spec) is not None


def _name_parts(spec: str) -> tuple[str, str | None, str | None]:
    parts = spec.split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return parts[0], None, parts[1] if len(parts) == 2 else None


def load_named(spec: str) -> tuple[Any, str]:
    """A ``datasets`` dataset by name (``NAME``, ``NAME:SPLIT``, ``NAME:CONFIG:SPLIT``): the
    ``Dataset`` of its split and how errors name it.

    Raises:
        SpectuneError: it cannot be loaded (offline and not cached: how to fetch it), or it
            has several splits and none was named.
    """
    import datasets

    name, config, split = _name_parts(spec)
    label = f"dataset {name}" + (f" ({config})" if config else "")
    with logger_at("datasets", logging.CRITICAL):
        try:
            loaded = datasets.load_dataset(name, config, split=split)
        except Exception as exc:
            offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
            fetch = f"python -c \"import datasets; datasets.load_dataset('{name}')\""
            if offline:
                raise SpectuneError(
                    f"{spec!r} is not a file or folder here, and the dataset {name} is not in "
                    f"the datasets cache while the hub is offline (HF_HUB_OFFLINE=1): fetch it "
                    f"once online ({fetch}), or give a data file"
                ) from None
            raise SpectuneError(
                f"{spec!r} is not a file or folder here, and the dataset {name} cannot be "
                f"loaded ({_reason(exc)}); check the path, or the name (NAME, NAME:SPLIT or "
                "NAME:CONFIG:SPLIT)"
            ) from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded, split = _pick_split(loaded, split, label, f"{name}:SPLIT")
    return loaded, f"{label} (split {split})"


def open_source(spec: str | os.PathLike[str], format: str = "auto") -> Source:
    """The records of a data setting: a file, a folder (``save_to_disk`` or data files; a
    ``:SPLIT`` suffix picks a split) or a ``datasets`` name.

    Raises:
        SpectuneError: a file that does not exist, a folder without data, a name that cannot
            be loaded.
    """
    text = os.fspath(spec)
    path = Path(os.path.expanduser(text))
    if path.is_file():
        builder = FILE_TYPES.get(path.suffix.lower(), "json")
        if builder == "json":
            return _json_source(path, format)
        return _csv_source(path) if builder == "csv" else _typed_file_source(path, builder)
    if path.is_dir():
        return _folder_source(path, None)
    folder, _, split = text.rpartition(":")
    if folder and Path(os.path.expanduser(folder)).is_dir():
        return _folder_source(Path(os.path.expanduser(folder)), split)
    if not is_dataset_name(text):
        raise SpectuneError(f"dataset file {path} does not exist; check the dataset path")
    loaded, label = load_named(text)
    return Source(label, _lazy(lambda: loaded), _row_index, lambda e: _source_error(label, e))


# --------------------------------------------------------------------------- reading


def _records(source: Source) -> Iterator[dict[str, Any]]:
    """The source's records, ``datasets``' read errors turned into spectune's."""
    with logger_at("datasets", logging.CRITICAL):
        try:
            rows = iter(source.rows)
        except SpectuneError:
            raise
        except Exception as exc:
            raise source.failed(exc) from None
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except SpectuneError:
                raise
            except Exception as exc:
                raise source.failed(exc) from None
            yield _json_cells(row) if source.csv else row


def read_examples(spec: str | os.PathLike[str], format: str = "auto") -> list[InstructionExample]:
    """Read instruction or conversation records into :class:`InstructionExample` records.

    Args:
        spec: a file, a folder or a ``datasets`` name (see the module docstring).
        format: one of :data:`~spectune.data.examples.FORMATS`; ``"auto"`` takes the first
            record's format, and every later record must have it too.

    Returns:
        The examples in order.

    Raises:
        SpectuneError: unknown format; the source cannot be read (the file and line named); a
            record that fits no format, is of another format than the first, or breaks its
            format's rules (the record and the fields expected named); no records.
    """
    if format not in FORMATS:
        raise SpectuneError(f"unknown dataset format {format!r}; use one of {', '.join(FORMATS)}")
    source = open_source(spec, format)
    fmt, first = (None if format == "auto" else format), ""
    examples = []
    for i, record in enumerate(_records(source)):
        where = _Where(source, i)
        if fmt is None:
            fmt = record_format(record)
            if fmt is None:
                fields = ", ".join(k for k, v in record.items() if v is not None) or "none"
                raise SpectuneError(
                    f"{where}: the record fits no format (its fields: {fields}); expected the "
                    "fields of one of: "
                    + "; ".join(f"{name}: {fields}" for name, fields in EXPECTED.items())
                )
            first = source.locate(i)
        try:
            examples.append(PARSERS[fmt](record, where))
        except SpectuneError as exc:
            other = record_format(record)
            if format != "auto" or other in (None, fmt):
                raise
            raise SpectuneError(
                f"{exc}: this record is {other} ({EXPECTED[other]}), but the first record "
                f"({first}) is {fmt} ({EXPECTED[fmt]}); a file holds records "
                f"of one format: split it, or convert the records"
            ) from None
    if not examples:
        raise SpectuneError(
            f"{source.label} holds no examples; it must hold at least one"
            + (f" {format} record" if format != "auto" else "")
        )
    return examples


def examples_jsonl(examples: Iterable[InstructionExample]) -> tuple[str, str]:
    """Examples as JSON Lines spectune reads back the same: Dolly records, or ``messages``
    records (with ``category``) when one of them carries a conversation or a system message.

    Returns:
        ``(text, format)``: the file's content and its ``data.format``.
    """
    examples = list(examples)
    if all(not ex.history and ex.system is None for ex in examples):
        rows = [ex.to_dolly() for ex in examples]
        fmt = "dolly"
    else:
        rows = [{"messages": ex.to_messages(), "category": ex.category} for ex in examples]
        fmt = "messages"
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), fmt


__all__ = [
    "EXPECTED",
    "FILE_TYPES",
    "PARSERS",
    "ROLES",
    "Source",
    "conversation_example",
    "examples_jsonl",
    "is_dataset_name",
    "load_named",
    "open_source",
    "read_examples",
    "record_format",
]
