"""Memory estimates: the estimated peak memory of a training run, from the model's config.json.

:func:`estimate_memory` reads the architecture on the meta device
(:func:`spectune.tuning.methods.base.meta_model`: shapes only, no weights), so a 7B or 70B
config is estimated in a second without its weights. Each method says what it adds through
its :meth:`~spectune.tuning.methods.base.Method.memory_terms` hook (a
:class:`~spectune.tuning.methods.base.MemoryTerms`); this module adds the terms up with the
model's shape and knows no method by name. The peak is the sum of

=================  ==========================================================================
part               bytes
=================  ==========================================================================
weights            P x bytes(model_dtype); 4-bit methods: their Linear weights (not the head)
                   at 0.5 byte + the quantization constants (0.127 bit/weight with double
                   quantization, 0.5 bit without), the rest in float32 as spectune loads it
adapter            T x 4 (adapters train in float32); full fine-tuning: 0 (the weights train)
method buffers     sparse methods' fixed indices: FROG 16 T + T x bytes(dtype) (indices,
                   columns, base values), SHiRA 16 T (row and column indices)
gradients          T x bytes(trainable dtype)
optimizer state    AdamW: 2 moments x T x bytes(trainable dtype) (torch keeps them in the
                   parameter's dtype: 2 x fp32 for adapters), 8-bit AdamW 2 x T, SGD 0
activations        the larger of the saved activations and the optimizer step's temporaries
                   (torch's foreach AdamW: one T-sized temporary)
overhead           the process itself: Python, torch, transformers, tokenizer, data, Trainer
                   (:data:`OVERHEAD_BYTES`, measured on this CPU path)
=================  ==========================================================================

T, the trainable parameters, follows each method's declared structure: the LoRA family
r (in + out) per target (+ out for DoRA's magnitude: ``lora_trainable``), SHiRA the same count
at ``shira.r``, FROG ``frog.budget`` x the target weights, full fine-tuning every parameter. A
method that declares no terms (an out-of-tree plug-in) is counted by building it on the meta
model (:meth:`~spectune.tuning.methods.base.Method.trainable_count`), its T trained as float32
tensors with the 8 h activations of a trained base.

Activations of a decoder-only transformer (Llama / Qwen2 / Mistral blocks: hidden h, MLP
width m, a query heads, key-value width kv = kv_heads x head_dim, L layers, vocabulary V),
batch b, sequence s, elements saved for backward per layer and token::

    full, FROG, SHiRA  (sdpa):  8 h + 2 kv + 4 m + a
    LoRA family        (sdpa):  6 h + 2 kv + 4 m + a + r x (adapted matrices per layer)
    eager attention:            + 2 h - 2 kv + a s   (the a x s x s softmax is kept)
    lora_dropout > 0:           + 2 x (input widths of the adapted matrices)
                                - (the inputs no longer kept: q/k/v's, gate/up's, down's;
                                   o_proj's with eager attention), in float32
                                (all linear: + 10 h + m with sdpa, + 9 h + m with eager)

(the frozen base Linear layers of LoRA keep no input for a weight gradient; measured exactly
with ``torch.autograd.graph.saved_tensors_hooks`` on Llama blocks, transformers 5.2x, in the
same spirit as Korthikanti et al. 2022's 34 h + 5 a s per GPT layer). With dropout every
adapted matrix keeps its own dropped input and, on the CPU, torch's float32 dropout noise
(CUDA keeps a 1-byte mask: there the term is an upper bound); the first block's q/k/v noise
is not kept (their input needs no gradient). Each element takes bytes(model_dtype) (float32
for the 4-bit methods here, whose other layers load in float32). On top: the logits,
b s V x 12 bytes (the float32 log-softmax the loss keeps, and at the start of the backward
its incoming and outgoing gradients), and 2 h per token outside the blocks. Without
checkpointing: L x the per-layer figure. With gradient checkpointing: each layer's input
(L x b s h) plus one layer's full activations while it is recomputed.

The estimate is of live memory, which is what the CPU process's peak RSS reaches in the first
training step. Later steps can hold more: glibc raises its mmap threshold (up to 32 MiB) the
first time a large block is freed, the next steps' activations come from a heap that keeps
freed blocks resident as holes, and over 3 steps the peak RSS of SmolLM2-135M LoRA (r=16,
dropout 0.05, batch 8 x 128) reaches 4.59-4.65 GiB, with gradient checkpointing 2.70-2.82
GiB, full fine-tuning (batch 4 x 64) 3.07 GiB. glibc's own ``MALLOC_MMAP_THRESHOLD_=131072``
(its initial threshold, kept fixed) holds the peak at the estimate, at the price of fresh
pages for every large allocation: the steps then took 1.5x, 1.67x and 1.3x as long on this
machine, so spectune leaves the allocator as it is (``bench/plan_rss.py --default-malloc``).

Measured against the training-phase peak RSS of 3-step CPU runs with the threshold fixed
(``RunMetrics.cost``, float32, this 2-CPU machine; ``bench/plan_rss.py``;
``tests/tuning/scale/test_memory.py`` checks the tiny model within 15% and SmolLM2-135M LoRA within
10%): the 2-block 64-wide Llama, LoRA, batch 8 x 128: 0.98 GiB measured, +0.4% estimated (the
overhead is calibrated on it), batch 4 x 64: 0.62 GiB, -11%; SmolLM2-135M LoRA r=16, dropout
0.05, batch 8 x 128: 3.55 GiB, -0.6%, with checkpointing 1.64 GiB, +1.7%; SmolLM2-135M full
fine-tuning, batch 4 x 64: 2.77 GiB, +5.0%. With glibc's default threshold the same runs
measured 1.30-1.32x, 1.61-1.69x and 1.05x the estimate: read it as a lower bound there.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from spectune import _check as check
from spectune.errors import SpectuneError
from spectune.models.loading import resolve_model_dir
from spectune.tuning.config import TuneConfig
from spectune.tuning.methods import METHODS, get_method
from spectune.tuning.methods.base import (
    BuildContext,
    MemoryTerms,
    count_parameters,
    meta_model,
    resolve_model_dtype,
)

GIB = 2**30

#: bytes of the process itself during training on the CPU path (Python, torch, transformers,
#: tokenizer, data, Trainer): the training-phase peak RSS of a LoRA run on a 2-block, 64-wide
#: Llama (0.98 GiB at batch 8 x 128 tokens) less its estimated weights and activations
OVERHEAD_BYTES = int(0.4 * GIB)

#: optimizer -> (state tensors per trainable parameter, bytes each (None: the parameter's),
#: step temporaries per trainable parameter)
OPTIMIZERS: dict[str, tuple[int, int | None, int]] = {
    "adamw_torch": (2, None, 1),
    "adamw_torch_fused": (2, None, 0),
    "paged_adamw_32bit": (2, 4, 0),
    "adamw_bnb_8bit": (2, 1, 0),
    "adamw_8bit": (2, 1, 0),
    "paged_adamw_8bit": (2, 1, 0),
    "sgd": (0, None, 0),
}

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class MemoryEstimate:
    """Estimated peak memory of one run (bytes); see the module docstring for each part.

    Attributes:
        method: the method.
        dtype: what the base weights load in (``4-bit`` for the quantized methods).
        batch: per-device batch size.
        seq: tokens per example.
        checkpointing: whether ``peak`` assumes gradient checkpointing.
        params: all parameters (4-bit weights counted as weights).
        trainable: trainable parameters.
        weights, adapter, buffers, gradients, optimizer, optimizer_step: bytes.
        activations_full: saved activations without checkpointing (with the logits).
        activations_checkpointed: the same with gradient checkpointing.
        overhead: the process itself.
    """

    method: str
    dtype: str
    batch: int
    seq: int
    checkpointing: bool
    params: int
    trainable: int
    weights: int
    adapter: int
    buffers: int
    gradients: int
    optimizer: int
    optimizer_step: int
    activations_full: int
    activations_checkpointed: int
    overhead: int

    @property
    def activations(self) -> int:
        return self.activations_checkpointed if self.checkpointing else self.activations_full

    def peak_with(self, checkpointing: bool) -> int:
        act = self.activations_checkpointed if checkpointing else self.activations_full
        return (
            self.weights
            + self.adapter
            + self.buffers
            + self.gradients
            + self.optimizer
            + max(act, self.optimizer_step)
            + self.overhead
        )

    @property
    def peak(self) -> int:
        return self.peak_with(self.checkpointing)

    def at_batch(self, batch: int) -> MemoryEstimate:
        """The same estimate at another batch size (activations grow linearly with the batch)."""
        scale = batch / self.batch
        return replace(
            self,
            batch=batch,
            activations_full=round(self.activations_full * scale),
            activations_checkpointed=round(self.activations_checkpointed * scale),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "peak": self.peak,
            "peak_without_checkpointing": self.peak_with(False),
            "peak_with_checkpointing": self.peak_with(True),
        }


@dataclass
class _Shape:
    hidden: int
    mlp: int
    heads: int
    kv: int  # kv heads x head dim
    layers: int
    vocab: int


def _shape(meta: Any) -> _Shape:
    c = meta.config
    c = getattr(c, "text_config", None) or c
    try:
        heads = int(c.num_attention_heads)
        head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
        kv_heads = int(getattr(c, "num_key_value_heads", None) or heads)
        shape = _Shape(
            int(c.hidden_size),
            int(c.intermediate_size),
            heads,
            kv_heads * head_dim,
            int(c.num_hidden_layers),
            int(c.vocab_size),
        )
    except (AttributeError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise SpectuneError(
            f"the model config has no decoder shape the planner reads ({exc}); it plans "
            "Llama-style decoders (hidden_size, intermediate_size, num_attention_heads, "
            "num_hidden_layers, vocab_size)"
        ) from None
    if shape.layers < 1:
        raise SpectuneError(
            f"the model config has num_hidden_layers={shape.layers}: the model has no decoder "
            "layers spectune can plan for (the planner adds up Llama-style decoder layers); "
            "give a model with at least one"
        )
    return shape


def _per_layer_elements(shape: _Shape, seq: int, terms: MemoryTerms, attn: str) -> int:
    """Elements saved for backward per layer and token (module docstring)."""
    h, kv, m, a = shape.hidden, shape.kv, shape.mlp, shape.heads
    adapters = terms.saved_per_matrix * round(terms.adapted / shape.layers)
    per = (6 * h if terms.frozen_base else 8 * h) + adapters + 2 * kv + 4 * m + a
    if attn == "eager":
        per += 2 * h - 2 * kv + a * seq
    return per


def estimate_memory(
    model: str | Path,
    config: TuneConfig | None = None,
    *,
    batch: int = 4,
    seq: int = 2048,
    checkpointing: bool = False,
    optim: str = "adamw_torch",
    meta: Any = None,
) -> MemoryEstimate | None:
    """The estimated peak memory of training ``config``'s method on ``model``.

    Args:
        model: a model folder (only config.json is read) or ``"default"``.
        config: a :class:`~spectune.tuning.config.TuneConfig` (its method, sections,
            targets, model_dtype, attn_implementation); None: the defaults (LoRA r=8).
        batch: per-device batch size.
        seq: tokens per example.
        checkpointing: gradient checkpointing for ``peak``.
        optim: the optimizer (a key of :data:`OPTIMIZERS`).
        meta: the meta-device model, if already built (estimating every method reuses it).

    Returns:
        The estimate, or None for a method that gives no memory terms
        (:meth:`~spectune.tuning.methods.base.Method.memory_terms`).

    Raises:
        SpectuneError: a bad batch, sequence, optimizer or model config.
    """
    batch = check.integer("batch", batch, minimum=1)
    seq = check.integer("seq", seq, minimum=1)
    check.choice("optim", optim, OPTIMIZERS)
    config = config if config is not None else TuneConfig()
    method = get_method(config.method)
    model_dir = resolve_model_dir(model)
    if meta is None:
        meta = meta_model(model_dir)
    shape = _shape(meta)
    with tempfile.TemporaryDirectory(prefix="spectune-memory-") as workdir:
        ctx = BuildContext(config, model_dir, Path(workdir), progress=False)
        terms = method.memory_terms(ctx, meta)
    if terms is None:
        return None
    params = count_parameters(meta)[1]
    dtype = terms.dtype or resolve_model_dtype(config.model_dtype)[0]
    nbytes = _BYTES[dtype]
    trainable = terms.trainable
    train_bytes = nbytes if terms.in_place else 4
    weights = params * nbytes if terms.weights is None else terms.weights

    n_state, state_bytes, temporaries = OPTIMIZERS[optim]
    optimizer = n_state * trainable * (state_bytes or train_bytes)
    optimizer_step = temporaries * trainable * train_bytes

    tokens = batch * seq
    attn = config.attn_implementation
    per_layer = _per_layer_elements(shape, seq, terms, attn) * tokens * nbytes
    per_layer += terms.dropout[0] * tokens * 4  # the adapters' dropout runs in float32
    outside = 2 * shape.hidden * tokens * nbytes + tokens * shape.vocab * 12
    full = shape.layers * per_layer + outside - terms.dropout[1] * tokens * 4
    ckpt = shape.layers * shape.hidden * tokens * nbytes + per_layer + outside
    return MemoryEstimate(
        method=config.method,
        dtype=terms.weights_label or dtype,
        batch=batch,
        seq=seq,
        checkpointing=checkpointing,
        params=params,
        trainable=trainable,
        weights=weights,
        adapter=0 if terms.in_place else trainable * 4,
        buffers=terms.buffers,
        gradients=trainable * train_bytes,
        optimizer=optimizer,
        optimizer_step=optimizer_step,
        activations_full=full,
        activations_checkpointed=ckpt,
        overhead=OVERHEAD_BYTES,
    )


def largest_batch(
    estimate: MemoryEstimate,
    budget_bytes: int,
    *,
    checkpointing: bool | None = None,
    limit: int = 1 << 16,
) -> int:
    """The largest batch whose estimated peak fits ``budget_bytes`` (0: not even 1).

    Args:
        estimate: an estimate at any batch size (:meth:`MemoryEstimate.at_batch` rescales it).
        budget_bytes: the memory budget.
        checkpointing: with gradient checkpointing (None: the estimate's setting).
        limit: the largest batch tried.
    """
    ckpt = estimate.checkpointing if checkpointing is None else checkpointing
    low, high = 0, limit + 1  # low fits (0 trivially), high does not
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (
            (mid, high) if estimate.at_batch(mid).peak_with(ckpt) <= budget_bytes else (low, mid)
        )
    return low


def estimate_methods(
    model: str | Path, data: dict[str, Any] | None = None, **kwargs: Any
) -> list[MemoryEstimate]:
    """:func:`estimate_memory` for every registered method that gives memory terms.

    Args:
        model: a model folder or ``"default"``.
        data: raw config data (as in a YAML file) with the sections of any method
            (``{"lora": {"r": 16}, "frog": {"budget": 0.01}}``); each method reads its own.
        **kwargs: :func:`estimate_memory`'s settings.
    """
    meta = kwargs.pop("meta", None) or meta_model(resolve_model_dir(model))
    estimates = []
    for name in METHODS.names():
        cfg = TuneConfig.from_dict({**(data or {}), "method": name}, foreign_sections="drop")
        estimate = estimate_memory(model, cfg, meta=meta, **kwargs)
        if estimate is not None:
            estimates.append(estimate)
    return estimates


# --------------------------------------------------------------------------- one batch
# (objectives that check a training batch before training, e.g. LiPO's lists)


def batch_activation_bytes(model_config: Any, n_sequences: int, length: int, n_logit_tokens: int,
                           *, checkpointing: bool = False, dtype: str = "float32",
                           attn: str = "sdpa") -> int:  # fmt: skip
    """Activation bytes of one training forward + backward of ``n_sequences`` rows of
    ``length`` tokens, by the planner's model (module docstring): full fine-tuning's elements
    per layer and token, 2 h per token outside the blocks, and the logits' 12 bytes per
    vocabulary entry at ``n_logit_tokens`` positions (an objective that applies the output head
    only at labelled tokens gives their count). With checkpointing: each layer's input plus
    one layer's activations.

    Args:
        model_config: the model's config (``transformers`` ``PretrainedConfig``).
        n_sequences: rows of the batch.
        length: tokens per row.
        n_logit_tokens: positions whose logits are computed.
        checkpointing: gradient checkpointing.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        attn: the attention implementation (``"eager"`` keeps the softmax).
    """
    shape = _shape(_ConfigOnly(model_config))
    tokens, nbytes = n_sequences * length, _BYTES[dtype]
    full = MemoryTerms(trainable=0)  # every weight trains: no frozen base, no adapter
    per_layer = _per_layer_elements(shape, length, full, attn)
    per_layer *= tokens * nbytes
    outside = 2 * shape.hidden * tokens * nbytes + n_logit_tokens * shape.vocab * 12
    if checkpointing:
        return shape.layers * shape.hidden * tokens * nbytes + per_layer + outside
    return shape.layers * per_layer + outside


@dataclass
class _ConfigOnly:
    """What :func:`_shape` reads of a model: its config."""

    config: Any


def available_bytes() -> int | None:
    """The memory available to a new allocation (``MemAvailable`` of /proc/meminfo, else
    psutil's); None when neither tells."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no way to tell: do not check
        return None


__all__ = [
    "OPTIMIZERS",
    "OVERHEAD_BYTES",
    "MemoryEstimate",
    "available_bytes",
    "batch_activation_bytes",
    "estimate_memory",
    "estimate_methods",
    "largest_batch",
]
