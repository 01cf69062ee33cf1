"""Which format a path holds, and opening it as the right :class:`WeightSource`.

Format detection lives here, above the sources it chooses between, so that no source module
imports another: :mod:`.in_memory` (module, state dict), :mod:`.safetensors`,
:mod:`.torchfile` (.bin / .pt) and :mod:`.gguf` each import only downwards, to
:mod:`.sources` (the base class), :mod:`.peft` (LoRA pairing) and :mod:`.names`.

``open_source`` picks by what it is given: an ``nn.Module`` (a ``PeftModel`` detected), a
state dict, or a path. A folder is read as a PEFT adapter when it holds ``adapter_config.json``
or ``adapter_model.*``, else as a Hugging Face model folder (index, single file, shards, a
single ``.gguf`` or ``.bin``); a file by its suffix, and by its first bytes when the suffix says
nothing (``GGUF`` magic, a zip or pickle for torch, a safetensors header).
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spectune.errors import SpectuneError
from spectune.weights.gguf import GGUFSource
from spectune.weights.in_memory import ModuleSource, StateDictSource
from spectune.weights.names import natural_key
from spectune.weights.peft import ADAPTER_CONFIG, find_adapter_config, read_lora_config
from spectune.weights.safetensors import SafetensorsSource
from spectune.weights.sources import WHAT_WORKS, WeightSource
from spectune.weights.torchfile import TorchFileSource

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
GGUF_SUFFIXES = (".gguf",)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` (tensor -> shard file name) of a ``*.index.json`` file."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise TypeError("weight_map is not a mapping of tensor names to file names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpectuneError(
            f"cannot read the shard index {index}: {exc}; it needs a 'weight_map' of tensor "
            "names to shard files"
        ) from exc
    if not weight_map:
        raise SpectuneError(f"the shard index {index} lists no tensors")
    return weight_map


def _open_index(index: Path) -> WeightSource:
    weight_map = _read_index(index)
    folder = index.parent
    shards = sorted(set(weight_map.values()), key=natural_key)
    files = []
    for shard in shards:
        file = folder / shard
        if not file.is_file():
            raise SpectuneError(
                f"{index} lists the shard {shard}, which is missing from {folder}; copy every "
                "shard the index names"
            )
        files.append(file)
    if all(s.endswith(SAFETENSORS_SUFFIXES) for s in shards):
        return SafetensorsSource(files, folder, expected=weight_map, index_file=index)
    if all(s.endswith(TORCH_SUFFIXES) for s in shards):
        return TorchFileSource(files, folder, expected=weight_map, index_file=index)
    raise SpectuneError(f"{index} mixes shard formats ({', '.join(shards[:4])}); cannot read it")


def _sniff(path: Path) -> str | None:
    """Format of a file by its first bytes: ``"gguf"``, ``"torch"``, ``"safetensors"``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return None
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < (100 << 20):
            return "safetensors"
    if head[:1] == b"\x80":  # a pickle protocol marker: legacy torch.save format
        return "torch"
    return None


def _open_file(path: Path, label: Path | None = None) -> WeightSource:
    """Open one file; ``label`` (the folder it was found in) becomes the source's ``path``."""
    where = label or path
    if path.name.endswith(".index.json"):
        return _open_index(path)
    suffix = path.suffix.lower()
    fmt = {
        **dict.fromkeys(SAFETENSORS_SUFFIXES, "safetensors"),
        **dict.fromkeys(TORCH_SUFFIXES, "torch"),
        **dict.fromkeys(GGUF_SUFFIXES, "gguf"),
    }.get(suffix) or _sniff(path)
    if fmt == "safetensors":
        return SafetensorsSource([path], where)
    if fmt == "torch":
        return TorchFileSource([path], where)
    if fmt == "gguf":
        return GGUFSource(path)
    raise SpectuneError(
        f"unknown weights format: {path} (expected .safetensors, .bin, .pt, .pth, .gguf or a "
        f"*.index.json); {WHAT_WORKS}"
    )


def _open_folder(folder: Path) -> WeightSource:
    if (folder / ADAPTER_CONFIG).is_file() or any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
        return open_adapter_folder(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).is_file():
            return _open_index(folder / index_name)
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return _open_file(folder / single, folder)
    indexes = sorted(folder.glob("*.index.json"))
    if len(indexes) == 1:
        return _open_index(indexes[0])
    st = sorted(folder.glob("*.safetensors"), key=lambda p: natural_key(p.name))
    if st:
        return SafetensorsSource(st, folder)
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return _open_file(ggufs[0], folder)
    bins = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in TORCH_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )
    if len(bins) == 1:
        return _open_file(bins[0], folder)
    adapters = sorted(p for p in folder.iterdir() if (p / ADAPTER_CONFIG).is_file())
    if adapters:  # peft saves adapters other than "default" in sub-folders named after them
        raise SpectuneError(
            f"{folder} holds PEFT adapters in sub-folders; open one of them: "
            + ", ".join(str(p) for p in adapters[:4])
        )
    found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
    raise SpectuneError(
        f"no weights found in the folder {folder} (it holds: {found}); expected "
        "model.safetensors, model-0000x-of-0000y.safetensors with model.safetensors.index.json, "
        "pytorch_model.bin, a single .gguf, or adapter_config.json + adapter_model.safetensors"
    )


def _is_peft_model(obj: Any) -> bool:
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(obj, peft.PeftModel)


def open_source(
    source: Any,
    peft: bool = False,
    *,
    lora_config: Mapping[str, Any] | str | os.PathLike[str] | Any | None = None,
) -> WeightSource:
    """Open weights from wherever they are, lazily.

    Args:
        source: an ``nn.Module`` (a ``PeftModel`` is detected), a state dict
            (``dict[str, Tensor]``), a :class:`WeightSource` (returned as is), or a path to:
            a Hugging Face model folder (``model.safetensors``, sharded
            ``model-0000x-of-0000y.safetensors`` + ``model.safetensors.index.json``,
            ``pytorch_model.bin``, sharded ``pytorch_model-*.bin`` + index), a single
            ``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth`` file, a shard ``*.index.json``, a
            ``.gguf`` file or a PEFT adapter folder (``adapter_config.json`` +
            ``adapter_model.safetensors`` or ``adapter_model.bin``).
        peft: turn on LoRA pairing (:meth:`WeightSource.lora_pairs`). Adapter folders and
            ``PeftModel`` objects turn it on by themselves.
        lora_config: the LoRA config for a state dict or a lone adapter file that has no
            ``adapter_config.json`` beside it: a dict, a ``peft.LoraConfig`` or a path to an
            ``adapter_config.json``.

    Returns:
        The open source (a context manager; ``close()`` releases file handles).

    Raises:
        SpectuneError: missing path, unknown format, truncated or corrupt file, a pickle that
            is not weights-only loadable, an invalid adapter config, or no tensors at all.
    """
    if isinstance(source, WeightSource):
        if peft:
            source.peft = True
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise SpectuneError(f"no such file or folder: {path}; {WHAT_WORKS}")
        opened = _open_folder(path) if path.is_dir() else _open_file(path)
    else:
        opened = _open_object(source)
    if lora_config is not None:
        opened.peft_configs = {"default": read_lora_config(lora_config)}
        opened.peft = True
    if peft:
        opened.peft = True
        if not opened.peft_configs and opened.path is not None and opened.kind != "gguf":
            found = find_adapter_config(opened.path)
            if found is not None:
                opened.peft_configs = {"default": found}
    return opened


def _open_object(source: Any) -> WeightSource:
    import torch  # here, not at the top: importing spectune.weights stays torch-free

    if isinstance(source, torch.nn.Module):
        opened: WeightSource = ModuleSource(source)
        if _is_peft_model(source):
            opened.kind = "peft"
            opened.peft = True
            opened.peft_configs = {
                name: read_lora_config(cfg) for name, cfg in source.peft_config.items()
            }
        return opened
    if isinstance(source, Mapping):
        if not source:
            raise SpectuneError(f"the state dict is empty; {WHAT_WORKS} with weights")
        bad = [k for k in source if not isinstance(k, str)]
        if bad:
            raise SpectuneError(f"state dict keys must be strings, got {bad[0]!r}")
        return StateDictSource(source)
    raise SpectuneError(f"cannot read weights from a {type(source).__name__}; {WHAT_WORKS}")


def open_adapter_folder(folder: Path) -> WeightSource:
    """Open a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.*``).

    Raises:
        SpectuneError: the config is missing or invalid, or there is no weights file.
    """
    config_path = folder / ADAPTER_CONFIG
    weights = [folder / n for n in ADAPTER_WEIGHTS]
    present = [w for w in weights if w.is_file()]
    if not config_path.is_file():
        raise SpectuneError(
            f"{folder} has {present[0].name if present else 'adapter weights'} but no "
            f"{ADAPTER_CONFIG}; copy the {ADAPTER_CONFIG} saved with the adapter into the folder "
            "(the LoRA scaling comes from it)"
        )
    config = read_lora_config(config_path)
    if not present:
        raise SpectuneError(
            f"{folder} has {ADAPTER_CONFIG} but no adapter_model.safetensors or "
            "adapter_model.bin; copy the adapter weights saved by peft into the folder"
        )
    file = present[0]
    source: WeightSource
    if file.suffix == ".safetensors":
        source = SafetensorsSource([file], folder)
    else:
        source = TorchFileSource([file], folder)
    source.weights_format = source.kind  # type: ignore[attr-defined]
    source.kind = "peft"
    source.peft = True
    source.peft_configs = {"default": config}
    return source


__all__ = ["open_adapter_folder", "open_source"]
