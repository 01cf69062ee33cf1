"""GGUF files (llama.cpp): list tensors from the header, dequantize one tensor at a time.

Opening parses the header (:func:`read_gguf_header`: metadata and the tensor table, skipping
over the vocabulary arrays) and checks every tensor against the file size.
:meth:`GGUFSource.load` reads one tensor's bytes with a positioned read, so resident memory
stays at one tensor. ``gguf.GGUFReader`` could list the tensors too, but it builds numpy
arrays for every vocabulary entry (about 3 s and 160 MB for SmolLM2's 49k tokens, against
0.2 s and no lasting memory here; the tests check that both read the same table). Quantized
tensors (``Q4_1``, ``Q8_0``, ``Q4_K``...) are dequantized with ``gguf.quants.dequantize`` to
float32; ``F32`` / ``F16`` / ``BF16`` / ``F64`` come back in their own dtype, unchanged.
Big-endian GGUF files are refused.

Shapes are reported in torch order: GGUF stores dimensions innermost first (``ne[0]`` is the
number of columns), so a ``(out, in)`` weight appears as ``[in, out]`` in the file.

Names stay llama.cpp's (``blk.0.attn_q.weight``); for Llama-style architectures each tensor
also carries a best-effort Hugging Face name (``TensorInfo.hf_name``,
``model.layers.0.self_attn.q_proj.weight``) and :meth:`GGUFSource.load` accepts either name.
llama.cpp's converter permutes the rows of the query and key projections of ``llama``-arch
models (RoPE pairs interleaved instead of in halves). Permuting rows does not change singular
values, so spectra are the same either way; loading ``attn_q`` / ``attn_k`` *by their
Hugging Face name* undoes the permutation, so the matrix equals the Hugging Face one row for
row (what a weight difference ``W_ft - W_base`` needs). Loading by the GGUF name returns the
file's layout.
"""

from __future__ import annotations

import importlib.util
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import MissingDependencyError, SpectuneError
from spectune.weights.names import GGUF_PERMUTED_QK, gguf_qk_role, gguf_to_hf_name
from spectune.weights.sources import TensorInfo, WeightSource, make_info

if TYPE_CHECKING:
    import numpy as np
    import torch

#: GGUF storage types returned in their own dtype (no dequantization): type -> torch dtype.
_PLAIN = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}


#: numpy dtype of the raw data of the plain types (everything else is read as bytes).
_RAW_DTYPE = {
    "F32": "float32",
    "F16": "float16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}

#: GGUF metadata value types (``gguf.GGUFValueType``): code -> struct format, or the kind.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
#: Arrays longer than this (vocabularies, merges) are skipped, not decoded.
MAX_METADATA_ARRAY = 64


@dataclass(frozen=True)
class GGUFTensor:
    """Where and how one tensor is stored in a GGUF file.

    Attributes:
        name: the llama.cpp tensor name.
        qtype: the ``gguf.GGMLQuantizationType``.
        shape: torch order (the file's dimensions reversed).
        offset: absolute byte offset of the data in the file.
        n_bytes: size of the data.
        raw_shape: numpy shape of the raw data: ``shape`` for plain types, the last dimension
            in bytes for quantized ones (what ``gguf.quants.dequantize`` expects).
        raw_dtype: numpy dtype of the raw data (``"uint8"`` for quantized types and BF16).
    """

    name: str
    qtype: Any
    shape: tuple[int, ...]
    offset: int
    n_bytes: int
    raw_shape: tuple[int, ...]
    raw_dtype: str


class _Cursor:
    """Little-endian reads from a buffer, failing with a clear error past its end."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise SpectuneError(
                f"{self.path}: the GGUF header ends early at byte {len(self.buf)} (truncated or "
                "corrupt); re-download the file"
            )
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise SpectuneError(f"{self.path}: a GGUF string runs past the end of the file")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if count > MAX_METADATA_ARRAY:
                self.skip_array(etype, count)
                return _SKIPPED
            return [self.value(etype) for _ in range(count)]
        raise SpectuneError(f"{self.path}: unknown GGUF metadata type {vtype} (corrupt header?)")

    def skip_array(self, etype: int, count: int) -> None:
        if etype in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[etype]) * count
        elif etype == _STRING:
            for _ in range(count):
                n = self.unpack("<Q")
                self.pos += n
        else:
            for _ in range(count):
                self.value(etype)
        if self.pos > len(self.buf):
            raise SpectuneError(f"{self.path}: a GGUF metadata array runs past the end of the file")


_SKIPPED = object()


def read_gguf_header(path: Path) -> tuple[dict[str, Any], list[GGUFTensor]]:
    """Parse a GGUF file's metadata and tensor table without reading tensor data.

    Arrays longer than :data:`MAX_METADATA_ARRAY` (vocabularies) are skipped over.

    Returns:
        ``(metadata, tensors)``: key -> value (scalars, strings, short lists) and the tensor
        table in file order.

    Raises:
        SpectuneError: not a GGUF file, an unsupported version or byte order, a truncated or
            corrupt header, or a tensor whose data runs past the end of the file.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    size = path.stat().st_size
    if size < 24:
        raise SpectuneError(f"{path} is {size} bytes: too short for a GGUF file")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, path)
        if bytes(buf[:4]) != _MAGIC:
            raise SpectuneError(f"{path} does not start with the GGUF magic: not a GGUF file")
        cur.pos = 4
        version = cur.unpack("<I")
        if version & 0xFFFF == 0:
            raise SpectuneError(f"{path} is a big-endian GGUF file, which is not supported")
        if version not in (2, 3):
            raise SpectuneError(f"{path} is GGUF version {version}; versions 2 and 3 are supported")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        if n_tensors > size or n_kv > size:
            raise SpectuneError(f"{path}: impossible GGUF counts (corrupt header)")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            value = cur.value(cur.unpack("<I"))
            if value is not _SKIPPED:
                metadata[key] = value
        table = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("<I")
            if n_dims > 8:
                raise SpectuneError(f"{path}: tensor {name!r} has {n_dims} dimensions (corrupt?)")
            dims = [cur.unpack("<Q") for _ in range(n_dims)]
            raw_type, offset = cur.unpack("<I"), cur.unpack("<Q")
            table.append((name, dims, raw_type, offset))
        header_end = cur.pos
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise SpectuneError(f"{path}: invalid general.alignment {alignment!r}")
    data_start = -(-header_end // alignment) * alignment
    tensors = []
    seen: set[str] = set()
    for name, dims, raw_type, offset in table:
        if name in seen:
            raise SpectuneError(f"{path}: tensor {name!r} appears twice in the GGUF header")
        seen.add(name)
        try:
            qtype = GGMLQuantizationType(raw_type)
        except ValueError:
            raise SpectuneError(
                f"{path}: tensor {name!r} has unknown GGML type {raw_type}; upgrade gguf"
            ) from None
        block, type_size = GGML_QUANT_SIZES[qtype]
        shape = tuple(int(d) for d in reversed(dims))
        numel = 1
        for d in shape:
            numel *= d
        n_bytes = numel * type_size // block
        start = data_start + offset
        if start + n_bytes > size:
            raise SpectuneError(
                f"{path}: tensor {name!r} ends at byte {start + n_bytes} but the file has {size} "
                "bytes (truncated); re-download the file"
            )
        raw_dtype = _RAW_DTYPE.get(qtype.name, "uint8")
        raw_shape = shape if qtype.name in _RAW_DTYPE else quant_shape_to_byte_shape(shape, qtype)
        tensors.append(GGUFTensor(name, qtype, shape, start, n_bytes, tuple(raw_shape), raw_dtype))
    return metadata, tensors


def unpermute_qk(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row permutation of a query / key weight.

    llama.cpp stores, for each head, the rows of RoPE pair ``j`` interleaved
    (``x0, y0, x1, y1, ...``) where Hugging Face keeps the halves (``x0, x1, ..., y0, y1, ...``).

    Args:
        weight: ``(n_heads * head_dim, in)`` in GGUF row order.
        n_heads: heads of this projection (``head_count`` for q, ``head_count_kv`` for k).

    Returns:
        The same matrix in Hugging Face row order (a new tensor).
    """
    rows = weight.shape[0]
    if n_heads <= 0 or rows % (2 * n_heads):
        raise SpectuneError(
            f"cannot un-permute a {tuple(weight.shape)} query/key weight over {n_heads} heads"
        )
    half = rows // n_heads // 2
    w = weight.reshape(n_heads, half, 2, *weight.shape[1:])  # (heads, d/2, 2, in)
    return w.transpose(1, 2).reshape(weight.shape).contiguous()  # (heads, 2, d/2, in) -> rows


class GGUFSource(WeightSource):
    """A ``.gguf`` file; see the module docstring for names, shapes and dequantization.

    Attributes:
        arch: ``general.architecture`` (e.g. ``"llama"``), or ``""``.
        metadata: the file's key/value fields (arrays longer than 64 entries, such as the
            vocabulary, are left out).
        gguf_tensors: name -> :class:`GGUFTensor` (type, offset, size of each tensor).
    """

    kind = "gguf"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if importlib.util.find_spec("gguf") is None:
            raise MissingDependencyError(
                f"reading {path} needs the gguf package; install it with: pip install gguf"
            )
        try:
            metadata, table = read_gguf_header(path)
        except SpectuneError:
            raise
        except Exception as exc:  # e.g. a shape that does not fit its quantization blocks
            raise SpectuneError(
                f"cannot read {path} as GGUF ({type(exc).__name__}: {exc}); the file is "
                "truncated, corrupt or not a GGUF file"
            ) from exc
        self.metadata: dict[str, Any] = metadata
        arch = metadata.get("general.architecture", "")
        self.arch: str = arch if isinstance(arch, str) else ""
        self.gguf_tensors: dict[str, GGUFTensor] = {t.name: t for t in table}
        infos = [
            make_info(
                t.name,
                t.shape,
                _PLAIN.get(t.qtype.name, "float32"),
                str(path),
                hf_name=gguf_to_hf_name(t.name, self.arch),
                quant=t.qtype.name,
            )
            for t in table
        ]
        self._set_infos(infos)

    def _heads(self, role: str) -> int | None:
        n_head = self.metadata.get(f"{self.arch}.attention.head_count")
        n_kv = self.metadata.get(f"{self.arch}.attention.head_count_kv", n_head)
        heads = n_head if role == "q" else n_kv
        return heads if isinstance(heads, int) else None

    def _load(self, info: TensorInfo, requested: str) -> torch.Tensor:
        import torch

        stored = self.gguf_tensors[info.name]
        try:
            array = _read(self.path, stored)
        except NotImplementedError as exc:
            raise SpectuneError(
                f"{self.path}: tensor {info.name!r} has type {info.quant}, which the installed "
                f"gguf package cannot dequantize ({exc}); upgrade gguf"
            ) from exc
        if info.dtype == "bfloat16":
            tensor = torch.from_numpy(array).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(array)
        tensor = tensor.reshape(info.shape)
        role = gguf_qk_role(info.name)
        if requested == info.hf_name and role is not None and self.arch in GGUF_PERMUTED_QK:
            heads = self._heads(role)
            if heads is not None:
                tensor = unpermute_qk(tensor, heads)
        return tensor

    def close(self) -> None:
        self.gguf_tensors = {}
        super().close()


def _read(path: Path | None, stored: GGUFTensor) -> np.ndarray:
    """Read one tensor's bytes and decode them: a fresh numpy array in torch shape order."""
    import numpy as np
    from gguf import quants

    assert path is not None
    raw = np.empty(stored.n_bytes, dtype=np.uint8)
    with open(path, "rb") as fh:
        fh.seek(stored.offset)
        got = fh.readinto(memoryview(raw))
    if got != stored.n_bytes:
        raise SpectuneError(
            f"{path}: tensor {stored.name!r} needs {stored.n_bytes} bytes at offset "
            f"{stored.offset} but only {got} could be read (the file was truncated)"
        )
    qtype = stored.qtype.name
    if qtype == "BF16":  # keep the bits; torch views them as bfloat16
        return raw.view(np.int16).reshape(stored.raw_shape[:-1] + (-1,))
    data = raw.view(stored.raw_dtype).reshape(stored.raw_shape)
    if qtype in _PLAIN:
        return data
    return quants.dequantize(data, stored.qtype)
