"""OFT (Qiu et al. 2023; Qiu et al. 2025's Cayley-Neumann form) through peft.

Each target Linear keeps W frozen and rotates its input by a trained block-diagonal
orthogonal matrix R (in x in): ``h = W R x``. R has ``in / b`` blocks of size b, each the
Cayley transform of a skew-symmetric matrix, whose b (b - 1) / 2 upper-triangle entries are
what trains. So a target of input width ``in`` trains::

    (in / b) x b (b - 1) / 2  =  in (b - 1) / 2      parameters (b = oft.oft_block_size)

or, with ``oft.n_blocks`` blocks instead of a block size (peft's ``r``), b = in / n_blocks.
b must divide every target's input width: a b that does not is refused (peft would silently
pick another). R starts at
the identity, so the run starts at the base model; the merged weight is W R^T, and the
update analyzed (spectra, intruders) is Delta W = W R^T - W, dense, per target.

The adapter is peft's: it loads with ``PeftModel.from_pretrained`` and merges with
``merge_and_unload()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune import _check as check
from spectune.errors import SpectuneError
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

if TYPE_CHECKING:
    from torch import nn

    from spectune.tuning.config import TuneConfig


@dataclass
class OftSection:
    """The ``oft:`` section (peft's ``OFTConfig``: a block size or a number of blocks)."""

    oft_block_size: int = field(
        default=32,
        metadata={
            "help": "size b of each orthogonal block (trains in (b - 1) / 2 per target); "
            "must divide every target's input width; 0 to set oft.n_blocks instead."
        },
    )
    n_blocks: int = field(
        default=0,
        metadata={"help": "blocks per target instead (peft's r; b = in / n_blocks); 0: unset."},
    )
    use_cayley_neumann: bool = field(
        default=True,
        metadata={"help": "Cayley transform by a 5-term Neumann series (faster, approximately "
                  "orthogonal) instead of an exact matrix inverse."},
    )  # fmt: skip
    coft: bool = field(
        default=False,
        metadata={"help": "constrained OFT: keep each block within oft.eps of the identity."},
    )
    eps: float = field(default=6e-5, metadata={"help": "COFT's radius (only with oft.coft)."})
    module_dropout: float = field(
        default=0.0,
        metadata={"help": "probability of setting a block to the identity in a training step."},
    )

    def __post_init__(self) -> None:
        self.oft_block_size = check.integer("oft.oft_block_size", self.oft_block_size, minimum=0)
        self.n_blocks = check.integer("oft.n_blocks", self.n_blocks, minimum=0)
        if (self.oft_block_size == 0) == (self.n_blocks == 0):
            raise SpectuneError(
                f"oft: set exactly one of oft.oft_block_size and oft.n_blocks (got "
                f"{self.oft_block_size} and {self.n_blocks}); e.g. oft.oft_block_size=0 oft.n_blocks=4"
            )
        for name in ("use_cayley_neumann", "coft"):
            if not isinstance(getattr(self, name), bool):
                raise SpectuneError(
                    f"oft.{name} must be true or false, got {getattr(self, name)!r}"
                )
        self.eps = check.number("oft.eps", self.eps)
        if self.eps <= 0:
            raise SpectuneError(f"oft.eps must be > 0, got {self.eps!r}")
        self.module_dropout = check.number("oft.module_dropout", self.module_dropout)
        if not 0 <= self.module_dropout < 1:
            raise SpectuneError(
                f"oft.module_dropout must be in [0, 1), got {self.module_dropout!r}"
            )


def _divisors(widths: set[int]) -> list[int]:
    """Divisors >= 2 of every width."""
    g = math.gcd(*widths)
    return [d for d in range(2, g + 1) if g % d == 0]


def oft_blocks(
    model: nn.Module, targets: list[str], *, block_size: int = 0, n_blocks: int = 0
) -> dict[str, int]:
    """Block size per target for ``block_size`` (or ``n_blocks`` blocks), each checked to divide the
    target's input width.

    Raises:
        SpectuneError: a target's width is not a multiple; the message lists the feasible ones.
    """
    modules = dict(model.named_modules())
    widths = {n: int(modules[n].in_features) for n in targets}
    key, value = ("oft.oft_block_size", block_size) if block_size else ("oft.n_blocks", n_blocks)
    block = {w: block_size or (w // n_blocks if w % n_blocks == 0 else 0) for w in widths.values()}
    bad = sorted(w for w, b in block.items() if w % value or b < 2)
    if bad:
        feasible = _divisors(set(widths.values()))
        if not block_size:
            feasible = [d for d in feasible if min(widths.values()) // d >= 2]
        raise SpectuneError(
            f"{key}={value} does not divide the input width {', '.join(map(str, bad))} of "
            f"the targets (into blocks of 2 or more); feasible: {', '.join(map(str, feasible))}"
        )
    return {n: block[w] for n, w in widths.items()}


def oft_trainable(model: nn.Module, blocks: dict[str, int]) -> int:
    """Parameters OFT trains: in (b - 1) / 2 per target (module docstring)."""
    modules = dict(model.named_modules())
    return sum(modules[n].in_features * (b - 1) // 2 for n, b in blocks.items())


class OftMethod(PeftMethod):
    description = "peft OFT: a trained block-diagonal rotation of each target's input"
    sections = {"oft": OftSection}
    settings = {"block": "oft.oft_block_size", "blocks": "oft.n_blocks"}
    unshardable = "peft's OFT rotation modules have not been checked with FSDP"

    def blocks(self, ctx: BuildContext, model: nn.Module) -> dict[str, int]:
        oft = ctx.config.section("oft")
        return oft_blocks(
            model, target_modules(ctx, model), block_size=oft.oft_block_size, n_blocks=oft.n_blocks
        )

    def peft_config(self, config: TuneConfig, targets: list[str]) -> Any:
        from peft import OFTConfig  # lazy: peft imports bitsandbytes, noisy on a CPU

        oft = config.section("oft")
        return OFTConfig(
            oft_block_size=oft.oft_block_size,
            r=oft.n_blocks,
            use_cayley_neumann=oft.use_cayley_neumann,
            coft=oft.coft,
            eps=oft.eps,
            module_dropout=oft.module_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )

    def build(self, ctx: BuildContext, model: nn.Module) -> Built:
        from peft import get_peft_model

        targets = list(self.blocks(ctx, model))
        model = get_peft_model(model, self.peft_config(ctx.config, targets))
        return Built(model, targets=targets)

    def match_budget(self, ctx: BuildContext, n_params: int) -> list[str] | None:
        """The block size, or number of blocks, whose count is nearest ``n_params``.

        Raises:
            SpectuneError: even the nearest is off by more than a factor of 2.
        """
        meta = meta_model(ctx.model_dir)
        targets = target_modules(ctx, meta)
        widths = {int(dict(meta.named_modules())[n].in_features) for n in targets}
        options = {}
        for d in _divisors(widths):
            options[f"oft.oft_block_size={d}"] = oft_blocks(meta, targets, block_size=d)
            if min(widths) // d >= 2:
                options[f"oft.n_blocks={d}"] = oft_blocks(meta, targets, n_blocks=d)
        counts = {k: oft_trainable(meta, b) for k, b in options.items()}
        best = min(counts, key=lambda k: (abs(counts[k] - n_params), k))
        if not 0.5 <= counts[best] / max(n_params, 1) <= 2:
            raise SpectuneError(
                f"oft cannot train about {n_params:,} parameters on these targets: the nearest "
                f"block setting, {best}, trains {counts[best]:,}; change target_modules or set "
                "oft.oft_block_size yourself (study.match_budget: false)"
            )
        if best.startswith("oft.n_blocks="):
            return ["oft.oft_block_size=0", best]
        return [best, "oft.n_blocks=0"]

    def trainable_count(self, ctx: BuildContext, model: nn.Module) -> int:
        return oft_trainable(model, self.blocks(ctx, model))

    def memory_terms(self, ctx: BuildContext, model: nn.Module) -> MemoryTerms:
        """The frozen base keeps no Linear input for a weight gradient and the rotation saves
        nothing per token beyond its input (measured: LoRA's figure without its r); what the
        Cayley transform keeps for backward is per matrix, 3.4-4.5 x the dense blocks (in x b
        per target, float32; measured on Llama blocks, b = 16, 32): counted as 5 x (4 exact)."""
        blocks = self.blocks(ctx, model)
        modules = dict(model.named_modules())
        dense = sum(modules[n].in_features * b for n, b in blocks.items())
        kept = 5 if ctx.config.section("oft").use_cayley_neumann else 4
        trainable = oft_trainable(model, blocks)
        return MemoryTerms(
            trainable, buffers=4 * kept * dense, frozen_base=True, adapted=len(blocks)
        )

    def spectra(self, built: Built, ctx: BuildContext, folder: Path) -> SpectraInput:
        """Delta W = W R^T - W of every target, dense (the merged weight minus the base)."""
        import torch
        from peft.tuners.oft.layer import OFTLayer

        deltas = {}
        with torch.no_grad():
            for name, module in built.model.get_base_model().named_modules():
                if isinstance(module, OFTLayer):
                    rotation = module.get_delta_weight("default").float()
                    w = module.get_base_layer().weight.float()
                    deltas[f"{name}.weight"] = w @ rotation.T - w
        return SpectraInput(deltas, update=True)


register_method("oft", OftMethod())

__all__ = ["OftMethod", "OftSection", "oft_blocks", "oft_trainable"]
