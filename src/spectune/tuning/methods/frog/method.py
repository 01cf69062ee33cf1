"""FROG through the registry: spectune's SVD-relevance sparse fine-tuning.

The method itself lives in :mod:`spectune.tuning.methods.frog` (relevance S_ij = sum_k sigma_k |u_ik v_jk|,
Frobenius-norm importance splitting the budget G over the targets, the top weights of each
matrix trainable as a sparse delta, relevance-scaled init and guided noise). This module
adapts it to the recipe:

- config: the ``frog:`` section holds every :class:`~spectune.tuning.methods.frog.FrogConfig` field but
  ``target_modules``, ``exclude_modules`` and ``seed``, which are the run's;
- training: the guided noise follows the optimizer step (:class:`~spectune.tuning.methods.frog.training.
  FrogNoiseStep`); Trainer checkpoints hold only the indices and values (FROG's own format),
  and a resumed run checks that its plan picks the same entries;
- adapter: ``frog_config.json`` + ``adapter_model.safetensors`` (:func:`spectune.tuning.methods.frog.save_frog`),
  and in ``peft/`` the same delta as a peft SHiRA adapter (:func:`spectune.tuning.methods.frog.
  save_frog_as_shira`: loads with plain ``PeftModel.from_pretrained`` and merges with
  ``merge_and_unload()`` to the same weights as ``merge_frog``; zero-padded to SHiRA's one
  count per matrix). peft cannot carry FROG as a tuner of its own: ``register_peft_method``
  accepts only members of peft's closed ``PeftType`` enum, so a ``"FROG"`` adapter would not
  load in plain peft. When one r cannot hold a matrix's entries the export is skipped with a
  note;
- spectra: the sparse delta D of each target, against the base matrix.
"""

from __future__ import annotations

from dataclasses import MISSING, field, fields, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from spectune.errors import SpectuneError
from spectune.tuning.methods import register_method
from spectune.tuning.methods.base import (
    BuildContext,
    Built,
    MemoryTerms,
    Method,
    MethodPlan,
    SpectraInput,
    meta_model,
    resolve_model_dtype,
    target_modules,
)
from spectune.tuning.methods.frog.config import FrogConfig
from spectune.tuning.methods.frog.model import (
    apply_frog,
    frog_modules,
    load_frog,
    merge_frog,
    plan_frog,
    read_adapter,
    save_frog,
)
from spectune.tuning.methods.frog.peft_export import save_frog_as_shira, shira_export_plan

if TYPE_CHECKING:
    from spectune.tuning.config import TuneConfig

#: sub-folder of the adapter that holds the peft (SHiRA) copy
PEFT_EXPORT = "peft"

#: FrogConfig fields that are the run's own (top-level keys of the config)
SHARED = ("target_modules", "exclude_modules", "seed")


def _section_fields() -> list[tuple[str, Any, Any]]:
    out = []
    for f in fields(FrogConfig):
        if f.name in SHARED:
            continue
        default = (
            field(default=f.default, metadata=f.metadata)
            if f.default is not MISSING
            else field(default_factory=f.default_factory, metadata=f.metadata)
        )
        out.append((f.name, f.type, default))
    return out


def _validate(self: Any) -> None:
    """Validate through FrogConfig (its messages name the field)."""
    config = self.frog_config(target_modules="all-linear", exclude_modules=None, seed=0)
    for name in (f.name for f in fields(self)):
        setattr(self, name, getattr(config, name))


def _frog_config(self: Any, *, target_modules: Any, exclude_modules: Any, seed: int) -> FrogConfig:
    data = {f.name: getattr(self, f.name) for f in fields(self)}
    data.update(target_modules=target_modules, exclude_modules=exclude_modules, seed=seed)
    return FrogConfig.from_dict(data, source="frog")


#: The ``frog:`` section: FrogConfig's fields but the run's own (target_modules, seed).
FrogSection = make_dataclass(
    "FrogSection",
    _section_fields(),
    namespace={
        "__post_init__": _validate,
        "frog_config": _frog_config,
        "__doc__": "The frog: section (spectune.tuning.methods.frog.FrogConfig but target_modules "
        "and seed, which are the run's).",
    },
)
FrogSection.__module__ = __name__


def frog_config(config: TuneConfig) -> FrogConfig:
    """The :class:`FrogConfig` of a run (its section plus the run's targets and seed)."""
    return config.section("frog").frog_config(
        target_modules=config.target_modules,
        exclude_modules=config.exclude_modules,
        seed=config.seed,
    )


def load_frog_values(model: nn.Module, folder: Path) -> None:
    """Put the delta values of a FROG checkpoint into a FROG model with the same layers."""
    _, targets, tensors = read_adapter(folder)
    layers = frog_modules(model)
    if set(targets) != set(layers):
        raise SpectuneError(
            f"checkpoint {folder} holds FROG layers for other modules than this run's; resume "
            "with the config the run was started with"
        )
    for name, layer in layers.items():
        idx = tensors[name + ".frog_indices"].to(torch.int64)
        if not torch.equal(idx, layer.indices.cpu()):
            raise SpectuneError(
                f"checkpoint {folder}: the trainable entries of {name} differ from this run's "
                "plan; resume with the same model and config"
            )
        with torch.no_grad():
            layer.delta.copy_(tensors[name + ".frog_values"].to(layer.delta.dtype))


class FrogMethod(Method):
    description = "spectune FROG: a sparse delta on the top SVD-relevance weights"
    sections = {"frog": FrogSection}
    settings = {"frog_budget": "frog.budget"}
    unshardable = (
        "FROG's sparse deltas (index buffers and value vectors per layer, saved in its "
        "own checkpoint format from the whole layers) cannot be sharded"
    )

    def check(self, config: TuneConfig) -> None:
        fc = frog_config(config)
        if fc.noise_scale > 0 and config.checkpointing():
            raise SpectuneError(
                "frog.noise_scale > 0 cannot be combined with train.gradient_checkpointing: "
                "the recomputed forward would draw other noise; switch one of them off"
            )

    def build(self, ctx: BuildContext, model: nn.Module) -> Built:
        plan = plan_frog(model, frog_config(ctx.config), progress=ctx.progress)
        model = apply_frog(model, plan)
        return Built(model, targets=list(plan.shapes), state=plan)

    def match_budget(self, ctx: BuildContext, n_params: int) -> list[str] | None:
        meta = meta_model(ctx.model_dir)
        modules = dict(meta.named_modules())
        total = sum(modules[n].weight.numel() for n in target_modules(ctx, meta))
        return [f"frog.budget={n_params / total!r}"]

    def trainable_count(self, ctx: BuildContext, model: nn.Module) -> int:
        """``frog.budget`` x each target's weights (the plan rounds per matrix: within a
        count per matrix of what it selects)."""
        budget = ctx.config.section("frog").budget
        modules = dict(model.named_modules())
        return sum(round(budget * modules[n].weight.numel()) for n in target_modules(ctx, model))

    def memory_terms(self, ctx: BuildContext, model: nn.Module) -> MemoryTerms:
        """Its values, and per value a flat index and a column (int64) and the base value it
        replaces (in ``model_dtype``)."""
        trainable = self.trainable_count(ctx, model)
        dtype = getattr(torch, resolve_model_dtype(ctx.config.model_dtype)[0])
        return MemoryTerms(trainable, buffers=trainable * (16 + dtype.itemsize))

    def plan(self, ctx: BuildContext) -> MethodPlan:
        """The per-matrix plan on the model's weights (:mod:`.plan_view`)."""
        # lazy, like figures(): matplotlib, for showing only
        from spectune.tuning.methods.frog.plan_view import frog_method_plan

        return frog_method_plan(ctx, frog_config(ctx.config))

    def callbacks(self, config: TuneConfig) -> list[Any]:
        # lazy: the Trainer's module imports peft and bitsandbytes, which the registry need not
        from spectune.tuning.methods.frog.training import FrogNoiseStep

        return [FrogNoiseStep()]

    def save_checkpoint(self, model: nn.Module, folder: Path) -> bool:
        save_frog(model, folder)
        return True

    def load_checkpoint(self, model: nn.Module, folder: Path) -> bool:
        load_frog_values(model, folder)
        return True

    def save(self, built: Built, folder: Path) -> None:
        save_frog(built.model, folder)
        plan = shira_export_plan(built.model)
        if plan.fits:
            save_frog_as_shira(built.model, folder / PEFT_EXPORT)
        else:
            built.notes.append(
                f"no peft (SHiRA) copy of the adapter: {len(plan.too_big)} matrix(es) cannot hold "
                f"r (in + out) entries at the r = {plan.r} that the largest matrix needs; the "
                "FROG adapter itself is complete"
            )

    def load(self, ctx: BuildContext, base: nn.Module, folder: Path) -> nn.Module:
        return load_frog(base, folder)

    def merge(self, built: Built, ctx: BuildContext, folder: Path) -> nn.Module:
        return merge_frog(built.model)

    def spectra(self, built: Built, ctx: BuildContext, folder: Path) -> SpectraInput:
        deltas = {f"{n}.weight": m.delta_weight() for n, m in frog_modules(built.model).items()}
        return SpectraInput(deltas, update=True)

    def extras(self, built: Built) -> dict[str, Any]:
        if built.state is None:
            return {}
        shira = shira_export_plan(built.model)
        return {
            **built.state.summary(),
            "peft_export": {
                "r": shira.r,
                "fits": shira.fits,
                "stored_entries": shira.shira_entries,
                "frog_entries": shira.frog_entries,
                "overhead": shira.overhead,
            },
        }

    def figures(self, built: Built) -> dict[str, Any]:
        if built.state is None:
            return {}
        from spectune.tuning.methods.frog.plots import layer_importance_figure  # matplotlib

        return {"frog_layer_importance.png": layer_importance_figure(built.state.table)}


register_method("frog", FrogMethod())

__all__ = ["PEFT_EXPORT", "FrogMethod", "FrogSection", "frog_config", "load_frog_values"]
