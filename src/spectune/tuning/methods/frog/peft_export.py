"""Export a FROG adapter as a peft SHiRA adapter, loadable with plain ``peft``.

peft's SHiRA (sparse high-rank adapter) is a sparse delta on frozen weights, like FROG: per
target matrix W (N x M) it stores fixed positions and a trainable value vector. The export
writes, in the folder layout ``PeftModel.save_pretrained`` writes:

- ``adapter_model.safetensors``, per target module ``name`` two tensors:
  ``base_model.model.<name>.shira_indices``, shape (2, C) int32, the (row, col) of each stored
  entry in row-major order, and ``base_model.model.<name>.shira_weight``, shape (C,), the
  values in the same order (FROG's delta dtype: float32 for half-precision weights);
- ``adapter_config.json``, a ``ShiraConfig`` with ``r``, the exact target module names and
  ``mask_type="frog"``.

Then ``PeftModel.from_pretrained(base, folder)`` loads it without spectune installed, and
``merge_and_unload()`` gives the weights :func:`~spectune.tuning.methods.frog.merge_frog` gives (bitwise in
the tests, with float32 and with bfloat16 bases). Because ``mask_type`` is not one peft
knows, peft builds no mask at load: the positions come from the file. (The config is written
with ``inference_mode=True``, as peft writes it, so loading prints no warning about the
unknown mask type, also with ``is_trainable=True``.)

Limits of the format:

- **One count for all matrices.** SHiRA holds exactly C = r (N + M) entries in every target
  matrix, with one r for the whole config; FROG gives matrix i any K_i. The export takes the
  smallest r with r (N_i + M_i) >= K_i for every i, r = max_i ceil(K_i / (N_i + M_i)), and
  pads each matrix's positions with zero-valued unused ones (the lowest free positions in
  row-major order). Zero entries change no weight, but they cost storage: the overhead is
  sum_i r (N_i + M_i) / sum_i K_i - 1, large when the budget is spread unevenly over the
  matrices (:func:`shira_export_plan` reports it before anything is written).
- **r (N + M) <= N M for every matrix** (peft refuses more entries than the matrix has). A
  large budget on one matrix raises r for all of them, and a small matrix may then not hold
  r (N + M) entries: the export refuses, naming the matrix; :func:`~spectune.tuning.methods.frog.save_frog`
  still writes the adapter in spectune's own format.
- **Padding trains in peft.** Loaded with ``is_trainable=True``, peft trains all C values of
  each matrix, the zero padding included, so continued training in peft updates more (and
  other) weights than FROG selected, and without FROG's guided noise.

Typical use::

    from spectune.tuning.methods.frog import save_frog_as_shira, shira_export_plan
    plan = shira_export_plan(model)        # r, stored vs FROG entries, fits
    if plan.fits:
        save_frog_as_shira(model, "shira_adapter/")
    # anywhere, with plain peft:
    # PeftModel.from_pretrained(base, "shira_adapter/").merge_and_unload()
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn

from spectune._io import atomic_path, publish_dir, write_text
from spectune.errors import SpectuneError
from spectune.tuning.methods.frog.model import frog_modules

if TYPE_CHECKING:
    import os

    from spectune.tuning.methods.frog.layer import FrogLinear

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
MASK_TYPE = "frog"
KEY_PREFIX = "base_model.model."  # PeftModel -> ShiraModel (base_model) -> the model (model)
INDICES_SUFFIX = ".shira_indices"
WEIGHT_SUFFIX = ".shira_weight"


@dataclass
class ShiraExportPlan:
    """How a FROG adapter maps onto SHiRA's fixed count r (N + M) per matrix.

    Attributes:
        r: the single SHiRA r, max_i ceil(K_i / (N_i + M_i)), at least 1.
        matrices: one row per target matrix, in model order: ``name``, ``shape`` [N, M],
            ``frog_entries`` K_i, ``shira_entries`` r (N + M), ``size`` N M and ``fits``
            (r (N + M) <= N M).
        frog_entries: sum_i K_i, the entries FROG trains.
        shira_entries: sum_i r (N_i + M_i), the entries the SHiRA adapter stores.
        too_big: names of the matrices that cannot hold r (N + M) entries (empty: it fits).
    """

    r: int
    frog_entries: int
    shira_entries: int
    matrices: list[dict[str, Any]] = field(default_factory=list)
    too_big: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        """True when every matrix holds r (N + M) entries, i.e. the export is possible."""
        return not self.too_big

    @property
    def overhead(self) -> float:
        """Padding overhead, shira_entries / frog_entries - 1 (inf when FROG trains nothing)."""
        if self.frog_entries == 0:
            return float("inf")
        return self.shira_entries / self.frog_entries - 1.0

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able values."""
        return {
            "r": self.r,
            "frog_entries": self.frog_entries,
            "shira_entries": self.shira_entries,
            "overhead": self.overhead,
            "fits": self.fits,
            "too_big": list(self.too_big),
            "matrices": [dict(row) for row in self.matrices],
        }


def _frog_layers(model: nn.Module, caller: str) -> dict[str, FrogLinear]:
    layers = frog_modules(model)
    if not layers:
        raise SpectuneError(f"{caller}: the model has no FROG layers (apply_frog/load_frog first)")
    return layers


def _plan(layers: dict[str, FrogLinear]) -> ShiraExportPlan:
    r = 1
    for layer in layers.values():
        n_out, n_in = layer.weight.shape
        r = max(r, -(-layer.num_trainable // (n_out + n_in)))  # ceil
    rows = []
    for name, layer in layers.items():
        n_out, n_in = layer.weight.shape
        count = r * (n_out + n_in)
        rows.append(
            {
                "name": name,
                "shape": [n_out, n_in],
                "frog_entries": layer.num_trainable,
                "shira_entries": count,
                "size": n_out * n_in,
                "fits": count <= n_out * n_in,
            }
        )
    return ShiraExportPlan(
        r=r,
        frog_entries=sum(row["frog_entries"] for row in rows),
        shira_entries=sum(row["shira_entries"] for row in rows),
        matrices=rows,
        too_big=[row["name"] for row in rows if not row["fits"]],
    )


def shira_export_plan(model: nn.Module) -> ShiraExportPlan:
    """What :func:`save_frog_as_shira` would store, without writing anything.

    Args:
        model: a model with FROG applied (FrogLinear layers, e.g. from ``apply_frog`` or
            ``load_frog``).

    Returns:
        A :class:`ShiraExportPlan`: r, the entries stored vs the entries FROG trains (the
        padding overhead) and whether every matrix holds r (N + M) entries (``fits``).

    Raises:
        SpectuneError: the model has no FROG layers.
    """
    return _plan(_frog_layers(model, "shira_export_plan"))


def _refusal(plan: ShiraExportPlan) -> SpectuneError:
    rows = {row["name"]: row for row in plan.matrices}
    worst = max(plan.matrices, key=lambda row: row["frog_entries"] / sum(row["shape"]))
    details = "; ".join(
        f"{name} ({rows[name]['shape'][0]}x{rows[name]['shape'][1]}) would need "
        f"{rows[name]['shira_entries']} > {rows[name]['size']} entries"
        for name in plan.too_big[:5]
    ) + (f"; and {len(plan.too_big) - 5} more" if len(plan.too_big) > 5 else "")
    return SpectuneError(
        "this FROG adapter cannot be exported as a peft SHiRA adapter: SHiRA stores "
        f"r*(N+M) entries in every target matrix with one r for all, and r={plan.r} (set by "
        f"{worst['name']}: {worst['frog_entries']} FROG entries / (N+M)={sum(worst['shape'])}) "
        f"exceeds the size of {len(plan.too_big)} matrix(es): {details}. Use a smaller FROG "
        "budget for a SHiRA export; save_frog() writes this adapter in the spectune format, "
        "which holds any budget (load_frog/merge_frog read it)"
    )


@torch.no_grad()
def _padded(layer: FrogLinear, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, count) int32 (row, col) positions in row-major order and the (count,) values.

    FROG's K positions (sorted flat indices) keep their delta values; the lowest count - K free
    positions are added with value 0. They all lie in [0, count), which holds at most K taken
    positions, so only a window of ``count`` flags is needed, not one per weight.
    """
    n_in = layer.weight.shape[1]
    idx = layer.indices.detach().to("cpu", torch.int64)
    values = layer.delta.detach().to("cpu")
    window = min(count, layer.weight.numel())
    taken = torch.zeros(window, dtype=torch.bool)
    taken[idx[idx < window]] = True
    extra = torch.nonzero(~taken).reshape(-1)[: count - idx.numel()]
    flat = torch.cat([idx, extra])
    order = torch.argsort(flat)
    flat = flat[order]  # (count,) strictly increasing = row-major order
    padded = torch.cat([values, values.new_zeros(extra.numel())])[order]
    rows = torch.div(flat, n_in, rounding_mode="floor")
    positions = torch.stack([rows, flat % n_in]).to(torch.int32)  # (2, count)
    return positions.contiguous(), padded.contiguous()


def _target_modules(model: nn.Module, names: list[str]) -> list[str] | str:
    """The names as peft's ``target_modules``: a sorted list when peft's suffix matching picks
    exactly these modules, else an anchored regular expression (peft full-matches strings)."""
    wanted = set(names)
    picked = {
        key
        for key, _ in model.named_modules()
        if key in wanted or any(key.endswith("." + name) for name in wanted)
    }
    if picked == wanted:
        return sorted(wanted)
    return "(?:" + "|".join(re.escape(name) for name in sorted(wanted)) + ")"


def _config_dict(model: nn.Module, plan: ShiraExportPlan) -> dict[str, Any]:
    """adapter_config.json as ``PeftModel.save_pretrained`` writes it for a SHiRA adapter."""
    from peft import ShiraConfig

    config = ShiraConfig(
        r=plan.r,
        mask_type=MASK_TYPE,  # not a built-in type: peft rebuilds no mask, reads the file's
        target_modules=_target_modules(model, [row["name"] for row in plan.matrices]),
        init_weights=True,
        inference_mode=True,  # as save_pretrained writes it (and no unknown-mask warning)
        base_model_name_or_path=getattr(model, "name_or_path", None) or None,
    )
    out = config.to_dict()
    for key, value in out.items():
        if isinstance(value, set):
            out[key] = sorted(value)
    out["auto_mapping"] = {
        "base_model_class": type(model).__name__,
        "parent_library": type(model).__module__,
    }
    return out


def save_frog_as_shira(model: nn.Module, out_dir: str | os.PathLike[str]) -> Path:
    """Write the model's FROG adapter as a peft SHiRA adapter folder.

    The folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` exactly as
    ``PeftModel.save_pretrained`` writes them for SHiRA (format and limits: this module's
    docstring), so plain ``PeftModel.from_pretrained(base, out_dir)`` loads it and
    ``merge_and_unload()`` gives the weights ``merge_frog`` gives. The model is only read: no
    peft wrapper is built and no layer, weight or flag of it changes. A new folder appears
    whole (built beside it, then renamed); into an existing folder each file is written
    atomically, the weights first, and other files are left alone.

    Args:
        model: a model with FROG applied (FrogLinear layers, e.g. from ``apply_frog`` or
            ``load_frog``); the module names of its FROG layers become the SHiRA targets,
            so the base model loaded later must have the same structure.
        out_dir: the adapter folder (created if needed).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        SpectuneError: the model has no FROG layers, or SHiRA cannot hold the adapter
            (r (N + M) > N M for some matrix; the message names it). Nothing is written then.
    """
    layers = _frog_layers(model, "save_frog_as_shira")
    plan = _plan(layers)
    if not plan.fits:
        raise _refusal(plan)
    tensors: dict[str, torch.Tensor] = {}
    for row in plan.matrices:
        positions, values = _padded(layers[row["name"]], row["shira_entries"])
        tensors[KEY_PREFIX + row["name"] + INDICES_SUFFIX] = positions
        tensors[KEY_PREFIX + row["name"] + WEIGHT_SUFFIX] = values
    config_text = json.dumps(_config_dict(model, plan), indent=2, sort_keys=True)

    def write(folder: Path) -> None:
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        write_text(folder / CONFIG_NAME, config_text)

    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise SpectuneError(f"save_frog_as_shira: {out} is a file; pass a folder")
        write(out)
        return out
    return publish_dir(write, out)
