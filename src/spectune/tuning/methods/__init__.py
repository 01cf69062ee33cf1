"""The fine-tuning methods: one module each, registered by name.

==========  ========================================================================  ==========
method      what trains                                                               module
==========  ========================================================================  ==========
lora        peft LoRA: Delta W = (lora_alpha / r) B A on every target Linear          lora.py
rslora      LoRA with rank-stabilized scaling lora_alpha / sqrt(r)                    lora.py
dora        peft DoRA: LoRA direction plus a trained magnitude per output             dora.py
qlora       LoRA on a bitsandbytes 4-bit NF4 base (double quantization)               qlora.py
qdora       DoRA on the same 4-bit base                                               qlora.py
pissa       LoRA initialised from the top-r SVD of W (peft PiSSA), residual base      pissa.py
olora       LoRA initialised from a QR decomposition of W (peft OLoRA)                olora.py
shira       peft SHiRA: a sparse trainable delta at r (in + out) random positions     shira.py
oft         peft OFT: W R x, R a trained block-diagonal rotation (blocks of size b)   oft.py
frog        spectune FROG: a sparse delta on the top-relevance weights                frog/
spectrum    whole matrices with the top SNR of their singular values (Spectrum)       spectrum.py
full        every parameter (the reference)                                           full.py
==========  ========================================================================  ==========

How the LoRA family's A and B start is a setting, ``lora.init`` (:mod:`.lora_init`: gaussian,
pissa, olora, orthogonal, eva, corda, lora_ga); pissa and olora are lora with it fixed.

A method is an instance of :class:`~spectune.tuning.methods.base.Method` registered with
:func:`register_method`; the registry is the only place that knows method names. An
out-of-tree method::

    import spectune as st
    from spectune.tuning.methods.base import Built, Method

    class NormsAndBiases(Method):
        description = "train only the norm weights and biases"
        uses_target_modules = False

        def build(self, ctx, model):
            for name, p in model.named_parameters():
                p.requires_grad_(p.ndim == 1)
            return Built(model)

    st.register_method("norms", NormsAndBiases())
    st.tune(st.load_config(None, ["method=norms"]), out="results/norms")

The default hooks save the trainable tensors, load them back, and analyze W - W_base; the
memory estimate (``spectune memory``) and ``spectune methods norms --model M`` count what it
trains by building it on the meta-device model. Nothing outside this package names a method:
what the memory estimate, the demo and ``spectune methods`` need comes through the hooks of
:class:`~spectune.tuning.methods.base.Method` (``trainable_count``, ``memory_terms``, ``plan``).
"""

from __future__ import annotations

from spectune.tuning.methods.base import (
    BuildContext,
    Built,
    Method,
    SpectraInput,
    count_parameters,
    load_float_base,
    meta_model,
)
from spectune.tuning.registry import Registry

#: modules that register the built-in methods when imported
BUILTIN_MODULES = tuple(
    f"spectune.tuning.methods.{m}"
    for m in (
        "lora",
        "dora",
        "qlora",
        "pissa",
        "olora",
        "shira",
        "oft",
        "frog.method",
        "spectrum",
        "full",
    )
)

#: config keys that are not sections (a method may not name a section after them)
RESERVED_KEYS = (
    "model",
    "method",
    "objective",
    "seed",
    "output_dir",
    "target_modules",
    "exclude_modules",
    "data",
    "eval",
    "train",
    "r",
    "lora_alpha",
    "lora_dropout",
)

METHODS = Registry("method", Method, BUILTIN_MODULES, RESERVED_KEYS)


def register_method(name: str, spec: Method) -> Method:
    """Register a fine-tuning method under ``name`` (see the module docstring).

    Raises:
        SpectuneError: the name is taken, or ``spec`` is not a :class:`Method`.
    """
    return METHODS.register(name, spec)


def unregister_method(name: str) -> None:
    """Remove a registered method."""
    METHODS.unregister(name)


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name lists the registered ones."""
    return METHODS.get(name)


def methods() -> dict[str, str]:
    """Registered methods: name -> one-line description."""
    return METHODS.describe()


__all__ = [
    "METHODS",
    "BuildContext",
    "Built",
    "Method",
    "SpectraInput",
    "count_parameters",
    "get_method",
    "load_float_base",
    "meta_model",
    "methods",
    "register_method",
    "unregister_method",
]
