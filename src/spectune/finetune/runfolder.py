"""The results folder of a run: who owns it, whether it is done, what may be replaced.

A folder holds a spectune run when it has ``run.json``: the marker, with the run's status
(``running`` until the last file is written, then ``complete``) and the list of every
top-level file or folder the run wrote. That list is what ``--overwrite`` removes: files
that spectune did not write are never deleted. A folder that holds other files but no
marker is refused (pick another ``--out``).

=====================  ================  =============================================
folder holds           no flag           ``resume=True``          ``overwrite=True``
=====================  ================  ======================  =====================
nothing / no folder    start             start                   start
a complete run         refuse            nothing to do (done)    remove its files, start
an interrupted run     refuse            continue it             remove its files, start
other files only       refuse            refuse                  refuse
=====================  ================  ======================  =====================

Every file is written atomically (``spectune._io``), so an interruption leaves each file
either whole or absent; resuming keeps what was written before.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

from spectune._io import write_json
from spectune.errors import SpectuneError

MARKER = "run.json"
CONFIG = "config.yaml"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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

    # -- reading ----------------------------------------------------------------------------

    def read_marker(self) -> dict[str, Any] | None:
        """The marker's content, or None when the folder holds no spectune run."""
        import json

        marker = self.path / MARKER
        if not marker.is_file():
            return None
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpectuneError(
                f"{marker} is unreadable ({exc}); remove the folder or pick another --out"
            ) from None
        if not isinstance(data, dict) or data.get("spectune_run") != 1:
            raise SpectuneError(f"{marker} is not a spectune run marker; pick another --out")
        return data

    @property
    def complete(self) -> bool:
        return self.state.get("status") == "complete"

    # -- opening ----------------------------------------------------------------------------

    def open(self, *, overwrite: bool = False, resume: bool = False) -> RunFolder:
        """Check the folder against the rules and take it (writes the marker).

        Raises:
            SpectuneError: the folder holds a run and neither flag is given, holds files that
                are not a spectune run, holds a run of another kind, or both flags are given.
        """
        if overwrite and resume:
            raise SpectuneError("--overwrite and --resume exclude each other; pick one")
        if self.path.exists() and not self.path.is_dir():
            raise SpectuneError(f"output folder {self.path} is a file; pick another --out")
        marker = self.read_marker()
        if marker is None:
            others = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
            if others:
                raise SpectuneError(
                    f"output folder {self.path} is not empty and holds no spectune run "
                    f"({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}); spectune "
                    "never deletes files it did not write: pick another --out"
                )
            return self._start()
        if marker.get("kind", "tune") != self.kind:
            raise SpectuneError(
                f"output folder {self.path} holds a spectune {marker.get('kind')} run, not a "
                f"{self.kind} run; pick another --out"
            )
        status = marker.get("status")
        if overwrite:
            self._remove_owned(marker)
            return self._start()
        if resume:
            self.state = marker
            self.state.setdefault("resumed", []).append(_now())
            if status != "complete":
                self._save_marker()
            return self
        if status == "complete":
            raise SpectuneError(
                f"output folder {self.path} already holds a complete run; pass --overwrite to "
                "replace it or pick another --out"
            )
        raise SpectuneError(
            f"output folder {self.path} holds an interrupted run (status {status!r}); pass "
            "--resume to continue it, --overwrite to start again, or pick another --out"
        )

    def _start(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        self.state = {"spectune_run": 1, "kind": self.kind, "status": "running",
                      "started": _now(), "files": [MARKER]}  # fmt: skip
        self._save_marker()
        return self

    def _remove_owned(self, marker: dict[str, Any]) -> None:
        for name in marker.get("files", []):
            if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
                continue  # only plain top-level names this run recorded
            target = self.path / name
            if name == MARKER:
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        (self.path / MARKER).unlink(missing_ok=True)

    # -- writing ----------------------------------------------------------------------------

    def _save_marker(self) -> None:
        write_json(self.path / MARKER, self.state)

    def own(self, *names: str) -> list[Path]:
        """Record top-level files/folders as written by this run (before writing them), so
        that ``--overwrite`` may remove them later; returns their paths."""
        added = [n for n in names if n not in self.state["files"]]
        if added:
            self.state["files"].extend(added)
            self._save_marker()
        return [self.path / n for n in names]

    def update(self, **fields: Any) -> None:
        """Store extra fields in the marker."""
        self.state.update(fields)
        self._save_marker()

    def finish(self) -> None:
        """Mark the run complete (the last write of a run)."""
        self.state["status"] = "complete"
        self.state["finished"] = _now()
        self._save_marker()


__all__ = ["CONFIG", "MARKER", "RunFolder"]
