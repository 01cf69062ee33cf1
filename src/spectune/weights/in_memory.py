"""In-memory sources: an ``nn.Module`` (a ``PeftModel`` included) and a state dict.

Both list their tensors without copying them and hand out the live tensor (detached) on
:meth:`~spectune.weights.sources.WeightSource.load`; tensors sharing storage (tied weights)
are listed once. A module's layer types come from the owning module's class, and
bitsandbytes 4-bit / 8-bit weights are listed with their logical shape and dequantized on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from spectune.weights.sources import (
    TensorInfo,
    WeightSource,
    dtype_name,
    flatten_tensors,
    make_info,
    storage_identity,
)

if TYPE_CHECKING:
    import torch


class StateDictSource(WeightSource):
    """A ``dict[str, Tensor]`` (nested checkpoint dicts are flattened, see ``flatten_tensors``).

    Tensors sharing storage (tied weights) are listed once; the others go to ``aliases``.
    """

    kind = "state_dict"

    def __init__(self, state_dict: Mapping[str, Any]) -> None:
        super().__init__(None)
        tensors = flatten_tensors(state_dict)
        self._tensors: dict[str, Any] = {}
        seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], str], str] = {}
        infos = []
        for name, t in tensors.items():  # insertion order: the first of tied names is kept
            ident = storage_identity(t)
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


__all__ = ["ModuleSource", "StateDictSource"]
