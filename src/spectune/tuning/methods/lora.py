"""LoRA and rsLoRA through peft (``LoraConfig``), and the class the LoRA family shares.

LoRA (Hu et al. 2021) freezes W and trains a rank-r update on each target Linear::

    h = W x + (lora_alpha / r) B A dropout(x)      A: (r, in)  B: (out, r), B = 0 at start

rsLoRA (Kalajdzievski 2023) scales by lora_alpha / sqrt(r) instead, so that the update's size
does not shrink as r grows. DoRA (:mod:`.dora`), QLoRA / QDoRA (:mod:`.qlora`), PiSSA
(:mod:`.pissa`) and OLoRA (:mod:`.olora`) are variants of :class:`LoraMethod`. How A and B
start is ``lora.init`` (:mod:`.lora_init`: gaussian, pissa, olora, orthogonal, eva, corda,
lora_ga; the last three fed from the run's own training batches).

The adapter is peft's (``adapter_config.json`` + ``adapter_model.safetensors``): it loads with
``PeftModel.from_pretrained`` and merges with ``merge_and_unload()``. Its spectra are read
pair by pair, Delta W = s B A, through the exact rank-r route of the spectral engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spectune import _check as check
from spectune.errors import SpectuneError
from spectune.tuning.methods import lora_init, register_method
from spectune.tuning.methods.base import (
    BuildContext,
    Built,
    MemoryTerms,
    PeftMethod,
    meta_model,
    target_modules,
)

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from spectune.tuning.config import TuneConfig


@dataclass
class LoraSection:
    """The ``lora:`` section: rank, scaling and dropout of the LoRA family."""

    r: int = field(default=8, metadata={"help": "LoRA rank (the update is rank r)."})
    lora_alpha: float = field(
        default=16, metadata={"help": "scaling numerator: alpha/r (rsLoRA: alpha/sqrt(r))."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input."})
    init: str = field(
        default="default",
        metadata={
            "help": "how A and B start (peft's init_lora_weights): default (A Kaiming, B = 0), "
            "gaussian, pissa or pissa_niter_<n> (top-r SVD of W), olora (QR of W), orthogonal "
            "(B A = 0, both nonzero; even r), eva (A = top singular vectors of the layer "
            "inputs), corda (SVD of W times the inputs' covariance), lora_ga (SVD of the "
            "loss gradient); pissa, olora, corda and lora_ga rewrite W and save a plain "
            "rank-2r adapter of the original base. qlora/qdora: default, gaussian, eva."
        },
    )
    init_batches: int = field(
        default=8,
        metadata={
            "help": "training batches (train.per_device_train_batch_size examples each, in "
            "the data's order) that eva, corda and lora_ga read."
        },
    )

    def __post_init__(self) -> None:
        self.r = check.integer("lora.r", self.r, minimum=1)
        self.lora_alpha = check.number("lora.lora_alpha", self.lora_alpha)
        if self.lora_alpha <= 0:
            raise SpectuneError(f"lora.lora_alpha must be > 0, got {self.lora_alpha!r}")
        if self.lora_alpha.is_integer():
            self.lora_alpha = int(self.lora_alpha)
        self.lora_dropout = check.number("lora.lora_dropout", self.lora_dropout)
        if not 0 <= self.lora_dropout < 1:
            raise SpectuneError(f"lora.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        self.init = lora_init.check_init(self.init)
        self.init_batches = check.integer("lora.init_batches", self.init_batches, minimum=0)


#: where an init that rewrites the base weights keeps its initial adapter, in the work folder
INITIAL_ADAPTER = "initial_adapter"


def lora_trainable(model: nn.Module, targets: list[str], r: int, *, dora: bool = False) -> int:
    """Parameters LoRA of rank ``r`` adds on ``targets``: r (in + out) per Linear, plus out for
    DoRA's magnitude (computed from the shapes; no peft needed)."""
    modules = dict(model.named_modules())
    total = 0
    for name in targets:
        m = modules[name]
        total += r * (m.in_features + m.out_features) + (m.out_features if dora else 0)
    return total


#: adapted modules that read one shared input (Llama / Qwen2 / Mistral names): the attention
#: block's normed input, the MLP's normed input
SHARED_INPUTS = {
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
}


def dropout_elements(model: nn.Module, targets: list[str], attn: str) -> tuple[int, int]:
    """Elements per token that LoRA dropout adds in one block, and those it does not add in
    the first block (see :mod:`spectune.tuning.scale.memory`).

    With ``lora_dropout > 0`` every adapted Linear keeps its own dropout output (what its A
    matrix saw) and the dropout's noise: 2 x its input width. The input itself is then no
    longer kept for the adapter: once per shared input (q/k/v, gate/up), once for down_proj;
    o_proj's input stays with sdpa, whose backward keeps its output anyway. In the first block
    the q/k/v input needs no gradient, so their noise is not kept.

    Returns:
        (per block, less in the first block), from the targets of the first block.
    """
    modules = dict(model.named_modules())
    block = [n for n in targets if ".layers.0." in n or n.startswith("layers.0.")]
    added = released = first = 0
    seen: set[str] = set()
    for name in block:
        leaf, width = name.rsplit(".", 1)[-1], int(modules[name].in_features)
        added += 2 * width
        group = SHARED_INPUTS.get(leaf, name)
        if group == "attn_in":
            first += width
        if group not in seen and (leaf != "o_proj" or attn == "eager"):
            released += width
        seen.add(group)
    return added - released, first


def token_rows(model: nn.Module, ids: tuple[int, ...]) -> dict[str, list[int]]:
    """peft's ``trainable_token_indices`` for tokens added to the vocabulary: their rows of the
    input embeddings and, when it is not tied to them, of the output layer."""
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    layers = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not layers[0].weight:
        layers.append(out)
    return {names[id(layer)]: list(ids) for layer in layers}


class LoraMethod(PeftMethod):
    """peft LoRA with the variant flags of :class:`peft.LoraConfig`.

    Args:
        description: one line for ``spectune.methods()``.
        rslora: scale by lora_alpha / sqrt(r) (``use_rslora``).
        dora: DoRA's magnitude vectors (``use_dora``).
        init: a ``lora.init`` the method fixes (``"olora"``); None: the config's.
    """

    sections = {"lora": LoraSection}
    settings = {"r": "lora.r", "lora_alpha": "lora.lora_alpha", "lora_dropout": "lora.lora_dropout"}
    shardable = True  # dense A, B (and DoRA's magnitudes) on a float base: FSDP shards them
    trains_new_tokens = True  # peft's trainable_token_indices: the added rows, saved with it
    four_bit = False  # the base is bitsandbytes 4-bit (fewer inits apply)

    def __init__(
        self, description: str, *, rslora: bool = False, dora: bool = False, init: str | None = None
    ) -> None:
        self.description = description
        self.rslora = rslora
        self.dora = dora
        self.init = init
        if init is not None and lora_init.family(init) in lora_init.REWRITE_BASE:
            self.trains_new_tokens = False  # not checked with peft's trainable tokens
            self.shardable = False
            self.unshardable = (
                "its initialisation rewrites the base weights and its adapter is converted "
                "against the initial one when saved; spectune has not checked that with FSDP"
            )

    def check(self, config: TuneConfig) -> None:
        lora_init.check_method_init(self, config)

    def peft_config(self, config: TuneConfig) -> Any:
        """The peft ``LoraConfig`` of a run."""
        from peft import LoraConfig  # lazy: peft imports bitsandbytes, noisy on a CPU

        lora = config.section("lora")
        return LoraConfig(
            r=lora.r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=config.target_modules,
            exclude_modules=config.exclude_modules,
            use_rslora=self.rslora,
            use_dora=self.dora,
            bias="none",
            task_type="CAUSAL_LM",
            **lora_init.peft_options(self.init_name(config)),
        )

    def init_name(self, config: TuneConfig) -> str:
        """The run's ``lora.init`` (the method's own where it fixes one)."""
        return self.init or config.section("lora").init

    def prepare(self, ctx: BuildContext, model: nn.Module) -> nn.Module:
        """The base model just before peft wraps it (4-bit methods prepare it here)."""
        return model

    def build(self, ctx: BuildContext, model: nn.Module) -> Built:
        from peft import get_peft_model

        targets = target_modules(ctx, model)
        peft_config, init = self.peft_config(ctx.config), self.init_name(ctx.config)
        if ctx.new_tokens:
            peft_config.trainable_token_indices = token_rows(model, ctx.new_tokens)
        model = self.prepare(ctx, model)
        if init in lora_init.DATA_DRIVEN:  # peft's preprocessing reads a list, not all-linear
            peft_config.target_modules, peft_config.exclude_modules = list(targets), None
        lora_init.before_wrap(init, ctx, model, peft_config)
        model = get_peft_model(model, peft_config)
        lora_init.after_wrap(init, ctx, model)
        built = Built(model, targets=targets)
        if lora_init.family(init) in lora_init.REWRITE_BASE:  # kept to convert the trained one
            built.state = ctx.workdir / INITIAL_ADAPTER
            model.save_pretrained(built.state)
        return built

    def save(self, built: Built, folder: Path) -> None:
        """peft's adapter folder; one whose init rewrote the base weights is converted against
        the initial adapter into a plain LoRA adapter of the original base."""
        if built.state is None:
            return super().save(built, folder)
        built.model.save_pretrained(
            folder, path_initial_model_for_weight_conversion=str(built.state)
        )

    def match_budget(self, ctx: BuildContext, n_params: int) -> list[str] | None:
        meta = meta_model(ctx.model_dir)
        per_rank = lora_trainable(meta, target_modules(ctx, meta), 1)
        return [f"lora.r={max(1, round(n_params / per_rank))}"]

    def trainable_count(self, ctx: BuildContext, model: nn.Module) -> int:
        r = ctx.config.section("lora").r
        return lora_trainable(model, target_modules(ctx, model), r, dora=self.dora)

    def memory_terms(self, ctx: BuildContext, model: nn.Module) -> MemoryTerms:
        """The frozen base keeps no Linear input for a weight gradient; each adapter saves its
        A's output (r per token) and, with dropout, its dropped input and noise."""
        lora, attn = ctx.config.section("lora"), ctx.config.attn_implementation
        targets = target_modules(ctx, model)
        dropout = dropout_elements(model, targets, attn) if lora.lora_dropout > 0 else (0, 0)
        return MemoryTerms(
            trainable=lora_trainable(model, targets, lora.r, dora=self.dora),
            frozen_base=True,
            adapted=len(targets),
            saved_per_matrix=lora.r,
            dropout=dropout,
        )


register_method("lora", LoraMethod("peft LoRA: Delta W = (lora_alpha / r) B A on each target"))
register_method(
    "rslora", LoraMethod("LoRA with rank-stabilized scaling lora_alpha / sqrt(r)", rslora=True)
)

__all__ = [
    "INITIAL_ADAPTER",
    "SHARED_INPUTS",
    "LoraMethod",
    "LoraSection",
    "dropout_elements",
    "lora_trainable",
    "token_rows",
]
