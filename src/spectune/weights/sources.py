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

This module holds what every source shares: :class:`TensorInfo`, the :class:`WeightSource`
base class and the checkpoint-dict helpers. The sources themselves live one kind per module:
:mod:`.in_memory` (module, state dict), :mod:`.safetensors`, :mod:`.torchfile` (.bin / .pt)
and :mod:`.gguf`; none imports another, and :mod:`.formats` chooses between them.
"""

from __future__ import annotations

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
from spectune.weights.peft import LoraPair, pair_lora

if TYPE_CHECKING:
    import torch

WHAT_WORKS = (
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
            raise SpectuneError(f"{self._label()} holds no tensors; {WHAT_WORKS} with weights")
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


# -- checkpoint dicts and shard indexes (shared by the in-memory and file sources) -------------


def flatten_tensors(obj: Mapping[str, Any]) -> dict[str, Any]:
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


def storage_identity(t: Any) -> tuple[int, int, tuple[int, ...], tuple[int, ...], str] | None:
    """(data pointer, offset, shape, stride, dtype) of a tensor, or None for meta/empty ones."""
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    if ptr == 0:
        return None
    return (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), str(t.dtype))


def check_index(expected: Mapping[str, str], found: Mapping[str, Path], index: Path | None) -> None:
    """Every tensor an index lists must be in the shard it names (``found``: tensor -> file)."""
    for name, shard in expected.items():
        where = found.get(name)
        if where is None or where.name != Path(shard).name:
            got = f"found in {where.name}" if where is not None else "in no shard"
            raise SpectuneError(
                f"{index} lists tensor {name!r} in {shard}, but it is {got}; the index does not "
                "match the shards (re-download or re-save the model)"
            )


__all__ = [
    "TensorInfo",
    "WeightSource",
    "WHAT_WORKS",
    "check_index",
    "dtype_name",
    "flatten_tensors",
    "make_info",
    "storage_identity",
]
