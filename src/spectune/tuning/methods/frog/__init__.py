"""FROG: Frobenius-guided Relevance Optimization with Guided noise (sparse fine-tuning).

FROG trains a small, chosen subset of a model's own weights instead of adding low-rank
matrices. This package is its reference implementation; the method as implemented:

1. Relevance of weight (i, j) of a target matrix W = U diag(sigma) V^T:
   S_ij = sum_k sigma_k |u_ik| |v_jk|, i.e. S = |U| diag(sigma) |V|^T (:func:`relevance`;
   exact SVD, or a randomized truncated SVD of rank k for large matrices).
2. Matrix importance R_i = ||W_i||_F / sum_j ||W_j||_F (experimental alternative:
   :func:`~spectune.tuning.methods.frog.scoring.alpha_importance`, R_i tilted by the power-law alpha).
3. Budget: T_trainable = round(G T) of the T target weights; matrix i gets
   round(T_trainable R_i) with largest-remainder rounding and caps, so the total is exact.
4. Selection: the top weights by S_ij in each matrix ("per_matrix"), or the top
   T_trainable over all matrices ("global", layer importance = sum of selected scores).
5. The selected weights train as a sparse delta D (indices + a value vector) on the frozen
   W (:class:`FrogLinear`). The paper's init w = alpha S_ij N(0, 1) is read as the delta's
   initial value, so ``init_scale = 0`` (default) starts exactly at the pretrained model
   (taken literally, the paper's formula would replace the pretrained weights by noise).
6. Guided noise: in training forward passes the frozen weights get
   beta S_ij N(0, sigma_noise^2), fresh each pass, never stored, off in eval mode,
   optionally decaying linearly to zero.

Memory and speed: only the K delta values train (optimizer state 2 K numbers for Adam); the
target weight tensors hold W + D in place, with the exact W of the K entries kept aside, so
no weight copy is made per step; the delta gradient is a sampled product on the K entries.
Guided noise costs S for every target weight (float32 = the size of the targets;
``score_dtype="bfloat16"`` halves it) plus one noisy weight copy per layer from forward to
backward, and a randn of every target weight per training forward. Details:
:class:`FrogLinear`.

The folder holds everything about FROG: :mod:`.config` (FrogConfig), :mod:`.scoring`
(relevance, importance, the streaming top-k), :mod:`.budget` (allocation), :mod:`.layer`
(FrogLinear), :mod:`.model` (plan, apply, save, load, merge), :mod:`.peft_export` (the SHiRA
copy), :mod:`.training` (the noise-step callback), :mod:`.plots` (layer-importance charts),
:mod:`.plan_view` (the plan as ``spectune methods frog --model M`` shows and writes it) and
:mod:`.method` (the registration: FROG's hooks for the recipe). Target matching is shared:
:mod:`spectune.models.targets`.

Typical use::

    from spectune.tuning.methods.frog import FrogConfig, plan_frog, apply_frog, save_frog, load_frog, merge_frog
    plan = plan_frog(model, FrogConfig(budget=0.01))   # plan.table: one row per matrix
    model = apply_frog(model, plan)                     # only the deltas train
    ...train...
    save_frog(model, "adapter/")                        # frog_config.json + safetensors
    model = load_frog(base_model, "adapter/")
    merged = merge_frog(model)                          # plain nn.Linear, save_pretrained works
"""

from spectune.tuning.methods.frog.budget import allocate, total_trainable
from spectune.tuning.methods.frog.config import FrogConfig
from spectune.tuning.methods.frog.layer import FrogLinear
from spectune.tuning.methods.frog.model import (
    FrogPlan,
    apply_frog,
    find_targets,
    frog_modules,
    load_frog,
    merge_frog,
    plan_frog,
    save_frog,
    set_frog_step,
    trainable_summary,
)
from spectune.tuning.methods.frog.peft_export import save_frog_as_shira, shira_export_plan
from spectune.tuning.methods.frog.scoring import alpha_importance, frobenius_importance, relevance

__all__ = [
    "FrogConfig",
    "FrogLinear",
    "FrogPlan",
    "allocate",
    "alpha_importance",
    "apply_frog",
    "find_targets",
    "frobenius_importance",
    "frog_modules",
    "load_frog",
    "merge_frog",
    "plan_frog",
    "relevance",
    "save_frog",
    "save_frog_as_shira",
    "set_frog_step",
    "shira_export_plan",
    "total_trainable",
    "trainable_summary",
]
