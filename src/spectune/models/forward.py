"""Running a model: its device, eval mode without gradients, the module inside DDP and peft
wrappers, and a loss computed from a causal LM's parts (decoder and output head) that still goes
through the DDP wrapper's forward.

torch is imported inside the functions: :mod:`spectune.judging` imports this module for
its result types' sake too, and reading results (:mod:`spectune.results.metrics`) stays
torch-free.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from spectune.models.quant import unpack_4bit_cpu_weights
from spectune.models.tokenizer import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode and no gradients inside, DoRA's per-layer weight norms kept while inside
    (:func:`dora_caching`); afterwards the previous mode is restored and any 4-bit weights
    bitsandbytes repacked for CPU inference are unpacked."""
    import torch

    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad(), dora_caching(model):
            yield
    finally:
        if was_training:
            model.train()
        unpack_4bit_cpu_weights(model)


@contextmanager
def dora_caching(model: Any) -> Iterator[None]:
    """peft's DoRA layers keep their weight norm ||W + s B A|| and the dense B A it is taken
    from while inside (``peft.helpers.DoraCaching``, eval mode only), instead of forming both
    again in every forward: the same outputs, bit for bit, and a generated token about 4x
    faster on SmolLM2 (the demo's DoRA: 88-91 ms against 361; peft's default recomputes them,
    as training needs). Memory while
    inside: one out x in matrix per DoRA layer (the size of the adapted weights); the caches
    are emptied on the way out. A model without DoRA layers, or a peft without the switch, is
    left as it is."""
    layers = [m for m in model.modules() if type(m).__name__ == "DoraLinearLayer"]
    try:
        from peft.helpers import DoraCaching
    except ImportError:  # peft before 0.14: no switch
        layers = []
    if not layers or not all(hasattr(m, "_cache_clear") for m in layers):
        yield
        return
    try:
        with DoraCaching():
            yield
    finally:
        for layer in layers:
            layer._cache_clear()


def model_device(model: Any) -> torch.device:
    import torch

    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued kernels (a timestamp after a CUDA call is taken when the work
    is queued, not done); nothing on the CPU, whose calls return when done."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ddp_module(model: Any) -> Any | None:
    """The module a ``DistributedDataParallel`` wrapper trains (None for any other model)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else None


def unwrap_model(model: Any) -> Any:
    """The transformers model inside a DDP and/or peft wrapper (the model itself otherwise)."""
    model = _ddp_module(model) or model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def as_forward(model: Any, fn: Any) -> Any:
    """``fn(module)``, a loss computed from ``model``'s unwrapped module or its parts (such as
    :func:`labelled_nll` on :func:`decoder_and_head`), run as the forward of ``model``.

    Under ``DistributedDataParallel`` a loss must go through the wrapper's forward: DDP arms
    its gradient all-reduce there, and a loss that calls the wrapped module's parts directly
    trains each rank on its own gradients (silently). So ``fn`` stands in for the wrapped
    module's ``forward`` for one call of the wrapper (an instance attribute, as accelerate's
    autocast wrapper is) and DDP's bookkeeping runs around it; ``fn`` gets the wrapped module
    and must not call the wrapper itself. Any other model: ``fn(model)``.
    """
    inner = _ddp_module(model)
    if inner is None:
        return fn(model)
    had = "forward" in inner.__dict__
    saved = inner.__dict__.get("forward")
    inner.forward = lambda: fn(inner)
    try:
        return model()
    finally:
        if had:
            inner.forward = saved
        else:
            del inner.forward


def decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output head) of a Hugging Face causal LM or a peft model around one; None for
    other models. Lets the loss run the vocabulary projection only where a label is."""
    base = unwrap_model(model)
    get_decoder = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def labelled_nll(
    parts: tuple[Any, Any],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Summed NLL of the labelled next-token predictions, and their count, with the output
    head applied only at those positions (the causal-LM loss of the full logits, cheaper).

    Args:
        parts: ``(decoder, head)`` from :func:`decoder_and_head`.
        input_ids, attention_mask, labels: (batch, length); label ``-100`` is not scored and
            position t is predicted at t - 1. No mask, with ``position_ids``: a padding-free
            row of several examples (:class:`spectune.data.instructions.InstructionCollator`).

    Returns:
        ``(nll_sum, n)``: a 0-d tensor (with its graph, for training) and the count.
    """
    import torch.nn.functional as F

    decoder, head = parts
    # no cache: a loss needs none (transformers would fill one with every layer's keys and
    # values), and it looks for examples packed in a row only without one
    extra = {} if position_ids is None else {"position_ids": position_ids}
    hidden = decoder(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra
    ).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX  # (batch, length - 1)
    logits = head(hidden[:, :-1][keep]).float()  # (labelled tokens, vocab)
    return F.cross_entropy(logits, target[keep], reduction="sum"), int(keep.sum())


def packing_works(model: Any, *, atol: float = 1e-3) -> bool:
    """Whether ``model``'s attention keeps examples concatenated in one row apart when their
    ``position_ids`` restart (a padding-free batch): two short random examples run packed and
    one by one must give the same logits (to ``atol``; in a 16-bit compute dtype, which rounds
    the two apart by more, packed must be 20x nearer to separate than the second example read
    after the first is). Run in training mode with gradients on, as a training
    step is (an evaluation-mode forward without gradients repacks a 4-bit base on the CPU);
    dropout is switched off for the check and the model's mode restored."""
    import torch

    base = unwrap_model(model)
    vocab = int(getattr(base.config, "vocab_size", 0) or 0)
    if vocab < 2:
        return False
    device = next(base.parameters()).device
    g = torch.Generator().manual_seed(0)
    a = torch.randint(1, vocab, (1, 5), generator=g).to(device)
    b = torch.randint(1, vocab, (1, 3), generator=g).to(device)
    was_training = base.training
    dropouts = [(m, m.p) for m in base.modules() if isinstance(m, torch.nn.Dropout)]
    try:
        base.train()
        for m, _ in dropouts:
            m.p = 0.0
        with torch.enable_grad():
            packed = base(
                input_ids=torch.cat([a, b], dim=1),
                position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]], device=device),
                use_cache=False,
            ).logits.detach()
            alone = torch.cat(
                [base(input_ids=x, use_cache=False).logits.detach() for x in (a, b)], dim=1
            )
            # b read after a (what a row without the restarts means): the size of a leak
            joined = base(input_ids=torch.cat([a, b], dim=1), use_cache=False).logits.detach()
    except (RuntimeError, TypeError, ValueError):
        return False
    finally:
        for m, p in dropouts:
            m.p = p
        base.train(was_training)
    packed, alone, joined = packed.float(), alone.float(), joined.float()
    if torch.allclose(packed, alone, atol=atol, rtol=1e-3):
        return True
    # a 16-bit compute dtype (a 4-bit base's bf16) rounds both runs apart by more than atol:
    # packed must then be far nearer to separate than reading b after a is
    off = (packed[:, 5:] - alone[:, 5:]).abs().max()
    leak = (joined[:, 5:] - alone[:, 5:]).abs().max()
    return bool(off < 0.05 * leak)
