"""The results folder of a run: who owns it, whether it is done, what may be replaced.

A folder holds a spectune run when it has ``run.json``: the marker, with the run's status
(``running`` until the last file is written, then ``complete``; ``failed`` with the reason
when the run stopped on an error) and what the run wrote: every top-level file or folder
(``files``) and, inside those folders, every file it wrote (``tree``, refreshed whenever the
marker is saved and at each Trainer checkpoint). That record is what ``--overwrite`` removes:
files that spectune did not write are never deleted, not even inside the run's own
sub-folders (a file of yours in ``adapter/`` makes ``--overwrite`` refuse, naming it, rather
than delete it). A folder that holds other files but no marker is refused (pick another
``--out``).

=====================  ================  ======================  =====================
folder holds           no flag           ``resume=True``          ``overwrite=True``
=====================  ================  ======================  =====================
nothing / no folder    start             start                   start
a complete run         refuse            nothing to do (done)    remove its files, start
an interrupted or      refuse            continue it             remove its files, start
failed run
other files only       refuse            refuse                  refuse
a run in use           refuse            refuse                  refuse
=====================  ================  ======================  =====================

Outputs that are recomputed rather than resumed (``spectune watch --out``, ``spectune
compare --out``: kinds ``"analyze"`` and ``"compare"``) use :meth:`RunFolder.replacing`: a new
or empty folder is taken and marked, a folder holding the same kind's earlier output has that
output replaced (the ``--overwrite`` column, without the flag), and any other folder is
refused before the work starts (:meth:`RunFolder.check`).

**One process at a time.** While a run is open its folder is locked (``fcntl.flock`` on
``.spectune.lock`` in the folder): a second ``tune`` / ``--resume`` / ``--overwrite`` on the
same folder is refused with the other process's id, so it can neither write into the live
run nor delete its files. The operating system drops the lock when the process ends, however
it ends, so a crashed run never leaves the folder stuck. A study, sweep or search holds the
lock of each of its run folders (:class:`HeldFolders`) from the moment its run starts until
the study ends, and lends it to that run alone: while the study is alive neither another
process nor another ``RunFolder`` in it can overwrite a run it did or is doing.

Every file is written atomically (``spectune._io``), so an interruption leaves each file
either whole or absent; resuming keeps what was written before.

**No links.** spectune never writes or deletes through a symbolic link in a results folder: a
folder holding a run with a link anywhere inside is refused (``--resume`` and ``--overwrite``
too, naming the link), and while the folder is open every write through ``spectune._io``
checks the path (:func:`spectune._io.check_no_links`).

**The marker is checked before it is used.** ``run.json`` is validated against
:data:`MARKER_SCHEMA` (types included: ``files`` a list of plain names in the folder,
``tree`` a mapping of those names to relative paths...) before anything in it is acted on; a
damaged marker is refused, naming the field, and nothing is removed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spectune._io import check_no_links, guard_folder, release_folder, write_json
from spectune.errors import SpectuneError

MARKER = "run.json"
CONFIG = "config.yaml"
LOCK = ".spectune.lock"

#: run folders whose lock a :class:`HeldFolders` of this process lends to the run it is doing
#: in one of them (real path -> whether a RunFolder has it now): the first RunFolder opened
#: there works under the held lock instead of taking its own; a second one meanwhile is refused
_LENT: dict[str, bool] = {}

#: names of temporary files and folders that spectune and the Trainer write before renaming
_TEMPORARY = (".tmp", ".old")
#: a run's status in its marker
STATUSES = ("running", "complete", "failed")
#: the report page, which the report writer itself refuses to write over a file of the user's
_REPORT = "report.html"

#: the marker's fields with their types: required ones first (``kind`` defaults to "tune"),
#: then the optional ones that spectune acts on; other fields (totals, failed runs...) are
#: only recorded, never acted on, and kept as they are
MARKER_SCHEMA: dict[str, str] = {
    "spectune_run": "the integer 1",
    "kind": "a name (tune, sweep, search, study, demo, analyze, compare...)",
    "status": "one of " + ", ".join(STATUSES),
    "files": "a list of plain file names in the folder",
    "tree": "a mapping of those names to lists of relative paths",
    "started": "a time stamp (text)",
    "finished": "a time stamp (text)",
    "resumed": "a list of time stamps (text)",
    "error": "text",
    "prelude_done": "true or false",
}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _temporary(rel: str) -> bool:
    """A half-written leftover of ours: an atomic write's temporary or a Trainer tmp dir."""
    return any(
        part.startswith(".") and part.endswith(_TEMPORARY) or part.startswith("tmp-checkpoint-")
        for part in rel.split("/")
    )


def _plain_name(name: Any) -> bool:
    """A file or folder name directly in the run folder (no path, no '..')."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
    )


def _relative(path: Any) -> bool:
    """A relative path below a folder (no empty, '.' or '..' part, not absolute)."""
    return (
        isinstance(path, str)
        and "\0" not in path
        and all(part not in ("", ".", "..") for part in path.split("/"))
    )


def _is_text_list(value: Any, ok: Any = None) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, str) and (ok is None or ok(v)) for v in value
    )


def _field_ok(field: str, value: Any) -> bool:
    """Whether ``value`` has the type :data:`MARKER_SCHEMA` gives ``field``."""
    if field == "spectune_run":
        return type(value) is int and value == 1
    if field == "kind":
        return isinstance(value, str) and value.isidentifier()
    if field == "status":
        return value in STATUSES
    if field == "files":
        return _is_text_list(value, _plain_name)
    if field == "tree":
        return isinstance(value, dict) and all(
            _plain_name(k) and _is_text_list(v, _relative) for k, v in value.items()
        )
    if field in ("started", "finished", "error"):
        return isinstance(value, str)
    if field == "resumed":
        return _is_text_list(value)
    if field == "prelude_done":
        return isinstance(value, bool)
    return True


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_marker(data: Any, where: Path | str) -> dict[str, Any]:
    """Check a marker's content against :data:`MARKER_SCHEMA`.

    Args:
        data: the parsed ``run.json``.
        where: its path, for the message.

    Returns:
        ``data``, unchanged.

    Raises:
        SpectuneError: not a marker, a required field missing, or a field of the wrong type
            (one line naming run.json and the field).
    """
    fix = (
        "spectune acts on no damaged run.json: restore it, or move the folder's files out "
        "yourself and pick another --out"
    )
    if not isinstance(data, dict) or "spectune_run" not in data:
        raise SpectuneError(f"{where} is not a spectune run marker; pick another --out")
    for field in ("spectune_run", "status", "files"):
        if field not in data:
            raise SpectuneError(f"{where}: field {field!r} is missing; {fix}")
    for field, value in data.items():
        if field in MARKER_SCHEMA and not _field_ok(field, value):
            raise SpectuneError(
                f"{where}: field {field!r} is {_show(value)}, not {MARKER_SCHEMA[field]}; {fix}"
            )
    return data


def _links_under(folder: Path) -> list[str]:
    """Every symbolic link under ``folder`` (not followed), as paths relative to it."""
    out = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        out += [
            (base / n).relative_to(folder).as_posix()
            for n in [*dirs, *files]
            if (base / n).is_symlink()
        ]
    return sorted(out)


def _files_under(folder: Path) -> list[str]:
    """Every file (and symlink) under ``folder``, as paths relative to it."""
    out = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        out += [(base / f).relative_to(folder).as_posix() for f in files]
        out += [(base / d).relative_to(folder).as_posix() for d in dirs if (base / d).is_symlink()]
    return sorted(out)


class RunFolder:
    """The results folder of one run (see the module docstring for the rules).

    Args:
        path: the folder.
        kind: what the folder holds (``"tune"``, ``"sweep"``...), checked on resume.
    """

    def __init__(self, path: str | Path, kind: str = "tune") -> None:
        self.path = Path(path)
        self.kind = kind
        self.state: dict[str, Any] = {}
        self._lock_fd: int | None = None
        self._borrowed: str | None = None  # the lent lock it works under

    # -- reading ----------------------------------------------------------------------------

    def read_marker(self) -> dict[str, Any] | None:
        """The marker's content, checked against :data:`MARKER_SCHEMA`, or None when the
        folder holds no spectune run.

        Raises:
            SpectuneError: the marker is unreadable, not JSON, or a field has the wrong type.
        """
        marker = self.path / MARKER
        if not marker.is_file() and not marker.is_symlink():
            return None
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpectuneError(
                f"{marker} is unreadable ({exc}); remove the folder or pick another --out"
            ) from None
        return validate_marker(data, marker)

    @property
    def complete(self) -> bool:
        return self.state.get("status") == "complete"

    # -- the lock ---------------------------------------------------------------------------

    def _in_use(self, fd: int) -> SpectuneError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
        return SpectuneError(
            f"output folder {self.path} is in use by a running spectune ({holder}); wait "
            "for it to finish or stop it, or pick another --out"
        )

    def _refuse_in_use(self) -> None:
        """Refuse a folder whose lock another open holds, creating nothing."""
        if self._lock_fd is not None or self._borrowed or not (self.path / LOCK).is_file():
            return
        if _LENT.get(os.path.realpath(self.path)) is False:  # a study lends it to this run
            return
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return  # a link or unreadable: refused when the folder is opened
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use(fd) from None
        finally:
            os.close(fd)  # drops the probe's lock too

    def _lock(self) -> None:
        """Take the folder's lock or refuse, naming the process that holds it."""
        if self._lock_fd is not None or self._borrowed:
            return
        key = os.path.realpath(self.path)
        if _LENT.get(key) is False:  # a study's run, under the study's lock
            _LENT[key] = True
            self._borrowed = key
            return
        check_no_links(self.path)  # a run inside an open folder (a sweep's): no link on the way
        self.path.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: the lock's content is written
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise SpectuneError(
                f"{self.path / LOCK} cannot be opened ({exc.strerror}; a symbolic link is never "
                "followed): remove it, or pick another --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._in_use(fd)
            os.close(fd)
            raise error from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._lock_fd = fd
        guard_folder(self.path)

    def close(self) -> None:
        """Release the folder's lock (the run ends; also dropped when the process ends)."""
        if self._borrowed is not None:  # a lent lock goes back to the study that holds it
            if self._borrowed in _LENT:
                _LENT[self._borrowed] = False
            self._borrowed = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None
            release_folder(self.path)

    def __enter__(self) -> RunFolder:
        return self

    @contextlib.contextmanager
    def replacing(self) -> Iterator[RunFolder]:
        """Open the folder replacing its earlier output of the same kind (``overwrite=True``),
        and mark it complete when the block ends, failed when it raises
        (:func:`fail_on_exit`).

        Raises:
            SpectuneError: as :meth:`open` with ``overwrite=True``.
        """
        self.open(overwrite=True)
        with fail_on_exit(self):
            yield self
        self.finish()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- opening ----------------------------------------------------------------------------

    def open(self, *, overwrite: bool = False, resume: bool = False) -> RunFolder:
        """Check the folder against the rules, lock it and take it (writes the marker).

        Raises:
            SpectuneError: the folder holds a run and neither flag is given, holds files that
                are not a spectune run, holds a run of another kind, is in use by another
                process, or both flags are given.
        """
        self.check(overwrite=overwrite, resume=resume)
        self._lock()
        try:
            return self._open_locked(overwrite=overwrite, resume=resume)
        except BaseException:
            self.close()
            raise

    def check(self, *, overwrite: bool = False, resume: bool = False) -> None:
        """The refusals of :meth:`open`, without creating, locking or changing anything (a
        command that computes before it writes checks its folder first).

        Raises:
            SpectuneError: as :meth:`open`.
        """
        if overwrite and resume:
            raise SpectuneError("--overwrite and --resume exclude each other; pick one")
        if self.path.is_symlink() and not self.path.exists():
            raise SpectuneError(f"output folder {self.path} is a broken link; pick another --out")
        if self.path.exists() and not self.path.is_dir():
            raise SpectuneError(f"output folder {self.path} is a file; pick another --out")
        self._refuse_in_use()
        self._verdict(self.read_marker(), overwrite=overwrite, resume=resume)

    def _verdict(self, marker: dict[str, Any] | None, *, overwrite: bool, resume: bool) -> None:
        """Refuse the folder unless ``marker`` (None: no run) and the flags allow taking it."""
        if marker is None:
            self._refuse_foreign()
            return
        if marker.get("kind", "tune") != self.kind:
            article = "an" if self.kind[:1] in "aeiou" else "a"
            raise SpectuneError(
                f"output folder {self.path} holds a spectune {marker.get('kind', 'tune')} run, "
                f"not {article} {self.kind} run; pick another --out"
            )
        self._refuse_links()
        status = marker.get("status")
        if overwrite:
            self._refuse_foreign_inside(marker)
            return
        if resume:
            return
        if status == "complete":
            raise SpectuneError(
                f"output folder {self.path} already holds a complete run; pass --overwrite to "
                "replace it or pick another --out"
            )
        why = f" ({marker['error']})" if status == "failed" and marker.get("error") else ""
        raise SpectuneError(
            f"output folder {self.path} holds an interrupted run (status {status!r}{why}); pass "
            "--resume to continue it, --overwrite to start again, or pick another --out"
        )

    def _refuse_links(self) -> None:
        """Refuse a folder with a symbolic link anywhere inside (never written through or
        deleted)."""
        links = _links_under(self.path)
        if links:
            raise SpectuneError(
                f"output folder {self.path} holds a symbolic link ({links[0]}"
                f"{f' and {len(links) - 1} more' if len(links) > 1 else ''}); spectune never "
                "writes or deletes through a link in a results folder: remove it, or pick "
                "another --out"
            )

    def _refuse_foreign(self) -> None:
        others = (
            sorted(p.name for p in self.path.iterdir() if p.name != LOCK)
            if self.path.is_dir()
            else []
        )
        if others:
            raise SpectuneError(
                f"output folder {self.path} is not empty and holds no spectune run "
                f"({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}); spectune "
                "never deletes or replaces files it did not write: pick another --out"
            )

    def _open_locked(self, *, overwrite: bool, resume: bool) -> RunFolder:
        marker = self.read_marker()  # again, under the lock
        self._verdict(marker, overwrite=overwrite, resume=resume)
        if marker is None:
            return self._start()
        if overwrite:
            self._remove_owned(marker)
            return self._start()
        self.state = marker  # resume
        return self

    def resumed(self) -> None:
        """Record that the run continues (after its config was checked against the saved
        one, so a refused resume leaves the marker as it was)."""
        if not self.complete:
            self.state.setdefault("resumed", []).append(_now())
            self.state["status"] = "running"
            self.state.pop("error", None)
            self._save_marker()

    def _start(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        self.state = {
            "spectune_run": 1,
            "kind": self.kind,
            "status": "running",
            "started": _now(),
            "files": [MARKER],
            "tree": {},
        }
        self._save_marker()
        return self

    @staticmethod
    def _owned_names(marker: dict[str, Any]) -> list[str]:
        """The top-level names the run wrote (a validated marker: plain names only)."""
        return [n for n in marker.get("files", []) if _plain_name(n) and n not in (MARKER, LOCK)]

    def _refuse_foreign_inside(self, marker: dict[str, Any]) -> None:
        """Refuse when the run's folders hold files it did not write (never deleted)."""
        tree = marker.get("tree") or {}
        foreign = []
        for name in self._owned_names(marker):
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                ours = set(tree.get(name) or [])
                foreign += [
                    f"{name}/{rel}"
                    for rel in _files_under(target)
                    if rel not in ours and not _temporary(rel)
                ]
        if foreign:
            raise SpectuneError(
                f"--overwrite: {self.path} holds files the run did not write "
                f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); spectune "
                "never deletes them: move them out of the run folder, then --overwrite"
            )

    def _remove_owned(self, marker: dict[str, Any]) -> None:
        """Remove what the run wrote (the caller refused links and files it did not write);
        a link is never followed: rmtree removes a link inside as a link."""
        for name in self._owned_names(marker):
            target = self.path / name
            check_no_links(target, self.path)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        (self.path / MARKER).unlink(missing_ok=True)

    # -- writing ----------------------------------------------------------------------------

    def _save_marker(self) -> None:
        tree = {}
        for name in self.state.get("files", []):
            target = self.path / name
            if name != MARKER and target.is_dir() and not target.is_symlink():
                tree[name] = _files_under(target)
        self.state["tree"] = tree
        write_json(self.path / MARKER, self.state)

    def record(self) -> None:
        """Save the marker now, recording every file written so far (e.g. a checkpoint).

        Raises:
            SpectuneError: a symbolic link appeared in a folder of the run (not recorded).
        """
        if self.state:
            self._check_owned_links()
            self._save_marker()

    def _check_owned_links(self) -> None:
        """Refuse a symbolic link at or under a name the run wrote."""
        for name in self._owned_names(self.state):
            target = self.path / name
            links = (
                [name]
                if target.is_symlink()
                else ([f"{name}/{rel}" for rel in _links_under(target)] if target.is_dir() else [])
            )
            if links:
                raise SpectuneError(
                    f"{self.path / links[0]} is a symbolic link inside the results folder "
                    f"{self.path}; spectune never writes through a link: remove the link"
                )

    def own(self, *names: str) -> list[Path]:
        """Record top-level files/folders as written by this run (before writing them), so
        that ``--overwrite`` may remove them later; returns their paths.

        Raises:
            SpectuneError: a name that is not a plain file name, a symbolic link, or a file
                or folder already there that the run did not write (it is never replaced).
        """
        for name in names:
            if not _plain_name(name):
                raise ValueError(f"RunFolder.own: {name!r} is not a file name in the folder")
            target = self.path / name
            check_no_links(target, self.path)
            if name not in self.state["files"] and name != _REPORT and os.path.lexists(target):
                raise SpectuneError(
                    f"{target} is already there and was not written by this run; spectune "
                    "never replaces a file it did not write: move it out of the folder and run "
                    "again"
                )
        added = [n for n in names if n not in self.state["files"]]
        if added:
            self.state["files"].extend(added)
        self._check_owned_links()
        self._save_marker()
        return [self.path / n for n in names]

    def update(self, **fields: Any) -> None:
        """Store extra fields in the marker."""
        self.state.update(fields)
        self._save_marker()

    def disown(self, name: str) -> None:
        """Remove a top-level folder the run wrote and no longer needs (its checkpoints once
        the run is complete)."""
        target = self.path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        if name in self.state.get("files", []):
            self.state["files"].remove(name)
        self._save_marker()

    def fail(self, error: str) -> None:
        """Mark the run failed with the reason (a rerun says why; ``--resume`` continues)."""
        if self.state and not self.complete:
            self.state["status"] = "failed"
            self.state["error"] = error[:500]
            self._save_marker()
        self.close()

    def finish(self) -> None:
        """Mark the run complete (the last write of a run) and release the lock."""
        self.state["status"] = "complete"
        self.state["finished"] = _now()
        self._save_marker()
        self.close()


class HeldFolders:
    """The locks of a study's (sweep's, search's) run folders, held until it ends.

    :meth:`lend` takes a folder's lock (refusing, as :meth:`RunFolder.open` does, when another
    process holds it) and lends it to the run done in the block: that run's
    :class:`RunFolder` opens under it. The lock stays held after the run, so a finished run of
    a live study cannot be overwritten either; :meth:`close` (the end of the ``with`` block)
    releases them all. Each held lock is an open file: past :attr:`LIMIT` of them the oldest
    finished run's is released first.
    """

    #: locks held at most (a descriptor each; the usual limit of open files is 1024)
    LIMIT = 256

    def __init__(self) -> None:
        self._held: dict[str, RunFolder] = {}

    def hold(self, path: str | Path) -> None:
        """Take the lock of the run folder ``path`` (made if needed) and keep it.

        Raises:
            SpectuneError: another process (or another open of it here) holds the folder.
        """
        key = os.path.realpath(path)
        if key not in self._held:
            excess = max(0, len(self._held) + 1 - self.LIMIT)
            for oldest in [k for k in self._held if k not in _LENT][:excess]:
                self._held.pop(oldest).close()
            folder = RunFolder(path)
            folder._lock()
            self._held[key] = folder

    def release(self, path: str | Path) -> None:
        """Release the lock of ``path`` (e.g. for a run that another process does)."""
        folder = self._held.pop(os.path.realpath(path), None)
        if folder is not None:
            folder.close()

    @contextlib.contextmanager
    def lend(self, path: str | Path) -> Iterator[None]:
        """Hold ``path``'s lock and lend it to the run done in the block."""
        self.hold(path)
        key = os.path.realpath(path)
        _LENT[key] = False
        try:
            yield
        finally:
            _LENT.pop(key, None)

    def close(self) -> None:
        """Release every lock held."""
        for folder in self._held.values():
            folder.close()
        self._held.clear()

    def __enter__(self) -> HeldFolders:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def fail_on_exit(folder: RunFolder) -> Iterator[None]:
    """A block after which ``folder`` (a study's, sweep's or search's) is never left
    "running": any exception, an interruption (Ctrl-C) or ``SystemExit`` included, marks it
    failed with the reason (``--resume`` continues it) and propagates."""
    try:
        yield
    except BaseException as exc:
        if folder.state.get("status") == "running":
            why = (
                f"interrupted ({type(exc).__name__})"
                if isinstance(exc, (KeyboardInterrupt, SystemExit))
                else f"{type(exc).__name__}: {exc}"
            )
            folder.fail(why)
        raise


__all__ = [
    "CONFIG",
    "LOCK",
    "MARKER",
    "MARKER_SCHEMA",
    "STATUSES",
    "HeldFolders",
    "RunFolder",
    "fail_on_exit",
    "validate_marker",
]
