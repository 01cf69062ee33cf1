"""What this machine can compute: native bf16, bitsandbytes' CPU 4-bit packing, dtypes on the
CPU, FlashAttention, paged optimizers, where models run.

One small module below the methods and the config, so that both can ask without importing each
other (tests patch these functions here). It imports torch at module level; the config imports
it only when it checks ``attn_implementation``, so importing the config stays torch-free.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from spectune.errors import SpectuneError


def _has_avx512bf16() -> bool:
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:  # pragma: no cover - bitsandbytes is a dependency
        return False
    return bool(has_avx512bf16())


#: ``ONEDNN_MAX_CPU_ISA`` values that hold oneDNN below AVX512-BF16 (its bf16 GEMM emulated)
_ONEDNN_BELOW_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def _kernels_held_below_avx512() -> bool:
    """Whether torch was told to run this CPU like one without AVX-512
    (``ATEN_CPU_CAPABILITY=avx2``, or ``ONEDNN_MAX_CPU_ISA`` below AVX512-BF16: what
    ``make test-numerics`` sets). bf16 matmuls are emulated then: a SmolLM2-sized one took
    4.7x as long as in float32 (48x its AVX-512 time), so the hardware's bf16 does not count."""
    if not torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512"):
        return True
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ONEDNN_BELOW_BF16


def native_bf16() -> bool:
    """Whether bf16 matmuls run natively here: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 (bitsandbytes' own test) whose AVX-512 kernels torch uses. Elsewhere torch
    emulates them, far slower."""
    if torch.cuda.is_available():  # emulated bf16 (GPUs before Ampere) does not count
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return _has_avx512bf16() and not _kernels_held_below_avx512()


def _has_amx_bf16() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch: read the flags
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                return " amx_bf16" in f.read()
        except OSError:
            return False


def fast_bf16() -> bool:
    """Whether base weights in bf16 make a step faster here than float32: a bf16 GPU, or a
    CPU with AMX tiles (oneDNN's AMX bf16 GEMM). A CPU with AVX512-BF16 alone computes bf16
    natively but at about half float32's GEMM rate (``bench/dtype_step.py``: a LoRA step 1.51x
    as long), so it does not count; nor does emulated bf16."""
    if torch.cuda.is_available():
        return native_bf16()
    return _has_avx512bf16() and _has_amx_bf16() and not _kernels_held_below_avx512()


def cpu_packs_4bit() -> bool:
    """Whether bitsandbytes repacks 4-bit weights for CPU inference on this machine (CPU
    training, and a CPU with AVX512-BF16: bitsandbytes' own test)."""
    return not torch.cuda.is_available() and _has_avx512bf16()


def cpu_runs(dtype: Any) -> bool:
    """Whether this torch runs a matmul, its backward and SDPA in ``dtype`` on the CPU."""
    try:
        a = torch.ones(4, 8, dtype=dtype, requires_grad=True)
        (a @ torch.ones(8, 4, dtype=dtype)).sum().backward()
        q = torch.ones(1, 1, 4, 8, dtype=dtype)
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def compute_device() -> str:
    """Where training runs, and so where judging runs too: ``"cuda"`` (the Trainer's default
    GPU) where there is one, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def to_compute_device(model: Any) -> Any:
    """``model`` on :func:`compute_device` (as the Trainer places the model it trains), so a
    base model, a teacher or a reference model is judged or used on the same device as the
    trained one. A model already there (every CPU model; a 4-bit model, placed when loaded)
    is returned as it is."""
    device = compute_device()
    if all(p.device.type == device for p in model.parameters()):
        return model
    return model.to(device)


def training_notes(train: dict[str, Any]) -> list[str]:
    """Notes on ``train`` settings (TrainingArguments) that run differently on this machine.

    bitsandbytes' paged optimizers (``paged_adamw_32bit``, ``paged_adamw_8bit``, ...: QLoRA's
    choice) keep their state in CUDA unified memory, which the driver pages out to the CPU
    under memory pressure. Without CUDA there is nothing to page to: bitsandbytes (0.50) keeps
    the state in ordinary tensors and runs the same optimizer unpaged (same update, same 32-
    or 8-bit state); the note says so.
    """
    optim = str(train.get("optim", ""))
    if not optim.startswith("paged_") or torch.cuda.is_available():
        return []
    return [
        f"train.optim={optim}: paging needs CUDA; on this CPU bitsandbytes runs the same "
        "optimizer unpaged (same update, its state in ordinary memory)"
    ]


def check_attn_implementation(name: str) -> None:
    """Refuse ``flash_attention_2`` where the ``flash_attn`` package (and CUDA) is missing.

    Raises:
        SpectuneError: naming the setting and what to use instead.
    """
    if name != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise SpectuneError(
            "attn_implementation=flash_attention_2 needs the flash-attn package (a CUDA GPU "
            "and `pip install flash-attn`), which is not installed here; use "
            "attn_implementation=sdpa (the default) or eager"
        )


__all__ = [
    "check_attn_implementation",
    "compute_device",
    "cpu_packs_4bit",
    "cpu_runs",
    "fast_bf16",
    "native_bf16",
    "to_compute_device",
    "training_notes",
]
