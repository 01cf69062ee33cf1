"""PiSSA (Meng et al. 2024) through peft: LoRA initialised from the principal singular
triplets of W.

A = sqrt(S_r) V_r^T and B = U_r sqrt(S_r) take the top-r part of W, and the base keeps the
residual W - s B A, so training starts at the pretrained model and moves the principal
directions first. Because the base weights change, the adapter is saved the way peft
documents it: the initial adapter is kept (in the run's checkpoints folder) and
``save_pretrained(..., path_initial_model_for_weight_conversion=...)`` turns the trained one
into a plain LoRA adapter of rank 2r that applies to the *unmodified* base model. That
adapter loads with ``PeftModel.from_pretrained`` on the original weights; its spectra are the
whole update Delta W; merging the training model gives W_residual + s B A = W + Delta W.

It is ``method=lora`` with ``lora.init=pissa`` (:mod:`.lora_init`), kept as a method of its own.
``pissa.svd_niter``: None runs the exact SVD; a number runs peft's fast randomized SVD with
that many subspace iterations (``init_lora_weights="pissa_niter_<n>"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spectune import _check as check
from spectune.tuning.methods import register_method
from spectune.tuning.methods.lora import LoraMethod, LoraSection

if TYPE_CHECKING:
    from spectune.tuning.config import TuneConfig


@dataclass
class PissaSection:
    """The ``pissa:`` section."""

    svd_niter: int | None = field(
        default=None,
        metadata={"help": "None: exact SVD of each W; n: peft's fast SVD with n iterations."},
    )

    def __post_init__(self) -> None:
        if self.svd_niter is not None:
            self.svd_niter = check.integer("pissa.svd_niter", self.svd_niter, minimum=1)


class PissaMethod(LoraMethod):
    """LoRA with ``lora.init`` fixed to pissa (``pissa_niter_<n>`` with ``pissa.svd_niter``)."""

    sections = {"lora": LoraSection, "pissa": PissaSection}

    def init_name(self, config: TuneConfig) -> str:
        niter = config.section("pissa").svd_niter
        return "pissa" if niter is None else f"pissa_niter_{niter}"


register_method(
    "pissa",
    PissaMethod(
        "peft PiSSA: LoRA from the top-r SVD of W, the residual stays frozen", init="pissa"
    ),
)

__all__ = ["PissaMethod", "PissaSection"]
