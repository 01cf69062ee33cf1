"""Plan, apply, save, load and merge FROG on a whole model.

``plan_frog`` scores the target matrices and decides which weights train (a :class:`FrogPlan`
with a per-matrix ``table``); ``apply_frog`` swaps each target ``nn.Linear`` for a
:class:`~spectune.tuning.methods.frog.layer.FrogLinear` and freezes everything else; ``save_frog`` /
``load_frog`` write and read ``frog_config.json`` + ``adapter_model.safetensors`` (only the
indices and the delta values); ``merge_frog`` folds the deltas back into plain ``nn.Linear``
layers so that ``save_pretrained`` gives an ordinary model.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spectune import __version__
from spectune._io import atomic_path, write_json
from spectune._progress import progress_bar
from spectune.errors import SpectuneError
from spectune.models.targets import layer_of, match_modules
from spectune.tuning.methods.frog.budget import allocate, overparam_importance, total_trainable
from spectune.tuning.methods.frog.config import FrogConfig
from spectune.tuning.methods.frog.layer import FrogLinear, _check_indices, name_seed
from spectune.tuning.methods.frog.scoring import (
    RunningTopK,
    _compute_dtype,
    alpha_importance,
    check_matrix,
    frobenius_importance,
    frobenius_norm,
    matrix_alpha,
    relevance,
)

if TYPE_CHECKING:
    import os

CONFIG_NAME = "frog_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "spectune-frog"
FORMAT_VERSION = 1
INDICES_SUFFIX = ".frog_indices"
VALUES_SUFFIX = ".frog_values"

_SCORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FrogPlan:
    """Which weights of which matrices train, and why (the output of :func:`plan_frog`).

    Attributes:
        config: the FrogConfig the plan was made with.
        table: one row per target matrix, columns ``name, layer, module, shape, size,
            frobenius, [alpha,] importance, trainable, percent, score_sum``. ``importance``
            is R_i (per_matrix; alpha-tilted with importance='alpha') or, for 'global', the
            matrix's share of the sum of all selected scores (paper section 10);
            ``score_sum`` is the sum of S_ij over the matrix's selected weights.
        indices: module name -> sorted flat indices (int64, shape (K_i,)) of its trainable
            weights.
        init_values: module name -> initial delta values (K_i,); empty when init_scale = 0.
        noise_scores: module name -> S (N, M) in ``config.score_dtype`` with zeros at the
            selected entries; empty when noise_scale = 0.
        shapes: module name -> (N, M).
        total_weights: T, the number of weights in the target matrices.
        total_trainable: T_trainable = round(G * T) (equals table.trainable.sum()).
    """

    config: FrogConfig
    table: pd.DataFrame
    indices: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, int]]
    total_weights: int
    total_trainable: int
    init_values: dict[str, torch.Tensor] = field(default_factory=dict)
    noise_scores: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Headline numbers and the config, JSON-able."""
        return {
            "budget": self.config.budget,
            "selection": self.config.selection,
            "importance": self.config.importance,
            "svd": self.config.svd,
            "seed": self.config.seed,
            "num_matrices": len(self.indices),
            "total_weights": self.total_weights,
            "total_trainable": self.total_trainable,
            "trainable_percent": 100.0 * self.total_trainable / self.total_weights,
            "config": self.config.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Summary plus the table's rows (no index tensors), JSON-able."""
        rows = [
            {
                k: (None if v is pd.NA else v.item() if hasattr(v, "item") else v)
                for k, v in r.items()
            }
            for r in self.table.to_dict("records")
        ]
        return {"summary": self.summary(), "matrices": rows}

    def __repr__(self) -> str:
        return (
            f"FrogPlan({len(self.indices)} matrices, {self.total_trainable}/{self.total_weights}"
            f" trainable = {100.0 * self.total_trainable / self.total_weights:.3g}%, "
            f"selection={self.config.selection!r})"
        )


# -- targets ------------------------------------------------------------------------------


def find_targets(model: nn.Module, config: FrogConfig) -> list[str]:
    """Names of the modules ``config.target_modules`` selects, in model order.

    Raises:
        SpectuneError: nothing matches (the message lists the model's linear modules), a
            match is not an ``nn.Linear`` with a float weight, a match is already a
            FrogLinear, or a match's weight is tied to another module.
    """
    modules = dict(model.named_modules())
    already = [n for n, m in modules.items() if isinstance(m, FrogLinear)]
    if already:
        raise SpectuneError(
            f"this model already has FROG layers ({already[0]}, ...); plan and apply FROG on "
            "the base model, or merge_frog() first"
        )
    target = config.target_modules
    matched = match_modules(
        model, target, config.exclude_modules, label="FrogConfig.target_modules"
    )
    bad = [n for n in matched if not isinstance(modules[n], nn.Linear)]
    if bad:
        kinds = ", ".join(f"{n} ({type(modules[n]).__name__})" for n in bad[:5])
        raise SpectuneError(
            f"FrogConfig.target_modules={target!r} selects module(s) that are not nn.Linear: "
            f"{kinds}{' ...' if len(bad) > 5 else ''}; FROG supports nn.Linear layers only, "
            "narrow target_modules or add them to exclude_modules"
        )
    for n in matched:
        w = modules[n].weight
        if not w.is_floating_point() or tuple(w.shape) != (
            modules[n].out_features,
            modules[n].in_features,
        ):
            raise SpectuneError(
                f"tensor {n}.weight ({type(modules[n]).__name__}, dtype {w.dtype}, shape "
                f"{tuple(w.shape)}) is not a plain float weight; quantized layers are not "
                "supported by FROG: load the model in float32/bfloat16"
            )
    owners: dict[int, list[str]] = {}
    for mod_name, mod in modules.items():
        for p_name, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    for n in matched:
        shared = owners.get(id(modules[n].weight), [])
        if len(shared) > 1:
            raise SpectuneError(
                f"tensor {n}.weight is tied to {', '.join(s for s in shared if s != n + '.weight')}"
                "; FROG cannot train a tied weight (its merge would untie it): add "
                f"{n.rsplit('.', 1)[-1]!r} to exclude_modules"
            )
    return matched


# -- plan ---------------------------------------------------------------------------------


def _progress(total: int, desc: str, enabled: bool):
    return progress_bar(total, desc, enabled=enabled, unit="matrix")


def plan_frog(
    model: nn.Module,
    config: FrogConfig | None = None,
    *,
    alphas: dict[str, float] | None = None,
    progress: bool = False,
) -> FrogPlan:
    """Score every target matrix and choose its trainable weights.

    Two passes over the target matrices, one SVD each, and never every S at once:

    1. Frobenius norms (and, for importance='alpha', power-law alphas), which fix the
       budget: T_trainable = round(G T) and, for 'per_matrix', each matrix's count by
       largest-remainder allocation (:func:`spectune.tuning.methods.frog.budget.allocate`).
    2. Per matrix: S = relevance(W) and its top entries. 'per_matrix' keeps the top P_i of
       each matrix. 'global' streams: a running candidate set (score, matrix, position)
       takes each matrix's entries above the current threshold (the T_trainable-th best
       score at the last cut-back) and is cut back to its top T_trainable with
       ``torch.topk`` whenever it passes 2 T_trainable. This is exact up to ties (a weight
       of the global top set is never below a threshold, and stays in the top of any subset
       holding it) and its memory is O(T_trainable) plus one S; the selected set must
       be held anyway, because its indices are the output. Layer importance is then each
       matrix's share of the sum of selected scores.

    With noise_scale > 0 the plan keeps S of every target (``config.score_dtype``), which
    guided noise needs during training: that is the one case where all S are held.

    Args:
        model: any ``nn.Module`` (a Hugging Face model works).
        config: FrogConfig (default: FrogConfig()).
        alphas: importance='alpha' only: precomputed power-law alphas by module name (e.g.
            from a spectral analysis already run). Matrices missing from it get theirs from
            spectune's spectral engine, computed lazily.
        progress: show a progress bar over the matrices.

    Returns:
        The plan (its ``table`` is a pandas DataFrame).

    Raises:
        SpectuneError: no/bad targets, NaN/Inf weights, a budget that rounds to zero.
    """
    config = config or FrogConfig()
    if not isinstance(config, FrogConfig):
        raise SpectuneError(f"config must be a FrogConfig, got {type(config).__name__}")
    names = find_targets(model, config)
    weights = {n: model.get_submodule(n).weight for n in names}

    # pass 1: norms, alphas, budget
    norms = np.zeros(len(names))
    for i, n in enumerate(names):
        check_matrix(weights[n].detach(), f"{n}.weight")
        norms[i] = frobenius_norm(weights[n])
    sizes = np.array([weights[n].numel() for n in names], dtype=np.int64)
    shapes = {n: (int(weights[n].shape[0]), int(weights[n].shape[1])) for n in names}
    total = int(sizes.sum())
    k_total = total_trainable(config.budget, total)
    importance, alpha_values = _importance(names, weights, norms, config, alphas, progress)
    counts = allocate(k_total, importance, sizes) if config.selection == "per_matrix" else None

    # pass 2: relevance and selection
    indices: dict[str, torch.Tensor] = {}
    selected_scores: dict[str, torch.Tensor] = {}
    noise_scores: dict[str, torch.Tensor] = {}
    running = RunningTopK(k_total) if counts is None else None
    with _progress(len(names), "FROG relevance", progress) as bar:
        for i, n in enumerate(names):
            S = relevance(
                weights[n],
                config.svd,
                config.svd_rank,
                niter=config.svd_niter,
                seed=name_seed(config.seed, n, "svd"),
                name=f"{n}.weight",
            )
            flat = S.reshape(-1)  # (N*M,)
            if config.noise_scale > 0:
                noise_scores[n] = S.to(_SCORE_DTYPES[config.score_dtype])
            if counts is not None:
                top = torch.topk(flat, int(counts[i]), sorted=False).indices
                indices[n] = top.sort().values
                selected_scores[n] = flat.index_select(0, indices[n])
            else:
                running.add(flat, i)
            del S, flat
            bar.update(1)
    if running is not None:  # global: split the surviving candidates by matrix
        indices, selected_scores = _split_candidates(running, names, weights, total)

    init_values: dict[str, torch.Tensor] = {}
    for n in names:
        if config.noise_scale > 0:
            noise_scores[n].view(-1).index_fill_(0, indices[n], 0)  # noise: frozen weights only
        if config.init_scale > 0:
            gen = torch.Generator().manual_seed(name_seed(config.seed, n, "init"))
            s = selected_scores[n]
            eps = torch.randn(s.shape, generator=gen, dtype=s.dtype)
            init_values[n] = config.init_scale * s * eps

    shown = [f"{shapes[n][0]}x{shapes[n][1]}" for n in names]
    columns = {"name": names, "shape": shown, "size": sizes, "frobenius": norms}
    table = _plan_table(columns, alpha_values, importance, indices, selected_scores, config)
    if int(table["trainable"].sum()) != k_total:  # pragma: no cover - by construction
        raise RuntimeError(f"FROG selected {table['trainable'].sum()} weights, budget is {k_total}")
    return FrogPlan(
        config=config,
        table=table,
        indices=indices,
        shapes=shapes,
        total_weights=total,
        total_trainable=k_total,
        init_values=init_values,
        noise_scores=noise_scores,
    )


def _importance(
    names: list[str],
    weights: dict[str, torch.Tensor],
    norms: np.ndarray,
    config: FrogConfig,
    alphas: dict[str, float] | None,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Matrix importance R_i (Frobenius or alpha-tilted, then moved off or onto the
    overparameterized matrices), and the power-law alphas where they were needed."""
    alpha_values = None
    if config.importance == "alpha":
        alpha_values = _resolve_alphas(names, weights, alphas, progress)
        importance = alpha_importance(
            norms, alpha_values, power=config.alpha_power, alpha_range=config.alpha_range
        )
    else:
        importance = frobenius_importance(norms)
    if config.overparam != "none":  # move budget off (or onto) alpha > overparam_alpha matrices
        if alpha_values is None:
            alpha_values = _resolve_alphas(names, weights, alphas, progress)
        importance = overparam_importance(
            importance,
            alpha_values,
            mode=config.overparam,
            factor=config.overparam_factor,
            threshold=config.overparam_alpha,
        )
    return importance, alpha_values


def _split_candidates(
    running: RunningTopK, names: list[str], weights: dict[str, torch.Tensor], total: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """'global' selection: the surviving candidates split by matrix -> (sorted flat indices,
    their scores) per module name."""
    cand_val, cand_mat, cand_pos = running.result()
    order = torch.argsort(cand_mat * total + cand_pos)  # by matrix, then by position
    cand_mat, cand_pos, cand_val = cand_mat[order], cand_pos[order], cand_val[order]
    bounds = torch.searchsorted(cand_mat, torch.arange(len(names) + 1))
    indices, scores = {}, {}
    for i, n in enumerate(names):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        indices[n] = cand_pos[lo:hi].clone()
        scores[n] = cand_val[lo:hi].to(_compute_dtype(weights[n]))
    return indices, scores


def _plan_table(
    columns: dict[str, Any],
    alpha_values: np.ndarray | None,
    importance: np.ndarray,
    indices: dict[str, torch.Tensor],
    selected_scores: dict[str, torch.Tensor],
    config: FrogConfig,
) -> pd.DataFrame:
    """:attr:`FrogPlan.table` from the per-matrix ``name, shape, size, frobenius`` columns."""
    names, sizes = columns["name"], columns["size"]
    score_sum = np.array([float(selected_scores[n].double().sum()) for n in names])
    trainable = np.array([indices[n].numel() for n in names], dtype=np.int64)
    if config.selection == "global":
        importance = score_sum / score_sum.sum() if score_sum.sum() > 0 else np.zeros(len(names))
    layers = [layer_of(n) for n in names]
    table: dict[str, Any] = {
        "name": names,
        "layer": pd.array([lay for lay, _ in layers], dtype="Int64"),
        "module": [kind for _, kind in layers],
        "shape": columns["shape"],
        "size": sizes,
        "frobenius": columns["frobenius"],
    }
    if alpha_values is not None:
        table["alpha"] = alpha_values
    table.update(
        importance=importance,
        trainable=trainable,
        percent=100.0 * trainable / sizes,
        score_sum=score_sum,
    )
    return pd.DataFrame(table)


def _resolve_alphas(
    names: list[str],
    weights: dict[str, torch.Tensor],
    alphas: dict[str, float] | None,
    progress: bool,
) -> np.ndarray:
    given = dict(alphas or {})
    out = np.full(len(names), np.nan)
    missing = [i for i, n in enumerate(names) if n not in given]
    for i, n in enumerate(names):
        if n in given:
            try:
                out[i] = float(given[n])
            except (TypeError, ValueError):
                raise SpectuneError(f"alphas[{n!r}] must be a number, got {given[n]!r}") from None
    with _progress(len(missing), "power-law alphas", progress and bool(missing)) as bar:
        for i in missing:
            out[i] = matrix_alpha(weights[names[i]])
            bar.update(1)
    return out


# -- apply / merge ------------------------------------------------------------------------


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _linear_for(model: nn.Module, name: str, what: str) -> nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise SpectuneError(
            f"{what} names module {name}, which this {type(model).__name__} does not have; "
            "use the model it was made for"
        ) from None
    if isinstance(module, FrogLinear):
        raise SpectuneError(
            f"module {name} already is a FrogLinear; use the base model (or merge_frog first)"
        )
    if not isinstance(module, nn.Linear):
        raise SpectuneError(f"module {name} is a {type(module).__name__}, not nn.Linear")
    return module


def apply_frog(
    model: nn.Module, plan: FrogPlan | FrogConfig, *, progress: bool = False
) -> nn.Module:
    """Swap each planned ``nn.Linear`` for a FrogLinear; only the deltas stay trainable.

    Every parameter of the model is frozen (requires_grad=False) and each target layer
    becomes a :class:`FrogLinear` sharing the original weight and bias tensors (no copy),
    with its delta initialised from the plan (zeros unless init_scale > 0). The config is
    stored as ``model.frog_config`` for :func:`save_frog`. The model is changed in place.

    Args:
        model: the model the plan was made for.
        plan: a FrogPlan, or a FrogConfig to plan on the fly (``plan_frog(model, config)``).
        progress: progress bar while planning from a config.

    Returns:
        The same model object.

    Raises:
        SpectuneError: the plan does not fit the model (missing module, other shape, not
            nn.Linear, FROG already applied).
    """
    if isinstance(plan, FrogConfig):
        plan = plan_frog(model, plan, progress=progress)
    if not isinstance(plan, FrogPlan):
        raise SpectuneError(f"apply_frog needs a FrogPlan or FrogConfig, got {type(plan).__name__}")
    if any(isinstance(m, FrogLinear) for m in model.modules()):
        raise SpectuneError("this model already has FROG layers; apply FROG to the base model")
    linears = {}
    for name, shape in plan.shapes.items():
        module = _linear_for(model, name, "the FROG plan")
        if tuple(module.weight.shape) != tuple(shape):
            raise SpectuneError(
                f"the FROG plan was made for {name}.weight of shape {tuple(shape)}, this "
                f"model's has shape {tuple(module.weight.shape)}; plan again on this model"
            )
        linears[name] = module
    model.requires_grad_(False)
    cfg = plan.config
    for name, module in linears.items():
        layer = FrogLinear(
            module.weight,
            module.bias,
            plan.indices[name],
            plan.init_values.get(name),
            noise_scores=plan.noise_scores.get(name),
            noise_scale=cfg.noise_scale,
            noise_sigma=cfg.noise_sigma,
            noise_decay_steps=cfg.noise_decay_steps,
            seed=cfg.seed,
            name=name,
        )
        layer.train(module.training)
        _set_module(model, name, layer)
    model.frog_config = cfg
    return model


def frog_modules(model: nn.Module) -> dict[str, FrogLinear]:
    """Module name -> FrogLinear, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FrogLinear)}


def set_frog_step(model: nn.Module, step: int) -> None:
    """Set the guided-noise step t of every FrogLinear (to resume a run, or to count
    optimizer steps instead of forward passes: call it before each step)."""
    for layer in frog_modules(model).values():
        layer.set_noise_step(step)


def merge_frog(model: nn.Module) -> nn.Module:
    """Replace every FrogLinear by a plain ``nn.Linear`` with weight W + D.

    The merged weight is computed exactly as the FrogLinear's eval forward computes it, so
    the merged model's outputs are bitwise those of the FROG model in eval mode, and
    ``save_pretrained`` writes an ordinary model. Changes the model in place.

    Returns:
        The same model object, without ``frog_config``.

    Raises:
        SpectuneError: the model has no FrogLinear.
    """
    layers = frog_modules(model)
    if not layers:
        raise SpectuneError("merge_frog: the model has no FROG layers (apply_frog/load_frog first)")
    for name, layer in layers.items():
        _set_module(model, name, layer.to_linear())
    if "frog_config" in model.__dict__:
        del model.frog_config
    return model


# -- save / load --------------------------------------------------------------------------


def save_frog(model: nn.Module, out_dir: str | os.PathLike[str]) -> Path:
    """Write the adapter: ``frog_config.json`` and ``adapter_model.safetensors``.

    The safetensors file holds, per target module ``name``, exactly two tensors:
    ``name.frog_indices`` (flat positions, int32 when N*M < 2**31, else int64) and
    ``name.frog_values`` (the delta values). The JSON holds the config, the format version
    and per target the shape, count, weight dtype and the base weight's Frobenius norm (a
    fingerprint checked on load). Each file is written atomically, the weights first; the
    JSON records the weights file's size so that a mismatched pair is detected on load.

    Args:
        model: a model with FROG applied.
        out_dir: folder to write into (created if needed; other files are left alone).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        SpectuneError: the model has no FROG layers.
    """
    layers = frog_modules(model)
    if not layers:
        raise SpectuneError("save_frog: the model has no FROG layers (apply_frog/load_frog first)")
    config = getattr(model, "frog_config", None)
    if not isinstance(config, FrogConfig):
        raise SpectuneError("save_frog: the model has no frog_config; was it made by apply_frog?")
    tensors: dict[str, torch.Tensor] = {}
    targets: dict[str, Any] = {}
    for name, layer in layers.items():
        n_out, n_in = layer.weight.shape
        index_dtype = torch.int32 if n_out * n_in < 2**31 else torch.int64
        tensors[name + INDICES_SUFFIX] = layer.indices.to("cpu", index_dtype).contiguous()
        tensors[name + VALUES_SUFFIX] = layer.delta.detach().to("cpu").contiguous()
        targets[name] = {
            "shape": [n_out, n_in],
            "trainable": layer.num_trainable,
            "weight_dtype": str(layer.weight.dtype).removeprefix("torch."),
            "base_frobenius": frobenius_norm(layer.base_weight()),
        }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_json(
        out / CONFIG_NAME,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spectune_version": __version__,
            "config": config.to_dict(),
            "total_trainable": sum(t["trainable"] for t in targets.values()),
            "weights_file_bytes": (out / WEIGHTS_NAME).stat().st_size,
            "targets": targets,
        },
    )
    return out


def read_adapter(path: Path) -> tuple[FrogConfig, dict[str, Any], dict[str, torch.Tensor]]:
    cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not path.is_dir():
        raise SpectuneError(f"FROG adapter folder {path} does not exist")
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise SpectuneError(f"{p} is missing; is {path} a FROG adapter saved by save_frog?")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpectuneError(f"{cfg_path} is not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SpectuneError(f"{cfg_path} is not a spectune FROG config (format != {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise SpectuneError(
            f"{cfg_path} has format_version {meta.get('format_version')!r}; this spectune "
            f"reads version {FORMAT_VERSION}: upgrade spectune"
        )
    config = FrogConfig.from_dict(meta.get("config"), source=str(cfg_path))
    size = meta.get("weights_file_bytes")
    if size is not None and w_path.stat().st_size != size:
        raise SpectuneError(
            f"{w_path} is {w_path.stat().st_size} bytes but {cfg_path.name} expects {size}: the "
            "two files come from different saves; save the adapter again"
        )
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpectuneError(f"{w_path} is not a readable safetensors file ({exc})") from None
    targets = meta.get("targets")
    if not isinstance(targets, dict) or not targets:
        raise SpectuneError(f"{cfg_path} lists no targets")
    expected = {n + s for n in targets for s in (INDICES_SUFFIX, VALUES_SUFFIX)}
    if set(tensors) != expected:
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise SpectuneError(
            f"{w_path} does not match {cfg_path.name}: missing tensors {missing[:3]}, "
            f"unexpected tensors {extra[:3]}"
        )
    return config, targets, tensors


def _check_fingerprints(targets: dict[str, Any], loaded: dict[str, tuple]) -> None:
    """Warn once when base weights differ from those the adapter was trained on."""
    differ = []
    for name, (module, _, _) in loaded.items():
        saved = targets[name].get("base_frobenius")
        if isinstance(saved, (int, float)) and saved > 0:
            norm = frobenius_norm(module.weight)
            if abs(norm - saved) > 1e-3 * saved:
                differ.append((name, norm, saved))
    if differ:
        name, norm, saved = differ[0]
        warnings.warn(
            f"{len(differ)} of {len(loaded)} FROG target weights differ from the base weights the "
            f"adapter was trained on (e.g. {name}.weight: Frobenius norm {norm:.6g}, trained on "
            f"{saved:.6g}): is this the right base model?",
            stacklevel=3,
        )


def load_frog(
    model: nn.Module,
    adapter_dir: str | os.PathLike[str],
    *,
    is_trainable: bool = False,
    progress: bool = False,
) -> nn.Module:
    """Put a saved FROG adapter on a base model (in place).

    Everything is checked before the model is touched: every target module must exist, be
    an ``nn.Linear`` and have the saved shape; the indices must be valid. A base weight
    whose Frobenius norm differs from the saved fingerprint gives a warning (same shapes,
    probably another checkpoint).

    Args:
        model: the base model the adapter was trained on.
        adapter_dir: folder written by :func:`save_frog`.
        is_trainable: keep the deltas trainable (to continue training). When the adapter's
            config uses guided noise this recomputes S for every target (one SVD each).
            False (default): deltas frozen and the model put in eval mode, for inference.
        progress: progress bar while recomputing S.

    Returns:
        The same model object, with FrogLinear layers.

    Raises:
        SpectuneError: missing/corrupt files, or a model that does not fit the adapter (the
            message names the tensor).
    """
    path = Path(adapter_dir)
    config, targets, tensors = read_adapter(path)
    if any(isinstance(m, FrogLinear) for m in model.modules()):
        raise SpectuneError(
            "this model already has FROG layers; load the adapter onto the base model"
        )
    loaded = {}
    for name, info in targets.items():
        idx_key, val_key = name + INDICES_SUFFIX, name + VALUES_SUFFIX
        module = _linear_for(model, name, f"tensor {idx_key} of {path / WEIGHTS_NAME}")
        saved = tuple(info.get("shape", ()))
        actual = tuple(module.weight.shape)
        if saved != actual:
            raise SpectuneError(
                f"tensor {idx_key} was saved for a weight of shape {saved}, but this model's "
                f"{name}.weight has shape {actual}; load the adapter onto the base model it was "
                "trained from"
            )
        idx, vals = tensors[idx_key], tensors[val_key]
        if idx.ndim != 1 or vals.shape != idx.shape or idx.numel() != info.get("trainable"):
            raise SpectuneError(
                f"tensors {idx_key} {tuple(idx.shape)} and {val_key} {tuple(vals.shape)} do not "
                f"match each other or the {info.get('trainable')} entries of {CONFIG_NAME}"
            )
        if idx.is_floating_point() or not vals.is_floating_point():
            raise SpectuneError(f"tensor {idx_key} must be integer and {val_key} floating point")
        # check indices now, so that a bad file leaves the model untouched
        _check_indices(idx, actual[0] * actual[1], idx_key)
        loaded[name] = (module, idx.to(torch.int64), vals)
    _check_fingerprints(targets, loaded)
    needs_scores = is_trainable and config.noise_scale > 0
    model.requires_grad_(False)
    with _progress(len(loaded), "FROG relevance", progress and needs_scores) as bar:
        for name, (module, idx, vals) in loaded.items():
            scores = None
            if needs_scores:
                S = relevance(
                    module.weight,
                    config.svd,
                    config.svd_rank,
                    niter=config.svd_niter,
                    seed=name_seed(config.seed, name, "svd"),
                    name=f"{name}.weight",
                )
                scores = S.to(_SCORE_DTYPES[config.score_dtype])
                bar.update(1)
            layer = FrogLinear(
                module.weight,
                module.bias,
                idx,
                vals,
                noise_scores=scores,
                noise_scale=config.noise_scale if needs_scores else 0.0,
                noise_sigma=config.noise_sigma,
                noise_decay_steps=config.noise_decay_steps,
                seed=config.seed,
                name=name,
            )
            layer.delta.requires_grad_(is_trainable)
            layer.train(module.training)
            _set_module(model, name, layer)
    model.frog_config = config
    if not is_trainable:
        model.eval()
    return model


def trainable_summary(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts of any model, and the trainable percentage."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "trainable": trainable,
        "total": total,
        "percent": 100.0 * trainable / total if total else math.nan,
    }
