"""PyTorch checkpoint files (``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt``), read weights-only.

Every read goes through :func:`load_weights_only` (``torch.load(weights_only=True)``), which
turns each failure into a :class:`~spectune.errors.SpectuneError` and names the pickled
objects a file holds that weights-only loading refuses to run. :class:`TorchFileSource` lists
a file from its pickle alone (on the ``meta`` device) and reads tensors through a memory map
dropped every :data:`MAPPED_BYTES_BUDGET` bytes.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError
from spectune.weights.sources import (
    TensorInfo,
    WeightSource,
    check_index,
    dtype_name,
    flatten_tensors,
    make_info,
)

if TYPE_CHECKING:
    import torch

#: Bytes read through one memory map of a .bin file before it is dropped (see TorchFileSource).
MAPPED_BYTES_BUDGET = 256 << 20


def _is_zip_checkpoint(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _refused_globals(path: Path) -> list[str]:
    """The globals (``module.name``) a pickle refers to that weights_only does not allow.

    Reads the pickle's opcodes with :mod:`pickletools` (nothing is executed); for a zip
    checkpoint, its ``data.pkl``. Empty when the file cannot be read this way.
    """
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # a private torch API; without it, torch's own classes pass
        allowed = set()
    found: list[str] = []
    strings: list[str] = []
    try:
        with ExitStack() as stack:
            if zipfile.is_zipfile(path):
                zf = stack.enter_context(zipfile.ZipFile(path))
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                fh = stack.enter_context(zf.open(name))
            else:
                fh = stack.enter_context(open(path, "rb"))
            for op, arg, _ in pickletools.genops(fh):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # unreadable, truncated or not a pickle: keep what was read
        pass
    refused = [
        g
        for g in found
        if (g not in allowed if allowed else not g.startswith(("torch.", "collections.")))
    ]
    return list(dict.fromkeys(refused))


def load_weights_only(path: Path, *, map_location: str = "cpu", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a SpectuneError."""
    import torch

    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols is not the user's
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"(?i)unsupported global:? GLOBAL ([\w.]+)", text)
        refused = [found.group(1)] if found else _refused_globals(path)
        if not refused:
            raise SpectuneError(
                f"cannot read {path} with torch.load(weights_only=True): it is truncated, "
                "corrupt or not a PyTorch checkpoint"
            ) from exc
        what = (
            f"a pickled {refused[0]}"
            if len(refused) == 1
            else (
                "pickled objects ("
                + ", ".join(refused[:4])
                + ("..." if len(refused) > 4 else "")
                + ")"
            )
        )
        raise SpectuneError(
            f"{path} is not a plain weights file: it holds {what}, which "
            "torch.load(weights_only=True) refuses to run. If you trust the file, load it "
            "yourself and pass model.state_dict(), or re-save it with "
            "torch.save(model.state_dict(), ...) or as .safetensors"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().split(". ")[0].splitlines()[0][:160]
        raise SpectuneError(
            f"cannot read {path} with torch.load ({first}): it is truncated, corrupt or not a "
            "PyTorch checkpoint"
        ) from exc


class TorchFileSource(WeightSource):
    """One or more PyTorch checkpoint files (``.bin`` / ``.pt`` / ``.pth``), read weights-only.

    Opening loads each file onto the ``meta`` device (the pickle only: names, shapes, dtypes;
    no tensor data). :meth:`load` memory-maps the file holding the tensor
    (``torch.load(weights_only=True, mmap=True)``) and copies that one tensor out. Pages read
    through a mapping stay resident while it is open, so the mapping is dropped (and re-made
    on the next load) once :data:`MAPPED_BYTES_BUDGET` bytes have been read through it or
    another file is needed: resident memory stays within that budget plus one tensor, and the
    file's pickle is re-read only once per budget. Files in the old non-zip format
    (``_use_new_zipfile_serialization=False``) cannot be memory-mapped: each is loaded fully
    into memory on first use and kept until a tensor of another file is needed.

    Attributes:
        opened_files: the distinct files whose data has been read so far, in order.
    """

    kind = "bin"

    def __init__(
        self,
        files: list[Path],
        path: Path,
        *,
        expected: Mapping[str, str] | None = None,
        index_file: Path | None = None,
    ) -> None:
        super().__init__(path)
        self._file_of: dict[str, Path] = {}
        self._current: tuple[Path, dict[str, Any]] | None = None  # mapped or legacy-loaded
        self._read_through = 0  # bytes read through the current mapping
        self._zipped = {file: _is_zip_checkpoint(file) for file in files}
        self.opened_files: list[Path] = []
        infos = []
        for file in files:
            content = load_weights_only(file, map_location="meta")
            if not isinstance(content, Mapping):
                raise SpectuneError(
                    f"{file} holds a {type(content).__name__}, not a dict of tensors; save a "
                    "state dict (torch.save(model.state_dict(), ...))"
                )
            tensors = flatten_tensors(content)
            seen: dict[tuple[Any, ...], str] = {}
            for name, t in tensors.items():
                if name in self._file_of:
                    raise SpectuneError(
                        f"tensor {name!r} is stored twice: in {self._file_of[name]} and {file}"
                    )
                # meta tensors have no data pointer; tensors saved sharing a storage share
                # one StorageImpl after loading, whose address _cdata is
                ident = (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape), t.stride())
                if ident in seen:  # tied weights saved once, referenced twice
                    self.aliases[name] = seen[ident]
                    continue
                seen[ident] = name
                self._file_of[name] = file
                infos.append(make_info(name, tuple(t.shape), dtype_name(t.dtype), str(file)))
        if expected is not None:
            check_index(expected, self._file_of, index_file)
        self._set_infos(infos)

    def _load(self, info: TensorInfo, requested: str) -> torch.Tensor:
        file = self._file_of[info.name]
        if file not in self.opened_files:
            self.opened_files.append(file)
        zipped = self._zipped[file]
        nbytes = info.numel * _itemsize(info.dtype)
        stale = self._current is None or self._current[0] != file
        if zipped and self._read_through and self._read_through + nbytes > MAPPED_BYTES_BUDGET:
            stale = True
        if stale:
            self._current = None  # release the previous mapping / legacy file first
            self._read_through = 0
            raw = load_weights_only(file, mmap=True) if zipped else load_weights_only(file)
            self._current = (file, flatten_tensors(raw))
        assert self._current is not None
        self._read_through += nbytes
        return self._current[1][info.name].detach().clone()

    def close(self) -> None:
        self._current = None
        super().close()


def _itemsize(dtype: str) -> int:
    import torch

    return getattr(torch, dtype).itemsize


__all__ = ["MAPPED_BYTES_BUDGET", "TorchFileSource", "load_weights_only"]
