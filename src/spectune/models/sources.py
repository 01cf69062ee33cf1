"""Where a model comes from when it is not a local folder: a Hugging Face hub id, or a GGUF file.

A hub id is ``org/name`` or ``org/name@revision`` (a branch, tag or commit). It is resolved
with ``huggingface_hub.snapshot_download``, so the hub's own cache and settings hold:
``HF_HOME`` / ``HF_HUB_CACHE`` say where the cache is, ``HF_HUB_OFFLINE=1`` keeps every
look-up on this machine, a model already in the cache is read from there when the hub cannot be
reached, and a missing one is downloaded when it can. The result is the cache's snapshot
folder ``<cache>/models--org--name/snapshots/<commit>``, an ordinary model folder whose
name is the commit it holds (:func:`snapshot_of` reads the id and commit back from it, for the
run's pins).

A local path wins over a hub id of the same spelling (as in ``transformers``). A file is a
GGUF model when its name ends in ``.gguf`` or it starts with the GGUF magic
(:func:`is_gguf_file`); :mod:`spectune.models.loading` dequantizes it into spectune's cache.

A process asks the hub once per id: the snapshot an id resolved to is remembered for the
rest of the process (a run resolves its model several times; with the hub unreachable each
ask would wait for a time-out, and a branch that moves mid-run must not change the model).

``huggingface_hub`` is imported inside :func:`hub_snapshot`: telling the forms apart stays
import-free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from spectune.errors import MissingDependencyError, SpectuneError

#: ``org/name`` with an optional ``@revision``, in the characters the hub allows in ids
HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+)(?:@(?P<revision>[A-Za-z0-9_./-]+))?$"
)
#: a snapshot folder of the hub's cache: ``models--org--name/snapshots/<commit>``
_SNAPSHOT = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
GGUF_MAGIC = b"GGUF"


#: what each (id, hub cache) resolved to in this process
_RESOLVED: dict[tuple[str, str], HubSnapshot] = {}


@dataclass(frozen=True)
class HubSnapshot:
    """A model of the hub as it is in the local cache.

    Attributes:
        repo: the hub id, ``org/name``.
        commit: the commit the snapshot holds (what a branch or tag resolved to).
        path: the snapshot folder.
        revision: the revision asked for (``None``: the default branch).
    """

    repo: str
    commit: str
    path: Path
    revision: str | None = None


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``(repo, revision)`` of a hub id (``org/name`` or ``org/name@revision``), else None."""
    match = HUB_ID.match(str(text))
    if match is None or ".." in match["repo"] or match["repo"].endswith((".", "-")):
        return None
    return match["repo"], match["revision"]


def is_gguf_file(path: Path) -> bool:
    """Whether ``path`` is a file to read as a GGUF model: named ``*.gguf``, or a file that
    starts with the GGUF magic."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def hub_cache_dir() -> str:
    """The hub cache ``huggingface_hub`` uses (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _fetch_hint(repo: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"fetch it with `hf download {repo}{rev}` on a machine with network (then copy its "
        "Hugging Face cache here), or set HF_HUB_CACHE to a cache that holds it"
    )


def hub_snapshot(model: str, what: str = "model") -> HubSnapshot:
    """The local snapshot folder of hub id ``model`` (downloaded when missing and the hub can
    be reached; read from the cache when offline or unreachable).

    Args:
        model: ``org/name`` or ``org/name@revision``.
        what: how messages name the setting (``model``, ``distill.teacher``...).

    Raises:
        SpectuneError: one line naming the id: not cached while offline or the hub is
            unreachable (and how to fetch it), no such model or revision on the hub.
        MissingDependencyError: ``huggingface_hub`` is not installed.
    """
    parsed = parse_hub_id(model)
    if parsed is None:
        raise SpectuneError(f"{what} {model!r} is not a hub id (org/name or org/name@revision)")
    repo, revision = parsed
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise MissingDependencyError(
            f"{what} {model!r} is a Hugging Face hub id, which needs huggingface_hub; install "
            "it with: pip install huggingface_hub"
        ) from None
    cache = hub_cache_dir()
    known = _RESOLVED.get((model, cache))
    if known is not None and known.path.is_dir():
        return known
    try:
        folder = Path(snapshot_download(repo, revision=revision))
    except LocalEntryNotFoundError as exc:
        why = (
            "HF_HUB_OFFLINE is set"
            if constants.HF_HUB_OFFLINE
            else f"the hub cannot be reached ({type(exc.__cause__ or exc).__name__})"
        )
        state = "is incomplete in" if "incomplete" in str(exc) else "is not in"
        raise SpectuneError(
            f"{what} {model}: not a local path, and the hub model {state} the Hugging Face "
            f"cache ({cache}) and {why}; {_fetch_hint(repo, revision)}"
        ) from None
    except RevisionNotFoundError:
        raise SpectuneError(
            f"{what} {model}: hub model {repo} has no revision {revision!r}; give a branch, "
            "tag or commit it has"
        ) from None
    except RepositoryNotFoundError:
        raise SpectuneError(
            f"{what} {model}: not a local path, and there is no hub model {repo} (or it is "
            "private or gated: log in with `hf auth login`); check the path or the id"
        ) from None
    except HFValidationError as exc:
        raise SpectuneError(f"{what} {model!r} is not a valid hub id ({exc})") from None
    except OSError as exc:  # HTTP errors (a hub that is down), disk errors
        raise SpectuneError(
            f"{what} {model}: hub model {repo} could not be fetched "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
        ) from None
    _RESOLVED[(model, cache)] = HubSnapshot(repo, folder.name, folder, revision)
    return _RESOLVED[(model, cache)]


def snapshot_of(path: str | os.PathLike[str]) -> HubSnapshot | None:
    """The hub model a folder is the cached snapshot of (``.../models--org--name/snapshots/
    <commit>``), or None for any other folder."""
    path = Path(path)
    if not _COMMIT.match(path.name) or path.parent.name != "snapshots":
        return None
    match = _SNAPSHOT.match(path.parent.parent.name)
    if match is None:
        return None
    return HubSnapshot(f"{match['org']}/{match['name']}", path.name, path)


def neither_message(model: str, what: str = "model") -> str:
    """The one line for a model that is none of the forms spectune reads."""
    return (
        f"{what} {model!r} is neither 'default' nor an existing folder or .gguf file, nor a "
        "Hugging Face hub id (org/name or org/name@revision); check the path or the id"
    )


__all__ = [
    "HubSnapshot",
    "hub_cache_dir",
    "hub_snapshot",
    "is_gguf_file",
    "neither_message",
    "parse_hub_id",
    "snapshot_of",
]
