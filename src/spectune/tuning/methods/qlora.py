"""QLoRA and QDoRA: LoRA (DoRA) on a bitsandbytes 4-bit base (Dettmers et al. 2023).

The base weights are quantized on load to 4-bit NormalFloat with double quantization (the
quantization constants quantized too); matmuls run in ``quant.compute_dtype`` (bf16 where the
hardware runs it natively: a bf16 GPU or a CPU with AVX512-BF16; float32 elsewhere, where
emulated bf16 made a step 10x slower). peft's ``prepare_model_for_kbit_training`` readies the
model (norms in float32, input gradients for checkpointing) before the adapters go on.

bitsandbytes on the CPU (0.50), on CPUs with AVX512-BF16: its 4-bit inference path repacks the
weights and asserts when a layer's output width is not a multiple of :data:`BNB_CPU_BLOCK` (or
its input width not one of :data:`BNB_BLOCKSIZE`), so such layers stay unquantized there
(listed in ``Built.notes``); and an eval-mode no-grad forward on the 4-bit model before training
would repack the weights and leave the adapters without gradients: the recipe never evaluates
a 4-bit model before training (the "before" numbers come from the full-precision base), the
validation split scored during training is followed by undoing that repacking
(:func:`spectune.models.quant.unpack_4bit_cpu_weights`), and the first-step gradient
check stops a run that gets no gradient.

Merging happens into a freshly loaded float32 base (merging into 4-bit weights would round the
update away).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from spectune import _check as check
from spectune.errors import SpectuneError
from spectune.models import hardware
from spectune.models.hardware import cpu_packs_4bit, native_bf16  # noqa: F401 - re-exported
from spectune.tuning.methods import register_method
from spectune.tuning.methods.base import (
    BuildContext,
    Built,
    MemoryTerms,
    count_parameters,
    load_float_base,
    meta_model,
)
from spectune.tuning.methods.lora import LoraMethod, LoraSection

if TYPE_CHECKING:
    from torch import nn

    from spectune.tuning.config import TuneConfig

#: bitsandbytes' CPU 4-bit inference packing works on output widths that are multiples of this
BNB_CPU_BLOCK = 32
#: ... and on input widths that are multiples of its 4-bit quantization block size
BNB_BLOCKSIZE = 64


@dataclass
class QuantConfig:
    """The ``quant:`` section: bitsandbytes 4-bit settings of qlora / qdora."""

    quant_type: str = field(default="nf4", metadata={"help": "'nf4' (QLoRA) or 'fp4'."})
    double_quant: bool = field(
        default=True, metadata={"help": "quantize the quantization constants too (QLoRA)."}
    )
    compute_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the 4-bit layers' matmuls: 'auto' (bfloat16, QLoRA's choice, "
            "where the hardware runs it natively: a bf16 GPU or a CPU with AVX512-BF16; "
            "float32 elsewhere, where emulated bf16 made a step 10x slower), or 'bfloat16', "
            "'float16', 'float32'."
        },
    )

    def __post_init__(self) -> None:
        check.choice("quant.quant_type", self.quant_type, ("nf4", "fp4"))
        if not isinstance(self.double_quant, bool):
            raise SpectuneError(
                f"quant.double_quant must be true or false, got {self.double_quant!r}"
            )
        check.choice(
            "quant.compute_dtype", self.compute_dtype, ("auto", "bfloat16", "float16", "float32")
        )


def _dtype(name: str) -> Any:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def compute_dtype(config: TuneConfig) -> tuple[str, str | None]:
    """The 4-bit compute dtype to use and, for 'auto' without native bf16, a note saying so."""
    wanted = config.section("quant").compute_dtype
    if wanted != "auto":
        return wanted, None
    if hardware.native_bf16():
        return "bfloat16", None
    return "float32", (
        "4-bit compute dtype float32: this machine has no native bf16 (emulated bf16 made a "
        "QLoRA step 10x slower here); set quant.compute_dtype=bfloat16 to force QLoRA's bf16"
    )


def unpackable_modules(model_dir: Path) -> list[str]:
    """Linear layers (but the output head) that bitsandbytes' CPU 4-bit inference packing
    cannot take: output width not a multiple of :data:`BNB_CPU_BLOCK` (32) or input width
    not a multiple of the quantization block (:data:`BNB_BLOCKSIZE`, 64). Shapes only."""
    meta = meta_model(model_dir)
    head = meta.get_output_embeddings()
    return [
        name
        for name, m in meta.named_modules()
        if isinstance(m, torch.nn.Linear)
        and m is not head
        and (m.out_features % BNB_CPU_BLOCK or m.in_features % BNB_BLOCKSIZE)
    ]


def load_4bit_base(model_dir: Path, config: TuneConfig) -> tuple[nn.Module, list[str]]:
    """The base model quantized to 4 bits on load, and notes on what was kept unquantized
    and which compute dtype was chosen."""
    notes: list[str] = []
    skip = unpackable_modules(model_dir) if hardware.cpu_packs_4bit() else []
    if skip:
        notes.append(
            f"kept {len(skip)} linear layer(s) unquantized: on this CPU bitsandbytes repacks "
            f"4-bit weights for inference, which needs output widths that are multiples of "
            f"{BNB_CPU_BLOCK} and input widths that are multiples of {BNB_BLOCKSIZE} "
            f"({', '.join(skip[:4])}{' ...' if len(skip) > 4 else ''})"
        )
    q = config.section("quant")
    dtype, note = compute_dtype(config)
    if note:
        notes.append(note)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=_dtype(dtype),
        llm_int8_skip_modules=(skip + ["lm_head"]) if skip else None,
    )
    # 4-bit weights are placed when loaded: on the GPU where there is one
    device_map = {"": 0} if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=quant,
        dtype=torch.float32,
        device_map=device_map,
        attn_implementation=config.attn_implementation,
    )
    return model, notes


class QuantizedLoraMethod(LoraMethod):
    """LoRA (or DoRA) on a 4-bit base."""

    sections = {"lora": LoraSection, "quant": QuantConfig}
    trains_new_tokens = False  # not checked with peft's trainable tokens
    four_bit = True
    shardable = False
    unshardable = (
        "its base weights are bitsandbytes 4-bit blocks (Params4bit with their "
        "quantization state), which spectune does not shard"
    )

    def check(self, config: TuneConfig) -> None:
        super().check(config)  # lora.init: those that neither read nor rewrite W
        args = config.training_arguments()
        if config.attn_implementation == "flash_attention_2" and not (
            args.get("bf16") or args.get("fp16")
        ):
            raise SpectuneError(
                f"attn_implementation=flash_attention_2 computes in float16/bfloat16 only, but "
                f"{config.method} keeps the layers it does not quantize in float32; set "
                "train.bf16=true (autocast)"
            )

    def load_base(self, ctx: BuildContext) -> tuple[nn.Module, list[str]]:
        return load_4bit_base(ctx.model_dir, ctx.config)

    def prepare(self, ctx: BuildContext, model: nn.Module) -> nn.Module:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=ctx.config.checkpointing()
        )

    def memory_terms(self, ctx: BuildContext, model: nn.Module) -> MemoryTerms:
        """LoRA's terms on a base whose Linear weights (not the head) take 0.5 byte each plus
        the quantization constants, the rest float32, as :func:`load_4bit_base` loads it."""
        terms = super().memory_terms(ctx, model)
        head = model.get_output_embeddings()
        params = count_parameters(model)[1]
        linear = sum(
            m.weight.numel()
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m is not head
        )
        constants = (0.127 if ctx.config.section("quant").double_quant else 0.5) / 8
        terms.weights = int(linear * (0.5 + constants)) + (params - linear) * 4
        terms.weights_label, terms.dtype = "4-bit", "float32"
        return terms

    def merge(self, built: Built, ctx: BuildContext, folder: Path) -> nn.Module:
        from peft import PeftModel

        base = load_float_base(ctx.model_dir)
        return PeftModel.from_pretrained(base, folder).merge_and_unload()


register_method(
    "qlora", QuantizedLoraMethod("LoRA on a bitsandbytes 4-bit NF4 base (double quantization)")
)
register_method("qdora", QuantizedLoraMethod("DoRA on a bitsandbytes 4-bit NF4 base", dora=True))

__all__ = [
    "BNB_BLOCKSIZE",
    "BNB_CPU_BLOCK",
    "QuantConfig",
    "QuantizedLoraMethod",
    "compute_dtype",
    "cpu_packs_4bit",
    "load_4bit_base",
    "native_bf16",
    "unpackable_modules",
]
