"""Full fine-tuning: every parameter trains (the reference the PEFT methods are judged by).

The "adapter" is the whole model and its tokenizer (``from_pretrained`` reads it); its
spectra are those of W_tuned - W_base for every matrix, with the rank that holds 90% of the
update's energy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM

from spectune.tuning.methods import register_method
from spectune.tuning.methods.base import BuildContext, Built, MemoryTerms, Method, count_parameters

if TYPE_CHECKING:
    from torch import nn


class FullMethod(Method):
    """Every parameter trainable; saves the whole model."""

    description = "full fine-tuning: every parameter (the reference)"
    uses_target_modules = False
    trains_everything = True
    trains_new_tokens = True  # the embeddings train with everything else
    shardable = True  # every weight is a plain parameter: what FSDP was made for

    def build(self, ctx: BuildContext, model: nn.Module) -> Built:
        model.requires_grad_(True)
        dtype = next(model.parameters()).dtype
        notes = (
            []
            if dtype.is_floating_point and dtype.itemsize >= 4
            else [
                f"full fine-tuning updates the {str(dtype).removeprefix('torch.')} weights in place "
                "(no float32 master copy): updates smaller than the dtype's resolution round away; "
                "model_dtype=float32 avoids that"
            ]
        )
        return Built(model, notes=notes)

    def trainable_count(self, ctx: BuildContext, model: nn.Module) -> int:
        return count_parameters(model)[1]

    def memory_terms(self, ctx: BuildContext, model: nn.Module) -> MemoryTerms:
        """Every weight trains in place, in its own dtype."""
        return MemoryTerms(self.trainable_count(ctx, model), in_place=True)

    def save(self, built: Built, folder: Path) -> None:
        built.model.save_pretrained(folder)
        if built.tokenizer is not None:
            built.tokenizer.save_pretrained(folder)

    def load(self, ctx: BuildContext, base: nn.Module, folder: Path) -> nn.Module:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


register_method("full", FullMethod())

__all__ = ["FullMethod"]
