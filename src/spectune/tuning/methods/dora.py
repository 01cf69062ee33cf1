"""DoRA (Liu et al. 2024) through peft: W' = m * (W + s B A) / ||W + s B A||_c.

The LoRA update sets the direction of each output's weight vector; a trained magnitude
vector m (one number per output) sets its length. It adds ``out_features`` parameters per
target to LoRA's r (in + out). Unmerged, peft renormalizes every weight at each forward, so
generation is several times slower than LoRA's until the adapter is merged.
"""

from __future__ import annotations

from spectune.tuning.methods import register_method
from spectune.tuning.methods.lora import LoraMethod

register_method(
    "dora", LoraMethod("peft DoRA: LoRA direction plus a trained magnitude per output", dora=True)
)
