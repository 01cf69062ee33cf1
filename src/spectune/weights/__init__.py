"""Where weight matrices come from: lazy sources and PEFT adapter pairing.

>>> with open_source("path/to/model") as src:          # doctest: +SKIP
...     for info in src.tensors():                      # names, shapes, types; no data read
...         if info.layer_type == "linear":
...             W = src.load(info.name)                 # one tensor, CPU, float dtype

Sources: ``nn.Module`` / ``PeftModel``, state dicts, Hugging Face folders (single or sharded
safetensors, ``pytorch_model*.bin``), single ``.safetensors`` / ``.bin`` / ``.pt`` files,
``.gguf`` files and PEFT adapter folders. See :func:`open_source`.

Modules: ``names`` (tensor-name rules, GGUF-to-HF names), ``sources`` (:class:`TensorInfo`,
the :class:`WeightSource` base class), one module per kind of source (``in_memory``: module and
state dict; ``safetensors``; ``torchfile``: .bin / .pt read weights-only; ``gguf``), ``peft``
(adapter configs and LoRA pairing) and ``formats`` (detecting a path's format and opening the
right source). Importing this package does not import torch: a source imports it when it
reads a tensor.
"""

from spectune.weights.formats import open_source
from spectune.weights.names import gguf_to_hf_name, natural_key, normalize_module_name
from spectune.weights.peft import LoraPair, lora_scaling, pattern_key, read_lora_config
from spectune.weights.sources import TensorInfo, WeightSource

__all__ = [
    "LoraPair",
    "TensorInfo",
    "WeightSource",
    "gguf_to_hf_name",
    "lora_scaling",
    "natural_key",
    "normalize_module_name",
    "open_source",
    "pattern_key",
    "read_lora_config",
]
