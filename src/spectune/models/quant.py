"""Quantization workarounds: bitsandbytes 4-bit layers on the CPU.

Warning (QLoRA / QDoRA on CPU):
    On a CPU with AVX-512 BF16, a bitsandbytes ``Linear4bit`` layer in eval mode whose input
    does not require grad (an eval-mode ``torch.no_grad`` forward) repacks its quantized
    weight in place into a CPU inference layout; a LoRA model trained after that silently
    gets ``None`` gradients on every adapter weight. :func:`unpack_4bit_cpu_weights` undoes
    that (it calls ``model.state_dict()``: bitsandbytes unpacks the layout when it saves), and
    :func:`spectune.models.forward.eval_mode` calls it on exit, so every judging and
    generation function leaves a 4-bit model trainable (a test checks that adapter gradients
    still flow after an evaluation, bitsandbytes 0.50). Still, the safe order for a 4-bit
    model is: evaluate only after training, or evaluate a separate copy, and call
    :func:`unpack_4bit_cpu_weights` after any other no-grad forward.
"""

from __future__ import annotations

from typing import Any


def _4bit_layers(model: Any) -> list[Any]:
    """The bitsandbytes 4-bit linear layers of ``model`` (NF4 / FP4), found without importing
    bitsandbytes; peft's wrappers around them are not counted, only the layers themselves."""
    return [
        m
        for m in model.modules()
        if any(
            c.__name__ == "Linear4bit" and c.__module__.startswith("bitsandbytes")
            for c in type(m).__mro__
        )
    ]


def has_4bit_weights(model: Any) -> bool:
    """Whether ``model`` holds bitsandbytes 4-bit layers (a QLoRA / QDoRA base)."""
    return bool(_4bit_layers(model))


def unpack_4bit_cpu_weights(model: Any) -> int:
    """Undo bitsandbytes' CPU inference repacking of 4-bit weights, so training works again.

    See the module docstring: an eval-mode no-grad forward on the CPU repacks ``Linear4bit``
    weights, after which adapter gradients are ``None``. bitsandbytes restores the
    training layout whenever the model's state dict is taken, so this calls
    ``model.state_dict()`` when any layer is packed.

    Args:
        model: any model; one without packed 4-bit layers is left alone.

    Returns:
        How many layers were packed before the call.
    """
    packed = [
        m
        for m in _4bit_layers(model)
        if getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False)
    ]
    if packed:
        model.state_dict()
    return len(packed)
