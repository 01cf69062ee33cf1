"""Atomic file writes: a crash never leaves a half-written file or folder behind.

Inside a results folder that is open (:func:`guard_folder`, done by
:class:`spectune.results.runfolder.RunFolder` while it holds the folder's lock) no write
goes through a symbolic link: :func:`atomic_path` and :func:`publish_dir` refuse a link at the
file or at any folder between the results folder and the file (:func:`check_no_links`), so a
link planted in a run folder cannot make spectune write outside it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spectune.errors import SpectuneError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: results folders open in this process (absolute paths; a count each, they may nest)
_GUARDED: dict[Path, int] = {}
_GUARDED_LOCK = threading.Lock()


def guard_folder(root: str | os.PathLike[str]) -> None:
    """Refuse, from now on, any write through a symbolic link inside ``root`` (a results
    folder spectune holds); undone by :func:`release_folder`."""
    key = Path(os.path.abspath(root))
    with _GUARDED_LOCK:
        _GUARDED[key] = _GUARDED.get(key, 0) + 1


def release_folder(root: str | os.PathLike[str]) -> None:
    """Undo one :func:`guard_folder` of ``root``."""
    key = Path(os.path.abspath(root))
    with _GUARDED_LOCK:
        left = _GUARDED.get(key, 0) - 1
        if left > 0:
            _GUARDED[key] = left
        else:
            _GUARDED.pop(key, None)


def check_no_links(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> None:
    """Refuse a symbolic link at ``path`` or at any folder between a results folder and it.

    Args:
        path: a file or folder about to be written or deleted.
        root: the results folder; by default every guarded folder (:func:`guard_folder`)
            that holds ``path``. The root itself may be a link (the user's ``--out``).

    Raises:
        SpectuneError: a link on the way, named (nothing was written).
    """
    target = Path(os.path.abspath(path))
    if root is not None:
        roots = [Path(os.path.abspath(root))]
    else:
        with _GUARDED_LOCK:
            roots = list(_GUARDED)
    for top in roots:
        try:
            parts = target.relative_to(top).parts
        except ValueError:
            continue
        probe = top
        for part in parts:
            probe = probe / part
            if probe.is_symlink():
                raise SpectuneError(
                    f"{probe} is a symbolic link inside the results folder {top}; spectune "
                    "never writes through a link: remove the link (or pick another --out)"
                )
            if not os.path.lexists(probe):
                break


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The caller writes the temporary file however it likes (``torch.save``, ``fig.savefig``,
    ``safetensors.save_file``...). On an exception the temporary file is removed and ``path``
    keeps its previous content, if any.

    Args:
        path: the final file name.

    Yields:
        The temporary file name, in the same folder (so the rename is atomic).

    Raises:
        SpectuneError: a symbolic link on the way inside an open results folder
            (:func:`check_no_links`), before anything is written.
    """
    final = Path(path)
    check_no_links(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (NaN and infinities become null)."""
    write_text(path, json.dumps(_json_safe(obj), indent=indent, allow_nan=False) + "\n")


def _json_safe(obj: Any) -> Any:
    """Turn numpy scalars/arrays, paths and non-finite floats into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)  # numpy scalar or array, torch tensor
    if callable(tolist):
        return _json_safe(tolist())
    return str(obj)


def publish_dir(build: Callable[[Path], None], final: str | os.PathLike[str]) -> Path:
    """Build a folder in a temporary sibling and rename it onto ``final`` in one step.

    If ``final`` already exists it is replaced: it is first renamed aside, then the new folder
    is renamed in, then the old one is deleted, so a reader sees either the old or the new
    folder, never a mix.

    Args:
        build: called with the empty temporary folder; writes the content into it.
        final: the folder to publish.

    Returns:
        ``final`` as a Path.

    Raises:
        SpectuneError: a symbolic link on the way inside an open results folder
            (:func:`check_no_links`), before anything is written.
    """
    final = Path(final)
    check_no_links(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual mode
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.rmdir(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a file or a folder)."""
    probe = path
    while True:
        try:
            probe.stat()
            return probe
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                return probe
            probe = probe.parent


def _can_create_in(folder: Path) -> OSError | None:
    """Create and remove a temporary file in ``folder``; the error if that fails, else None.

    A real write, not ``os.access``: it also catches read-only file systems and holds for root.
    """
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc
    return None


def check_writable_dir(
    path: str | os.PathLike[str], what: str, fix: str = "pass a folder you can write to"
) -> Path:
    """Check, before any work, that the folder ``path`` exists or can be made, and is writable.

    Nothing is created: the check writes and removes a temporary file in ``path`` or in its
    nearest existing ancestor.

    Args:
        path: the output folder.
        what: how the user named it, for the message (e.g. ``"--out"``).
        fix: what the user should do, the message's last words.

    Returns:
        ``path`` as a Path.

    Raises:
        SpectuneError: ``path`` (or an ancestor) is a file, or the folder cannot be written.
    """
    folder = Path(path).expanduser()
    try:
        probe = _first_existing(folder)
    except OSError as exc:
        raise SpectuneError(f"{what} {folder}: cannot look at it ({exc.strerror}); {fix}") from exc
    if not probe.is_dir():
        where = "is a file" if probe == folder else f"is inside {probe}, which is a file"
        raise SpectuneError(f"{what} {folder} {where}; {fix}")
    problem = _can_create_in(probe)
    if problem is not None:
        where = "" if probe == folder else f" (no folder can be made in {probe})"
        raise SpectuneError(f"{what} {folder} is not writable{where}: {problem.strerror}; {fix}")
    return folder


def check_writable_file(path: str | os.PathLike[str], what: str) -> Path:
    """Check, before any work, that a file can be written at ``path`` (replacing any file there).

    Args:
        path: the output file.
        what: how the user named it, for the message (e.g. ``"--csv"``).

    Returns:
        ``path`` as a Path.

    Raises:
        SpectuneError: ``path`` is a folder, or its folder cannot be made or written.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        raise SpectuneError(f"{what} {file} is a folder; pass a file name, e.g. {file / 'out.csv'}")
    check_writable_dir(
        file.parent, f"{what} {file}: its folder", "pass a file in a folder you can write to"
    )
    return file
