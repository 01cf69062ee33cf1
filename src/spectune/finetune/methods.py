"""Build the model of a run, one function per method family, all from one :class:`TuneConfig`.

=========  ===================================================================================
method     what trains
=========  ===================================================================================
lora       peft LoRA: Delta W = (lora_alpha / r) B A on every target Linear
rslora     LoRA with rank-stabilized scaling lora_alpha / sqrt(r) (peft ``use_rslora``)
dora       peft DoRA: LoRA direction plus a trained magnitude vector per output (``use_dora``)
qlora      LoRA on a bitsandbytes 4-bit base (NF4, double quantization, bf16 compute where
           the hardware has bf16, else float32), after peft ``prepare_model_for_kbit_training``
qdora      DoRA on the same 4-bit base
frog       spectune FROG: a sparse delta on the top-relevance weights (:mod:`spectune.frog`)
full       every parameter (the reference)
=========  ===================================================================================

The base weights are loaded in float32 (CPU training); the 4-bit methods quantize on load.

bitsandbytes on the CPU (0.50), on CPUs with AVX512-BF16: its 4-bit inference path repacks
the weights and asserts when a layer's output width is not a multiple of
:data:`BNB_CPU_BLOCK` (or its input width not one of :data:`BNB_BLOCKSIZE`), so such layers
are kept unquantized there (listed in ``Built.notes``), and an eval-mode no-grad forward on the 4-bit model before training would
repack the weights and leave the adapters without gradients: the recipe never evaluates a
4-bit model before training (the "before" numbers come from the full-precision base), and
:class:`~spectune.finetune.recipe.GradientCheck` stops a run whose first step gets no
gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError
from spectune.finetune.config import LORA_METHODS, QUANT_METHODS, TuneConfig

if TYPE_CHECKING:
    from torch import nn

#: bitsandbytes' CPU 4-bit inference packing works on output widths that are multiples of this
BNB_CPU_BLOCK = 32
#: ... and on input widths that are multiples of its 4-bit quantization block size
BNB_BLOCKSIZE = 64


@dataclass
class Built:
    """A model ready to train.

    Attributes:
        model: the model (a ``PeftModel`` for the LoRA family).
        tokenizer: its tokenizer.
        trainable: trainable parameter count.
        total: all parameters (4-bit weights counted as their number of weights).
        targets: module names that got an adapter (empty for ``full``).
        notes: things the user should know about how the model was built.
        frog_plan: the FROG plan (method ``frog``), for the layer-importance chart.
    """

    model: Any
    tokenizer: Any
    trainable: int
    total: int
    targets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    frog_plan: Any = None

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else float("nan")


def _dtype(name: str) -> Any:
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def native_bf16() -> bool:
    """Whether bf16 matmuls run natively here: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 (bitsandbytes' own test). Elsewhere torch emulates them, far slower."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency
        return False
    return bool(has_avx512bf16())


def compute_dtype(config: TuneConfig) -> tuple[str, str | None]:
    """The 4-bit compute dtype to use and, for 'auto' without native bf16, a note saying so."""
    wanted = config.quant.compute_dtype
    if wanted != "auto":
        return wanted, None
    if native_bf16():
        return "bfloat16", None
    return "float32", (
        "4-bit compute dtype float32: this machine has no native bf16 (emulated bf16 made a "
        "QLoRA step 10x slower here); set quant.compute_dtype=bfloat16 to force QLoRA's bf16"
    )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a bitsandbytes 4-bit weight counts its weights, not its
    packed bytes."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        if shape is not None:  # Params4bit: numel() is the packed uint8 count
            n = int(shape[0]) * int(shape[1]) if len(shape) == 2 else int(shape.numel())
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def lora_trainable(model: nn.Module, targets: list[str], r: int, *, dora: bool = False) -> int:
    """Parameters LoRA of rank ``r`` adds on ``targets``: r (in + out) per Linear, plus out for
    DoRA's magnitude (computed from the shapes; no peft needed)."""
    modules = dict(model.named_modules())
    total = 0
    for name in targets:
        m = modules[name]
        total += r * (m.in_features + m.out_features) + (m.out_features if dora else 0)
    return total


def unpackable_modules(model_dir: Path) -> list[str]:
    """Linear layers (but the output head) that bitsandbytes' CPU 4-bit inference packing
    cannot take: output width not a multiple of :data:`BNB_CPU_BLOCK` (32) or input width
    not a multiple of the quantization block (:data:`BNB_BLOCKSIZE`, 64). Shapes only: the
    model is built on the meta device."""
    import torch

    meta = meta_model(model_dir)
    head = meta.get_output_embeddings()
    return [
        name
        for name, m in meta.named_modules()
        if isinstance(m, torch.nn.Linear)
        and m is not head
        and (m.out_features % BNB_CPU_BLOCK or m.in_features % BNB_BLOCKSIZE)
    ]


def cpu_packs_4bit() -> bool:
    """Whether bitsandbytes repacks 4-bit weights for CPU inference on this machine (CPU
    training, and a CPU with AVX512-BF16: bitsandbytes' own test)."""
    import torch

    if torch.cuda.is_available():
        return False
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency
        return False
    return bool(has_avx512bf16())


def meta_model(model_dir: Path) -> nn.Module:
    """The model's architecture on the meta device (shapes only, no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def matched_frog_budget(model_dir: Path, config: TuneConfig) -> tuple[float, int, int]:
    """The FROG budget G whose trainable count equals LoRA's at ``config.r`` on the same
    targets: G = r * sum(in + out) / sum(in * out).

    Returns:
        ``(budget, lora_trainable, target_weights)``.
    """
    from spectune.frog.model import match_modules

    meta = meta_model(model_dir)
    targets = match_modules(meta, config.target_modules, config.exclude_modules)
    modules = dict(meta.named_modules())
    lora = lora_trainable(meta, targets, config.r)
    total = sum(modules[n].weight.numel() for n in targets)
    return lora / total, lora, total


def load_tokenizer(model_dir: Path) -> Any:
    """The model's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(model_dir: Path, config: TuneConfig | None = None) -> tuple[Any, list[str]]:
    """The base causal LM (float32), or 4-bit quantized for qlora / qdora.

    Returns:
        ``(model, notes)``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    notes: list[str] = []
    if config is None or config.method not in QUANT_METHODS:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        return model, notes
    from transformers import BitsAndBytesConfig

    skip = unpackable_modules(model_dir) if cpu_packs_4bit() else []
    if skip:
        notes.append(
            f"kept {len(skip)} linear layer(s) unquantized: on this CPU bitsandbytes repacks "
            f"4-bit weights for inference, which needs output widths that are multiples of "
            f"{BNB_CPU_BLOCK} and input widths that are multiples of {BNB_BLOCKSIZE} "
            f"({', '.join(skip[:4])}{' ...' if len(skip) > 4 else ''})"
        )
    q = config.quant
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
        model_dir, quantization_config=quant, dtype=torch.float32, device_map=device_map
    )
    return model, notes


def lora_config(config: TuneConfig) -> Any:
    """The peft ``LoraConfig`` of a LoRA-family run."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        exclude_modules=config.exclude_modules,
        use_rslora=config.method == "rslora",
        use_dora=config.method in ("dora", "qdora"),
        bias="none",
        task_type="CAUSAL_LM",
    )


def build(config: TuneConfig, model_dir: Path, *, progress: bool = True) -> Built:
    """Load the base model and make it trainable the way ``config.method`` says.

    Args:
        config: the run config.
        model_dir: the resolved model folder.
        progress: progress bar while FROG scores the matrices.

    Returns:
        A :class:`Built` (the model in train mode).

    Raises:
        SpectuneError: target_modules match nothing (the message lists the model's linear
            modules), or a setting the method cannot use.
    """
    from spectune.frog.model import match_modules

    tokenizer = load_tokenizer(model_dir)
    model, notes = load_base(model_dir, config)
    targets: list[str] = []
    plan = None
    if config.method in LORA_METHODS:
        targets = match_modules(model, config.target_modules, config.exclude_modules)
        if config.method in QUANT_METHODS:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=config.checkpointing()
            )
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(config))
    elif config.method == "frog":
        from spectune.frog import apply_frog, plan_frog

        plan = plan_frog(model, config.frog_config(), progress=progress)
        targets = list(plan.shapes)
        model = apply_frog(model, plan)
    elif config.method == "full":
        model.requires_grad_(True)
    else:  # pragma: no cover - TuneConfig validates the method
        raise SpectuneError(f"unknown method {config.method!r}")
    model.train()
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise SpectuneError(
            f"method {config.method!r} left no trainable parameter; check target_modules"
        )
    return Built(model, tokenizer, trainable, total, targets, notes, plan)


__all__ = [
    "BNB_BLOCKSIZE",
    "BNB_CPU_BLOCK",
    "Built",
    "build",
    "compute_dtype",
    "count_parameters",
    "cpu_packs_4bit",
    "load_base",
    "load_tokenizer",
    "lora_config",
    "lora_trainable",
    "matched_frog_budget",
    "meta_model",
    "native_bf16",
    "unpackable_modules",
]
