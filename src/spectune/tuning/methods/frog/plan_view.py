"""FROG's selection plan on a model, as ``spectune methods frog --model M`` shows it.

:func:`frog_method_plan` loads the model's weights (float32; a model that is not a causal LM
is read as its bare transformer, whose linear layers are the same), runs :func:`plan_frog`
and describes the result as a :class:`~spectune.tuning.methods.base.MethodPlan`: a headline,
the per-matrix table (``frog_plan.csv``), the plan as JSON (``frog_plan.json``: summary with
the model folder, and every row) and the layer-importance charts (``layer_importance.png``;
``global_selection.png`` for ``selection=global``). The CLI prints and writes it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from spectune.errors import SpectuneError
from spectune.tuning.methods.base import BuildContext, MethodPlan
from spectune.tuning.methods.frog.config import FrogConfig
from spectune.tuning.methods.frog.model import plan_frog
from spectune.tuning.methods.frog.plots import global_selection_figure, layer_importance_figure

#: the table's columns printed in the terminal (the file holds all of them)
SHOWN_COLUMNS = ["name", "shape", "importance", "trainable", "percent"]


def load_plan_model(folder: Path, *, progress: bool) -> nn.Module:
    """The model in ``folder`` in float32 and eval mode, to plan FROG on its weights.

    Raises:
        SpectuneError: transformers cannot load it.
    """
    was_enabled = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        except ValueError:  # not a causal LM: the bare model still has its linear layers
            model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise SpectuneError(f"cannot load the model in {folder}: {exc}") from None
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return model.eval()


def frog_method_plan(ctx: BuildContext, config: FrogConfig) -> MethodPlan:
    """FROG's plan with ``config`` on the model in ``ctx.model_dir``, to show and write."""
    folder = ctx.model_dir
    model = load_plan_model(folder, progress=ctx.progress)
    plan = plan_frog(model, config, progress=ctx.progress)
    table = plan.table
    report = plan.to_dict()
    report["summary"]["model"] = str(folder)
    figures = {"layer_importance.png": layer_importance_figure(table)}
    if config.selection == "global":
        figures["global_selection.png"] = global_selection_figure(table)
    s = report["summary"]
    headline = (
        f"FROG plan for {folder.name}: {s['num_matrices']} matrices, "
        f"{s['total_trainable']:,} of {s['total_weights']:,} weights trainable "
        f"({s['trainable_percent']:.4g}%), selection={config.selection}"
    )
    return MethodPlan(
        headline,
        table,
        columns=SHOWN_COLUMNS,
        files={"frog_plan.csv": table, "frog_plan.json": report, **figures},
        table_file="frog_plan.csv",
    )


__all__ = ["SHOWN_COLUMNS", "frog_method_plan", "load_plan_model"]
