"""safetensors files: a single file, a Hugging Face folder, or index-listed shards.

Opening reads and checks each file's header (a truncated file fails at open, naming it);
:meth:`SafetensorsSource.load` maps the one file that holds the tensor, copies it out and
closes the file again, so resident memory stays at about one tensor.
:func:`safetensors_problem` checks a file without raising (for the model loader).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors

from spectune.errors import SpectuneError
from spectune.weights.sources import TensorInfo, WeightSource, check_index, make_info

if TYPE_CHECKING:
    import torch

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


def safetensors_problem(path: Path) -> str | None:
    """Check a ``.safetensors`` file's header against its size without reading the tensors.

    Returns:
        ``None`` when the header parses and the data section ends exactly at the end of the
        file, otherwise a short description of what is wrong (e.g. truncation).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return f"{path.name} is {size} bytes, too short for a safetensors header"
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, 100 << 20):
                return f"{path.name}: header length {header_len} does not fit in {size} bytes"
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{path.name}: unreadable safetensors header ({exc})"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            return f"{path.name}: tensor {name!r} has no valid data_offsets"
    if 8 + header_len + end != size:
        return (
            f"{path.name}: the header promises {8 + header_len + end} bytes but the file "
            f"has {size} (truncated or corrupt)"
        )
    return None


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a ``.safetensors`` header and check that the data section fills the file.

    Raises:
        SpectuneError: naming the file, when it is too short, truncated or corrupt.
    """
    problem = safetensors_problem(path)
    if problem is not None:
        raise SpectuneError(
            f"cannot read {path}: {problem}; re-download or re-save the file "
            "(e.g. safetensors.torch.save_file)"
        )
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    if not isinstance(header, dict):
        raise SpectuneError(f"cannot read {path}: its safetensors header is not a JSON object")
    return header


class SafetensorsSource(WeightSource):
    """One or more ``.safetensors`` files (a single file, a folder, or index-listed shards).

    Opening parses every file's header (no tensor data) and checks it against the file size.
    :meth:`load` opens the one file holding the tensor with ``safe_open`` (memory-mapped),
    copies that tensor out and closes the file again: a mapping kept open would keep every
    page read so far resident (counted in the process's RSS), so memory would grow to the
    size of the checkpoint instead of one tensor.

    Attributes:
        opened_files: the distinct files opened so far, in order.
    """

    kind = "safetensors"

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
        self.opened_files: list[Path] = []
        infos = []
        for file in files:
            header = read_safetensors_header(file)
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                if name in self._file_of:
                    raise SpectuneError(
                        f"tensor {name!r} is stored twice: in {self._file_of[name]} and {file}"
                    )
                try:
                    shape = tuple(int(d) for d in entry["shape"])
                    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"], str(entry["dtype"]).lower())
                except (KeyError, TypeError, ValueError):
                    raise SpectuneError(
                        f"cannot read {file}: tensor {name!r} has a malformed header entry"
                    ) from None
                self._file_of[name] = file
                infos.append(make_info(name, shape, dtype, str(file)))
        if expected is not None:
            check_index(expected, self._file_of, index_file)
        self._set_infos(infos)

    def _load(self, info: TensorInfo, requested: str) -> torch.Tensor:
        file = self._file_of[info.name]
        if file not in self.opened_files:
            self.opened_files.append(file)
        try:
            with safetensors.safe_open(str(file), framework="pt", device="cpu") as handle:
                return handle.get_tensor(info.name)  # an owned copy: valid after closing
        except Exception as exc:  # safetensors raises its own error types
            raise SpectuneError(f"cannot read tensor {info.name!r} from {file}: {exc}") from exc


__all__ = ["SafetensorsSource", "read_safetensors_header", "safetensors_problem"]
