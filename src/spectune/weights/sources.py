"""Lazy weight sources: list tensors without reading them, load one tensor at a time.

:func:`open_source` turns whatever the user passes (a module, a state dict, a file or folder
path) into a :class:`WeightSource`:

==========================================  ================  ================================
input                                       ``kind``          how one tensor is read
==========================================  ================  ================================
``nn.Module``                               ``"module"``      the live parameter
``PeftModel``                               ``"peft"``        the live parameter
``dict[str, Tensor]``                       ``"state_dict"``  the tensor in the dict
``*.safetensors`` / HF folder / shards      ``"safetensors"`` ``safe_open`` on its shard
``*.bin`` / ``*.pt`` / ``*.pth`` / shards   ``"bin"``         ``torch.load(weights_only, mmap)``
``*.gguf``                                  ``"gguf"``        positioned read, dequantized
PEFT adapter folder                         ``"peft"``        its safetensors / bin file
==========================================  ================  ================================

Every source lists its tensors as :class:`TensorInfo` records in natural name order
(``layers.2`` before ``layers.10``) and the same order for every kind, so a module, its saved
folder and its GGUF conversion list comparable rows. Opening a file source reads only headers
(and checks them: a truncated safetensors file fails at open, naming the file); tensor data is
read by :meth:`WeightSource.load`, one tensor at a time, from the one shard that holds it,
and no file stays mapped between loads, so resident memory stays at about one tensor however
large the checkpoint (measured: iterating a 768 MiB bf16 folder of 24 MiB matrices peaks ~80
MiB above the interpreter's baseline).

PEFT LoRA adapters are paired by :meth:`WeightSource.lora_pairs` (see
:mod:`spectune.weights.peft`).
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError
from spectune.weights.names import (
    LAYER_TYPES,
    infer_layer_type,
    natural_key,
    normalize_module_name,
    parse_lora_name,
    strip_param_suffix,
)

if TYPE_CHECKING:
    import torch

    from spectune.weights.peft import LoraPair

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
GGUF_SUFFIXES = (".gguf",)

#: Bytes read through one memory map of a .bin file before it is dropped (see TorchFileSource).
MAPPED_BYTES_BUDGET = 256 << 20
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

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
_WHAT_WORKS = (
    "pass an nn.Module, a state dict, a Hugging Face model folder, a .safetensors / .bin / .pt "
    "/ .gguf file or a PEFT adapter folder"
)


@dataclass(frozen=True)
class TensorInfo:
    """What a source knows about one tensor before reading it.

    Attributes:
        name: the tensor's name in its source (llama.cpp names for GGUF).
        shape: shape in torch order, e.g. ``(out_features, in_features)``; conv weights keep
            all their dimensions ``(out, in, kh, kw)``.
        dtype: torch dtype name of what :meth:`WeightSource.load` returns (``"bfloat16"``,
            ``"float32"`` for dequantized GGUF / 4-bit tensors...).
        file: the file holding the tensor, or ``None`` for in-memory sources.
        module: ``name`` without its trailing ``.weight`` / ``.bias``.
        layer_type: one of ``"linear"``, ``"conv2d"``, ``"conv1d"``, ``"embedding"``,
            ``"norm"``, ``"bias"``, ``"other"`` (non-float tensors and DoRA magnitudes are
            ``"other"``).
        hf_name: for GGUF tensors, the best-effort Hugging Face name
            (``model.layers.0.self_attn.q_proj.weight``), else ``None``.
        quant: storage format when the stored data is quantized or converted on load (GGUF
            type name such as ``"Q4_1"``, ``"F16"``; bitsandbytes ``"nf4"`` / ``"fp4"`` /
            ``"int8"``), else ``None``.
        lora: ``"A"`` / ``"B"`` / ``"magnitude"`` for PEFT LoRA factors and DoRA magnitude
            vectors, else ``None``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str | None
    module: str
    layer_type: str
    hf_name: str | None = None
    quant: str | None = None
    lora: str | None = None

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def key(self) -> str:
        """Normalized module name for matching across sources (see ``normalize_module_name``).

        Uses ``hf_name`` when there is one, so a GGUF tensor matches its Hugging Face twin.
        """
        return normalize_module_name(self.hf_name or self.name)

    @property
    def is_weight(self) -> bool:
        """Whether this is a float weight of at least two dimensions (not a LoRA factor)."""
        return self.layer_type in ("linear", "conv2d", "conv1d", "embedding") and self.lora is None


def make_info(
    name: str,
    shape: tuple[int, ...],
    dtype: str,
    file: str | None,
    *,
    layer_type: str | None = None,
    hf_name: str | None = None,
    quant: str | None = None,
) -> TensorInfo:
    """Build a :class:`TensorInfo`, inferring ``module``, ``lora`` and (if not given) the type."""
    lora_name = parse_lora_name(name)
    lora = lora_name.part if lora_name is not None else None
    if layer_type is None or lora is not None:
        layer_type = infer_layer_type(name, shape, dtype, lora)
    assert layer_type in LAYER_TYPES, layer_type
    return TensorInfo(
        name=name,
        shape=tuple(int(d) for d in shape),
        dtype=dtype,
        file=file,
        module=strip_param_suffix(name),
        layer_type=layer_type,
        hf_name=hf_name,
        quant=quant,
        lora=lora,
    )


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


class WeightSource:
    """A lazily read collection of named tensors; use :func:`open_source` to make one.

    Subclasses fill ``self._infos`` (name -> :class:`TensorInfo`) at open and implement
    :meth:`_load`. A source is a context manager; :meth:`close` releases file handles and
    memory maps, after which :meth:`load` raises.

    Attributes:
        kind: ``"module"``, ``"state_dict"``, ``"safetensors"``, ``"bin"``, ``"gguf"`` or
            ``"peft"`` (an adapter folder or a ``PeftModel``).
        path: the file or folder opened, or ``None`` for in-memory sources.
        peft: whether LoRA pairing is on (``peft=True`` or an adapter auto-detected).
        peft_configs: adapter name -> LoRA config as a plain dict (``adapter_config.json`` or
            ``PeftModel.peft_config``); empty when there is none.
        aliases: names left out of :meth:`tensors` because they share storage with a listed
            tensor (tied weights such as ``lm_head.weight``), mapped to the listed name.
    """

    kind: str = "?"

    def __init__(self, path: Path | None = None) -> None:
        self.path: Path | None = path
        self.peft: bool = False
        self.peft_configs: dict[str, dict[str, Any]] = {}
        self.aliases: dict[str, str] = {}
        self._infos: dict[str, TensorInfo] = {}
        self._hf_names: dict[str, str] = {}
        self._weight_index: dict[str, TensorInfo] | None = None
        self._pairs: list[LoraPair] | None = None
        self._closed = False

    # -- listing --------------------------------------------------------------------------

    def _set_infos(self, infos: list[TensorInfo]) -> None:
        if not infos:
            raise SpectuneError(f"{self._label()} holds no tensors; {_WHAT_WORKS} with weights")
        infos.sort(key=lambda info: natural_key(info.name))
        self._infos = {info.name: info for info in infos}
        self._hf_names = {info.hf_name: info.name for info in infos if info.hf_name}

    def tensors(self) -> list[TensorInfo]:
        """All tensors, in natural name order, without reading any tensor data."""
        return list(self._infos.values())

    def names(self) -> list[str]:
        """Tensor names in the order of :meth:`tensors`."""
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        """The :class:`TensorInfo` of ``name`` (a GGUF source also takes the ``hf_name``).

        Raises:
            SpectuneError: no tensor of that name.
        """
        info = self._infos.get(name)
        if info is None and name in self._hf_names:
            info = self._infos[self._hf_names[name]]
        if info is None and name in self.aliases:
            info = self._infos[self.aliases[name]]
        if info is None:
            tail = ".".join(name.split(".")[-2:])
            near = [n for n in self._infos if n.endswith(tail)][:3]
            hint = f"; similar: {', '.join(near)}" if near else ""
            raise SpectuneError(f"{self._label()} has no tensor {name!r}{hint}")
        return info

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name in self._infos or name in self._hf_names or name in self.aliases
        )

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors())

    def find_weight(self, module: str) -> TensorInfo | None:
        """The weight matrix of a (normalized) module name, e.g. to match an adapter's base.

        ``module`` is compared with :attr:`TensorInfo.key`, so a PEFT module name such as
        ``model.layers.0.self_attn.q_proj`` finds ``model.layers.0.self_attn.q_proj.weight``
        in a Hugging Face source and ``blk.0.attn_q.weight`` in a GGUF source.

        Returns:
            The matching non-LoRA weight of two or more dimensions, or ``None``.
        """
        if self._weight_index is None:
            self._weight_index = {}
            for info in self._infos.values():
                if info.is_weight:
                    self._weight_index.setdefault(info.key, info)
        return self._weight_index.get(normalize_module_name(module))

    # -- loading --------------------------------------------------------------------------

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor onto the CPU, dequantized when it is stored quantized.

        Quantized GGUF and bitsandbytes weights come back as float32; ``float16`` /
        ``bfloat16`` / ``float32`` tensors keep their stored dtype. Only that tensor is read (and only its file opened). File sources return a fresh
        tensor; in-memory sources return the live tensor (detached), so do not modify the
        result in place.

        Args:
            name: a name from :meth:`tensors` (or a GGUF tensor's ``hf_name``).

        Returns:
            The tensor, shape ``info.shape``, dtype ``info.dtype``.

        Raises:
            SpectuneError: unknown name, the source is closed, or the file cannot be read.
        """
        info = self.info(name)
        if self._closed:
            raise SpectuneError(f"{self._label()} is closed; open it again to load {name!r}")
        return self._load(info, name)

    def _load(self, info: TensorInfo, requested: str) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # -- PEFT -----------------------------------------------------------------------------

    def lora_pairs(self) -> list[LoraPair]:
        """LoRA ``A`` / ``B`` pairs matched by module name (see :mod:`spectune.weights.peft`).

        Raises:
            SpectuneError: no LoRA tensors, an ``A`` without ``B`` (or the reverse),
                mismatched ranks, or no config to take the scaling from.
        """
        from spectune.weights.peft import pair_lora

        if self._pairs is None:
            self._pairs = pair_lora(self)
        return list(self._pairs)

    def _live_lora(self, module: str, adapter: str) -> dict[str, Any] | None:
        """Live ``r`` / ``lora_alpha`` / ``scaling`` of a LoRA layer (module sources only)."""
        return None

    def load_pair(self, pair: LoraPair) -> tuple[torch.Tensor, torch.Tensor]:
        """The two factors of a pair as matrices, oriented like the base weight.

        Returns:
            ``(B, A)`` with ``B`` of shape ``(out, r)`` and ``A`` of shape ``(r, in)`` such that
            ``Delta W = pair.scaling * B @ A`` has shape ``pair.shape``, the base weight's
            (2-d) shape. For embeddings and ``fan_in_fan_out`` layers, where PEFT adds
            ``(B_peft A_peft)^T``, the factors come back transposed and swapped; conv factors
            are flattened to ``(out, r)`` and ``(r, in * kernel)``.
        """
        a = self.load(pair.name_A)
        b = self.load(pair.name_B)
        a2 = a.reshape(pair.r, -1)  # (r, in * kernel)
        b2 = b.reshape(b.shape[0], pair.r)  # (out, r); conv B is (out, r, 1, 1)
        if pair.transposed:
            return a2.T, b2.T
        return b2, a2

    def load_delta(
        self, pair: LoraPair, *, scaled: bool = True, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The dense update ``Delta W`` of a pair, in the base weight's shape (``base_shape``).

        Forms the full ``out x in`` product: meant for small matrices, tests and
        ``W + Delta W``; spectra of ``Delta W`` are cheaper from :meth:`load_pair`.

        Args:
            pair: a pair from :meth:`lora_pairs`.
            scaled: multiply by ``pair.scaling`` (PEFT's effective update).
            dtype: dtype of the product (default ``torch.float32``).
        """
        import torch

        b, a = self.load_pair(pair)
        dtype = dtype or torch.float32
        delta = b.to(dtype) @ a.to(dtype)
        if scaled:
            delta = delta * pair.scaling
        return delta.reshape(pair.base_shape)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Release file handles and memory maps; later :meth:`load` calls raise."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _label(self) -> str:
        return str(self.path) if self.path is not None else f"the {self.kind} source"

    def __repr__(self) -> str:
        where = f" {str(self.path)!r}" if self.path is not None else ""
        peft = ", peft" if self.peft else ""
        return f"<{type(self).__name__} {self.kind}{where}: {len(self)} tensors{peft}>"


# =============================================================================================
# In-memory sources
# =============================================================================================


def _flatten_tensors(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Tensors of a (possibly nested) checkpoint dict, with dotted names.

    A dict whose values are all tensors is returned as is. A training checkpoint
    (``{"state_dict": {...}, "epoch": 3, ...}``) gives its ``state_dict`` / ``model`` /
    ``module`` entry when that is a dict of tensors; otherwise every tensor leaf of nested
    dicts is collected (``{"a": {"b": t}}`` -> ``a.b``).
    """
    import torch

    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in ("state_dict", "model_state_dict", "model", "module"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            if all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, torch.Tensor):
            out[prefix] = node
        elif isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)

    walk("", obj)
    return out


class StateDictSource(WeightSource):
    """A ``dict[str, Tensor]`` (nested checkpoint dicts are flattened, see ``_flatten_tensors``).

    Tensors sharing storage (tied weights) are listed once; the others go to ``aliases``.
    """

    kind = "state_dict"

    def __init__(self, state_dict: Mapping[str, Any]) -> None:
        super().__init__(None)
        tensors = _flatten_tensors(state_dict)
        self._tensors: dict[str, Any] = {}
        seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], str], str] = {}
        infos = []
        for name, t in tensors.items():  # insertion order: the first of tied names is kept
            ident = _storage_identity(t)
            if ident is not None and ident in seen:
                self.aliases[name] = seen[ident]
                continue
            if ident is not None:
                seen[ident] = name
            self._tensors[name] = t
            infos.append(make_info(name, tuple(t.shape), dtype_name(t.dtype), None))
        self._set_infos(infos)

    def _load(self, info: TensorInfo, requested: str) -> torch.Tensor:
        return self._tensors[info.name].detach().cpu()

    def close(self) -> None:
        self._tensors = {}
        super().close()


def _storage_identity(t: Any) -> tuple[int, int, tuple[int, ...], tuple[int, ...], str] | None:
    """(data pointer, offset, shape, stride, dtype) of a tensor, or None for meta/empty ones."""
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    if ptr == 0:
        return None
    return (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), str(t.dtype))


def _module_layer_type(module: Any, param_name: str, shape: tuple[int, ...]) -> str | None:
    """Layer type from the owning module's class, or ``None`` to fall back to name rules."""
    import torch.nn as nn

    if param_name == "bias" and len(shape) == 1:
        return "bias"
    if param_name != "weight":
        return None
    cls = type(module).__name__
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return "conv2d"
    if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
        return "conv1d"
    if isinstance(module, nn.Linear) or cls == "Conv1D":  # transformers' GPT-2 Conv1D
        return "linear"
    if "Norm" in cls and len(shape) == 1:
        return "norm"
    return None


class ModuleSource(WeightSource):
    """The parameters and persistent buffers of an ``nn.Module`` (e.g. a ``PeftModel``).

    Names are the module's ``state_dict`` names. Layer types come from the owning module's
    class (``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding``, ``*Norm``...). Tied parameters are
    listed once (``aliases`` has the rest). bitsandbytes 4-bit (``Params4bit``) and 8-bit
    (``Int8Params``) weights are reported with their logical shape and dequantized on load.
    For live LoRA layers the pairing reads ``r`` and ``scaling`` from the layer itself.
    """

    kind = "module"

    def __init__(self, module: Any) -> None:
        super().__init__(None)
        self._module = module
        self._tensors: dict[str, Any] = {}
        self._owners: dict[str, Any] = {}
        seen: dict[int, str] = {}
        infos = []
        for mod_name, mod in module.named_modules(remove_duplicate=False):
            persistent = [
                (n, b)
                for n, b in mod._buffers.items()
                if b is not None and n not in getattr(mod, "_non_persistent_buffers_set", ())
            ]
            for pname, t in [*mod._parameters.items(), *persistent]:
                if t is None:
                    continue
                name = f"{mod_name}.{pname}" if mod_name else pname
                if name in self._tensors or name in self.aliases:
                    continue
                if id(t) in seen:
                    self.aliases[name] = seen[id(t)]
                    continue
                seen[id(t)] = name
                shape, dtype, quant = _logical_shape(t)
                self._tensors[name] = t
                self._owners[name] = mod
                layer_type = _module_layer_type(mod, pname, shape)
                if layer_type is not None and dtype.startswith(("int", "uint", "bool")):
                    layer_type = "other"
                infos.append(
                    make_info(name, shape, dtype, None, layer_type=layer_type, quant=quant)
                )
        self._set_infos(infos)

    def _load(self, info: TensorInfo, requested: str) -> torch.Tensor:
        t = self._tensors[info.name]
        if info.quant is not None:
            return _dequantize_bnb(t, info)
        return t.detach().cpu()

    def _live_lora(self, module: str, adapter: str) -> dict[str, Any] | None:
        try:
            layer = self._module.get_submodule(module)
        except AttributeError:
            return None
        scaling = getattr(layer, "scaling", None)
        if not isinstance(scaling, dict) or adapter not in scaling:
            return None
        r = getattr(layer, "r", {}).get(adapter)
        alpha = getattr(layer, "lora_alpha", {}).get(adapter)
        rslora = getattr(layer, "use_rslora", {})
        return {
            "r": r,
            "lora_alpha": alpha,
            "scaling": float(scaling[adapter]),
            "use_rslora": bool(rslora.get(adapter, False)) if isinstance(rslora, dict) else False,
            "fan_in_fan_out": bool(getattr(layer, "fan_in_fan_out", False)),
        }

    def close(self) -> None:
        self._tensors = {}
        self._owners = {}
        self._module = None
        super().close()


def _logical_shape(t: Any) -> tuple[tuple[int, ...], str, str | None]:
    """(shape, dtype name, quant) of a parameter, seeing through bitsandbytes packing."""
    cls = type(t).__name__
    state = getattr(t, "quant_state", None)
    if cls == "Params4bit" and state is not None:
        return tuple(state.shape), dtype_name(state.dtype), str(state.quant_type)
    if cls == "Int8Params" and getattr(t, "SCB", None) is not None:
        return tuple(t.shape), "float32", "int8"
    return tuple(t.shape), dtype_name(t.dtype), None


def _dequantize_bnb(t: Any, info: TensorInfo) -> torch.Tensor:
    """Dequantize a bitsandbytes 4-bit or 8-bit weight to its float matrix."""
    import bitsandbytes.functional as bnbf

    if info.quant == "int8":  # rows scaled by their absmax / 127 (SCB holds the absmax)
        return bnbf.int8_vectorwise_dequant(t.data, t.SCB).float().cpu().reshape(info.shape)

    return bnbf.dequantize_4bit(t.data, t.quant_state).detach().cpu().reshape(info.shape)


# =============================================================================================
# safetensors
# =============================================================================================


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
            _check_index(expected, self._file_of, index_file)
        self._set_infos(infos)

    def _load(self, info: TensorInfo, requested: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self._file_of[info.name]
        if file not in self.opened_files:
            self.opened_files.append(file)
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                return handle.get_tensor(info.name)  # an owned copy: valid after closing
        except Exception as exc:  # safetensors raises its own error types
            raise SpectuneError(f"cannot read tensor {info.name!r} from {file}: {exc}") from exc


def _check_index(
    expected: Mapping[str, str], found: Mapping[str, Path], index: Path | None
) -> None:
    """Every tensor an index lists must be in the shard it names."""
    for name, shard in expected.items():
        where = found.get(name)
        if where is None or where.name != Path(shard).name:
            got = f"found in {where.name}" if where is not None else "in no shard"
            raise SpectuneError(
                f"{index} lists tensor {name!r} in {shard}, but it is {got}; the index does not "
                "match the shards (re-download or re-save the model)"
            )


# =============================================================================================
# torch .bin / .pt
# =============================================================================================


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
    import pickletools
    from contextlib import ExitStack

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
        g for g in found
        if (g not in allowed if allowed else not g.startswith(("torch.", "collections.")))
    ]  # fmt: skip
    return list(dict.fromkeys(refused))


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


def _torch_load(path: Path, *, map_location: str = "cpu", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a SpectuneError."""
    import warnings

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
        what = f"a pickled {refused[0]}" if len(refused) == 1 else (
            "pickled objects (" + ", ".join(refused[:4]) + ("..." if len(refused) > 4 else "") + ")"
        )  # fmt: skip
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
            content = _torch_load(file, map_location="meta")
            if not isinstance(content, Mapping):
                raise SpectuneError(
                    f"{file} holds a {type(content).__name__}, not a dict of tensors; save a "
                    "state dict (torch.save(model.state_dict(), ...))"
                )
            tensors = _flatten_tensors(content)
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
            _check_index(expected, self._file_of, index_file)
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
            raw = _torch_load(file, mmap=True) if zipped else _torch_load(file)
            self._current = (file, _flatten_tensors(raw))
        assert self._current is not None
        self._read_through += nbytes
        return self._current[1][info.name].detach().clone()

    def close(self) -> None:
        self._current = None
        super().close()


def _itemsize(dtype: str) -> int:
    import torch

    return getattr(torch, dtype).itemsize


# =============================================================================================
# Resolving paths
# =============================================================================================


__all__ = [
    "ModuleSource",
    "SafetensorsSource",
    "StateDictSource",
    "TensorInfo",
    "TorchFileSource",
    "WeightSource",
    "make_info",
    "safetensors_problem",
]
