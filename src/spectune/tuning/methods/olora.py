"""OLoRA (Buyukakyuz 2024) through peft: LoRA initialised from a QR decomposition of W.

A and B come from the first r columns of Q and rows of R (W = Q R), scaled, and the base
keeps W - s B A; training starts at the pretrained model along orthonormal directions. Saved,
loaded and merged as PiSSA is (:mod:`.pissa`): the adapter written is a plain rank-2r LoRA
adapter on the original base. It is ``method=lora`` with ``lora.init=olora``.
"""

from __future__ import annotations

from spectune.tuning.methods import register_method
from spectune.tuning.methods.lora import LoraMethod

register_method("olora", LoraMethod("peft OLoRA: LoRA from a QR decomposition of W", init="olora"))
