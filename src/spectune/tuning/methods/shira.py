"""SHiRA (Bhardwaj et al. 2024) through peft: a sparse high-rank adapter.

Each target Linear gets r (in + out) trainable weights (LoRA's count at the same r) at fixed
positions chosen by a mask, here peft's random mask seeded by the run seed; the delta is that
sparse matrix, added to W. It is the nearest published peer of FROG, which picks the positions
by SVD relevance and splits the budget by matrix importance instead.

The adapter is peft's (indices and values), loads with ``PeftModel.from_pretrained`` and
merges with ``merge_and_unload()``. Its spectra are those of the dense delta of each target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune import _check as check
from spectune.tuning.methods import register_method
from spectune.tuning.methods.base import (
    BuildContext,
    Built,
    MemoryTerms,
    PeftMethod,
    SpectraInput,
    meta_model,
    target_modules,
)
from spectune.tuning.methods.lora import lora_trainable

if TYPE_CHECKING:
    from torch import nn

    from spectune.tuning.config import TuneConfig


@dataclass
class ShiraSection:
    """The ``shira:`` section."""

    r: int = field(
        default=8,
        metadata={"help": "r (in + out) trainable weights per target (LoRA's count at rank r)."},
    )

    def __post_init__(self) -> None:
        self.r = check.integer("shira.r", self.r, minimum=1)


class ShiraMethod(PeftMethod):
    description = "peft SHiRA: a sparse delta at r (in + out) random positions per target"
    sections = {"shira": ShiraSection}
    settings = {"r": "shira.r"}
    unshardable = (
        "its sparse delta (fixed indices and a value vector per matrix) has not been "
        "checked with FSDP"
    )

    def peft_config(self, config: TuneConfig, targets: list[str]) -> Any:
        from peft import ShiraConfig  # lazy: peft imports bitsandbytes, noisy on a CPU

        return ShiraConfig(
            r=config.section("shira").r,
            mask_type="random",
            random_seed=config.seed,
            target_modules=targets,
        )

    def build(self, ctx: BuildContext, model: nn.Module) -> Built:
        from peft import get_peft_model

        targets = target_modules(ctx, model)
        model = get_peft_model(model, self.peft_config(ctx.config, targets))
        return Built(model, targets=targets)

    def match_budget(self, ctx: BuildContext, n_params: int) -> list[str] | None:
        meta = meta_model(ctx.model_dir)
        per_rank = lora_trainable(meta, target_modules(ctx, meta), 1)
        return [f"shira.r={max(1, round(n_params / per_rank))}"]

    def trainable_count(self, ctx: BuildContext, model: nn.Module) -> int:
        return lora_trainable(model, target_modules(ctx, model), ctx.config.section("shira").r)

    def memory_terms(self, ctx: BuildContext, model: nn.Module) -> MemoryTerms:
        """Its values, and a row and a column index (int64) per value."""
        trainable = self.trainable_count(ctx, model)
        return MemoryTerms(trainable, buffers=16 * trainable)

    def spectra(self, built: Built, ctx: BuildContext, folder: Path) -> SpectraInput:
        from peft.tuners.shira.layer import ShiraLayer

        deltas = {}
        for name, module in built.model.get_base_model().named_modules():
            if isinstance(module, ShiraLayer):
                deltas[f"{name}.weight"] = module.get_delta_weight("default").to_dense().detach()
        return SpectraInput(deltas, update=True)


register_method("shira", ShiraMethod())

__all__ = ["ShiraMethod", "ShiraSection"]
