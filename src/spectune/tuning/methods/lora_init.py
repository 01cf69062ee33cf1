"""LoRA initialisations (``lora.init``): the values peft offers, which methods take which,
and the run's own training batches that feed the data-driven ones.

===========  ================================================================  ===========
lora.init    A and B at step 0 (peft's ``init_lora_weights``)                   base W
===========  ================================================================  ===========
default      A Kaiming-uniform, B = 0 (peft's ``True``): Delta W = 0            kept
gaussian     A ~ N(0, 1/r), B = 0                                               kept
pissa        B A = the top-r SVD part of W (``pissa_niter_<n>``: fast SVD)      W - s B A
olora        B A from the QR decomposition of W                                 W - s B A
orthogonal   A = (G Q_1)^T, B = H^T Q_2, Q_1, Q_2 the halves of a random        kept
             orthogonal matrix: B A = 0 with both nonzero (r even)
eva          A = the top-r right singular vectors of each layer's inputs on     kept
             the training batches, B = 0 (EVA, ranks not redistributed: rho 1)
corda        B A = the principal part of the SVD of W C, C the covariance of    W - s B A
             the layer's inputs on the training batches (IPM mode)
lora_ga      B A from the SVD of the loss gradient of W on the training         W - s B A
             batches (LoRA-GA, peft's defaults: ArB2r, stable scale)
===========  ================================================================  ===========

An init that rewrites W (column "base W") is saved the way peft documents: the initial adapter
is kept in the run's work folder, and the trained adapter is converted against it into a
plain LoRA adapter of rank 2r on the *original* base
(``save_pretrained(path_initial_model_for_weight_conversion=...)``).

eva, corda and lora_ga read the first ``lora.init_batches`` batches of the run's training
features (``train.per_device_train_batch_size`` examples each, in the data's order, through
the objective's collator), through peft's own entry points (``initialize_lora_eva_weights``,
``preprocess_corda``, ``preprocess_loraga``).

peft also has loftq and mica, which spectune refuses, saying why (:data:`NOT_OFFERED`). LoftQ is
the quantization-aware init, so it would belong to qlora / qdora; but peft 0.21's version for a
bitsandbytes 4-bit base (``replace_lora_weights_loftq``) computes on CUDA only, and its
float-base version replaces W by its 4-bit round trip, which no LoRA adapter of the original
base can carry.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError

if TYPE_CHECKING:
    from torch import nn

    from spectune.tuning.config import TuneConfig
    from spectune.tuning.methods.base import BuildContext

#: the ``lora.init`` values (``pissa_niter_<n>`` too)
INITS = ("default", "gaussian", "pissa", "olora", "orthogonal", "eva", "corda", "lora_ga")
#: inits that rewrite the base weights: the adapter is converted against the initial one
REWRITE_BASE = ("pissa", "olora", "corda", "lora_ga")
#: inits fed from the run's training batches
DATA_DRIVEN = ("eva", "corda", "lora_ga")
#: inits for a 4-bit base: those that neither read nor rewrite W
ON_4BIT = ("default", "gaussian", "eva")
#: inits peft provides that spectune does not offer, and why
NOT_OFFERED = {
    "loftq": "peft's LoftQ for a bitsandbytes 4-bit base computes on CUDA only, and on a float "
    "base it replaces W by its 4-bit round trip, which no LoRA adapter of the original base "
    "carries",
    "mica": "it freezes B and trains A alone, which spectune's counts and budgets do not follow",
}
_NITER = re.compile(r"pissa_niter_([1-9][0-9]*)")


def _peft_version() -> str:
    from importlib.metadata import version

    return version("peft")


def check_init(value: Any) -> str:
    """``lora.init`` checked: one of :data:`INITS` or ``pissa_niter_<n>``.

    Raises:
        SpectuneError: another value, naming peft's version and the values offered.
    """
    if isinstance(value, str) and (value in INITS or _NITER.fullmatch(value)):
        return value
    offered = f"{', '.join(INITS)}, pissa_niter_<n>"
    if value in NOT_OFFERED:
        raise SpectuneError(
            f"lora.init={value}: spectune does not offer it ({NOT_OFFERED[value]}); use one "
            f"of {offered}"
        )
    raise SpectuneError(
        f"lora.init={value!r}: peft {_peft_version()} does not provide this initialisation; "
        f"it provides (through spectune) {offered}"
    )


def family(name: str) -> str:
    """The init without its options (``pissa_niter_4`` -> ``pissa``)."""
    return "pissa" if name.startswith("pissa") else name


def check_method_init(spec: Any, config: TuneConfig) -> None:
    """Refuse a ``lora.init`` the method cannot take (config time).

    Args:
        spec: the :class:`~spectune.tuning.methods.lora.LoraMethod`: ``init`` (the init it
            fixes, or None), ``four_bit`` (a bitsandbytes 4-bit base), ``dora``.
        config: the run config.
    """
    lora, method, fixed = config.section("lora"), config.method, spec.init
    name, four_bit, dora = lora.init, spec.four_bit, spec.dora
    if fixed is not None and name != "default":
        raise SpectuneError(
            f"lora.init={name}: method {method} fixes its initialisation ({fixed}); use "
            f"method=lora with lora.init={name}"
        )
    kind = family(fixed or name)
    if four_bit and kind not in ON_4BIT:
        why = {"orthogonal": "peft builds its A and B in the 4-bit weights' dtype (uint8)"}.get(
            kind, "it reads and rewrites W, which is 4-bit here (peft refuses PiSSA on it)"
        )
        raise SpectuneError(
            f"lora.init={name} cannot be used with method {method}: {why}; use "
            f"{', '.join(ON_4BIT)}, or method=lora / dora with lora.init={name}"
        )
    if kind == "orthogonal" and lora.r % 2:
        raise SpectuneError(f"lora.init=orthogonal needs an even lora.r, got {lora.r}")
    if kind in DATA_DRIVEN and lora.init_batches == 0:
        raise SpectuneError(
            f"lora.init={name} is fed from lora.init_batches batches of the run's training "
            "data, and lora.init_batches=0 gives it none; set lora.init_batches >= 1"
        )
    if kind in REWRITE_BASE and dora:
        raise SpectuneError(
            f"lora.init={name} cannot be used with method {method}: it rewrites the base "
            "weights, and peft's conversion of the trained adapter into one of the original "
            "base does not carry DoRA's magnitudes (its outputs differ); use method=lora"
        )
    if kind in REWRITE_BASE and fixed is None:  # pissa, olora: unshardable, refused as such
        from spectune.tuning.checks import fsdp_requested

        if fsdp_requested(config):
            raise SpectuneError(
                f"lora.init={name} rewrites the base weights and its adapter is converted "
                "against the initial one when saved, which spectune has not checked with "
                "FSDP; train it with DDP (remove train.fsdp)"
            )


def peft_options(name: str) -> dict[str, Any]:
    """``LoraConfig`` keywords of an init: ``init_lora_weights`` and its sub-config."""
    from peft.tuners.lora.config import CordaConfig, EvaConfig, LoraGAConfig

    options: dict[str, Any] = {"init_lora_weights": True if name == "default" else name}
    if name == "eva":  # rho 1: every target keeps rank r (the counts and budgets hold)
        options["eva_config"] = EvaConfig(rho=1.0)
    elif name == "corda":
        options["corda_config"] = CordaConfig(corda_method="ipm")
    elif name == "lora_ga":
        options["lora_ga_config"] = LoraGAConfig()
    return options


def training_batches(ctx: BuildContext, name: str) -> list[dict[str, Any]]:
    """The first ``lora.init_batches`` batches of the run's training features, as the
    objective's collator makes them: ``input_ids``, ``attention_mask``, ``labels``.

    Raises:
        SpectuneError: no training features (outside a run, no examples), or an objective
            whose batches are not token sequences with labels.
    """
    import torch

    data = getattr(ctx, "train_data", None)
    if data is None or not len(data.dataset):
        raise SpectuneError(
            f"lora.init={name} is fed from the run's training data, and this build has none "
            f"(objective {ctx.config.objective!r}); use lora.init=default, gaussian, pissa, "
            "olora or orthogonal"
        )
    size = int(ctx.config.training_arguments().get("per_device_train_batch_size", 8))
    count = min(len(data.dataset), size * ctx.config.section("lora").init_batches)
    batches = []
    for start in range(0, count, size):
        batch = data.collator([data.dataset[i] for i in range(start, min(start + size, count))])
        keys = ("input_ids", "attention_mask", "labels")
        if not all(isinstance(batch.get(k), torch.Tensor) and batch[k].ndim == 2 for k in keys):
            raise SpectuneError(
                f"lora.init={name}: objective {ctx.config.objective!r} makes training batches "
                "without input_ids / attention_mask / labels token rows to run the model on; "
                "use lora.init=default, gaussian, pissa, olora or orthogonal with it"
            )
        batches.append({k: batch[k] for k in keys})
    return batches


def _labelled(batches: list[dict[str, Any]], r: int, name: str) -> None:
    """EVA's SVD skips a batch with fewer than r labelled tokens (and loops on without end
    when every batch does)."""
    few = [int((b["labels"] != -100).sum()) for b in batches]
    if min(few) < r:
        raise SpectuneError(
            f"lora.init={name}: a training batch has {min(few)} labelled tokens, fewer than "
            f"lora.r={r}, and EVA needs at least r per batch; raise "
            "train.per_device_train_batch_size or lower lora.r"
        )


def before_wrap(name: str, ctx: BuildContext, model: nn.Module, peft_config: Any) -> None:
    """What peft computes on the base model before ``get_peft_model``: CorDA's covariances
    and eigen-decompositions, LoRA-GA's gradients (from the training batches)."""
    import torch

    kind = family(name)
    if kind in REWRITE_BASE and ctx.new_tokens:
        raise SpectuneError(
            f"lora.init={name} rewrites the base weights, and spectune has not checked its "
            "converted adapter with trained token rows; set data.end_of_turn=text"
        )
    if kind not in ("corda", "lora_ga"):
        return
    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items()} for b in training_batches(ctx, name)]
    if kind == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        def run_model() -> None:  # one example at a time, without its padding (peft's hook
            for b in batches:  # takes one sequence: (tokens, features))
                for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True):
                    model(input_ids=ids[mask.bool()][None])

        with torch.no_grad():
            preprocess_corda(model, peft_config, run_model=run_model)
    else:
        from peft.tuners.lora.loraga import preprocess_loraga

        def train_step() -> None:
            for b in batches:
                model(**b).loss.backward()

        preprocess_loraga(model, peft_config, train_step=train_step)


def after_wrap(name: str, ctx: BuildContext, model: Any) -> None:
    """What peft computes on the wrapped model: EVA's A from the inputs' singular vectors."""
    if name != "eva":
        return
    from peft import initialize_lora_eva_weights

    device = next(model.parameters()).device
    batches = [{k: v.to(device) for k, v in b.items()} for b in training_batches(ctx, name)]
    _labelled(batches, ctx.config.section("lora").r, name)
    initialize_lora_eva_weights(model, dataloader=batches, show_progress_bar=ctx.progress)


__all__ = [
    "DATA_DRIVEN",
    "INITS",
    "NOT_OFFERED",
    "ON_4BIT",
    "REWRITE_BASE",
    "after_wrap",
    "before_wrap",
    "check_init",
    "check_method_init",
    "family",
    "peft_options",
    "training_batches",
]
