"""The rows of :func:`~spectune.watch.analyze.analyze`: which matrices become rows, and each
row's numbers.

Rows and columns follow WeightWatcher 0.7.7 (see :mod:`spectune.watch.metrics`), with
these choices, all on purpose:

* What is analyzed: every float weight with at least two dimensions (Linear, Conv1D/Conv2D,
  Embedding); 1-D tensors (norms, biases) and non-float tensors are skipped, as WW does.
  Tied weights (``lm_head`` = ``embed_tokens``) are analyzed once. Conv2D kernels
  (out, in, kh, kw) give one matrix per kernel position, pooled into one ESD, scaled by WW's
  conv2d normalization sqrt(1/2); 3-D Conv1d kernels are pooled the same way, unscaled.
* A matrix with more than ``max_evals`` eigenvalues (or N > ``max_N``) is not analyzed but is
  still listed, with status "skipped" and the reason as warning (WW drops it silently).
  A matrix with fewer than ``min_evals`` eigenvalues is analyzed and warned about.
* A failed power-law fit gives alpha = NaN, status "failed"; summaries leave it out.
* ``layer_type`` is spectune's ("linear", "conv2d", "embedding", "lora"...), not WW's enum.
* ``layer_id``: the module's index in ``named_modules()`` for an ``nn.Module`` (as WW);
  otherwise the matrix's index in the source's natural name order.

PEFT adapters give one row per LoRA pair (``<module>.lora_BA``) holding the exact spectrum of
Delta W = scaling * B A via :func:`~spectune.watch.esd.lora_eigenvalues`.

Selecting (:func:`select_rows`, :func:`filter_rows`) reads names and shapes only; a
:class:`RowSpec` says what one row is computed from, and :func:`compute_row` computes it in
named steps: the lead columns, the matrices and their pooled ESD (:class:`PooledESD`), the
fit and its metrics, then the optional columns (rank90, intruders, Marchenko-Pastur,
randomized ESD). :func:`base_columns` adds the matching base matrix's metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spectune.errors import SpectuneError
from spectune.watch.esd import CONV2D_NORM, eigenvalues, gram_rank_floor, lora_eigenvalues
from spectune.watch.intruders import intruder_dimensions, lora_intruder_dimensions
from spectune.watch.metrics import (
    TOO_FEW,
    empty_metrics,
    esd_metrics,
    matrix_rank,
    rank_at_energy,
)
from spectune.watch.rmt import mp_fit, randomized_metrics
from spectune.weights import LoraPair, WeightSource, normalize_module_name, open_source

LEAD_COLUMNS = ["layer_id", "name", "longname", "layer_type", "N", "M", "Q", "rf"]
#: metric columns copied with a ``base_`` prefix when a base model is given
BASE_COLUMNS = [
    "alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank", "entropy",
    "D", "num_evals", "status",
]  # fmt: skip

#: alpha above this: an overparameterized layer (FROG paper / WeightWatcher: "under-trained")
OVERPARAMETERIZED_ALPHA = 6.0
#: a LoRA update whose alpha is below this on an overparameterized base layer is flagged
OVERFIT_ADAPTER_ALPHA = 2.0
OVERFIT_ADAPTER = "adapter alpha < 2 on an alpha > 6 base layer (overfitting signal)"


@dataclass
class RowSpec:
    """What one row is computed from: a weight matrix, a LoRA pair, or a fine-tune delta."""

    layer_id: int
    longname: str
    layer_type: str
    shape: tuple[int, ...]
    tensor: str | None = None  # weight name in the source
    pair: LoraPair | None = None
    base_tensor: str | None = None  # matching weight in the base source

    @property
    def dims(self) -> tuple[int, int, int]:
        """(N, M, rf) as WW reports them."""
        if self.layer_type == "lora" or len(self.shape) == 2:
            a, b = self.shape[0], self.shape[1]
            return max(a, b), min(a, b), 1
        a, b = self.shape[0], self.shape[1]
        rf = int(np.prod(self.shape[2:]))
        return max(a, b), min(a, b), rf

    @property
    def num_evals(self) -> int:
        """Eigenvalues of the row's ESD: the rank r of a LoRA pair, else M * rf."""
        if self.pair is not None:
            return self.pair.r
        _, M, rf = self.dims
        return M * rf


@dataclass(frozen=True)
class RowOptions:
    """How each row is computed: the arguments of :func:`~spectune.watch.analyze.analyze`
    that shape a row (checked there), with ``fit_type`` and ``fix_fingers`` resolved from
    ``fit`` and ``with_base`` for ``peft="with_base"``."""

    min_evals: int
    max_evals: int
    max_N: int
    precision: str
    lora_scaling: bool = True
    fix_fingers: str | None = None
    fit_type: str = "power_law"
    mp_fit: bool = False
    randomize: bool = False
    seed: int = 0
    delta: bool = False
    plus_base: bool = False
    updates: bool = False
    with_base: bool = False
    detX: bool = False
    compare_fits: bool = False
    intruders: bool = False
    intruder_top_k: int = 10
    intruder_threshold: float = 0.5


@dataclass
class PooledESD:
    """The ESD of one row and what it was computed from.

    Attributes:
        evals: the eigenvalues (pooled over a kernel's positions).
        mats: the matrices pooled; empty on the rank-r LoRA route, which never forms B A.
        scale: the factor the matrices were scaled by (WW's conv2d normalization).
        rank_loss: eigenvalues lost to numerical rank, summed over pooled matrices (None for
            one matrix: the metrics count it themselves).
        rank_floor: the relative singular-value floor of the Gram route (0 on the exact
            rank-r LoRA route).
        factors: ``(B, A)`` of a LoRA row, oriented like the base weight.
    """

    evals: np.ndarray
    mats: list[torch.Tensor] = field(default_factory=list)
    scale: float = 1.0
    rank_loss: int | None = None
    rank_floor: float = 0.0
    factors: tuple[torch.Tensor, torch.Tensor] | None = None


# -- selecting rows ---------------------------------------------------------------------------


@contextmanager
def open_weights(source: Any, peft: bool | str) -> Iterator[WeightSource]:
    """``source`` as a :class:`~spectune.weights.WeightSource` for the ``with`` block; a source
    opened here is closed at its end, one passed in is left open."""
    if isinstance(source, WeightSource):
        yield source
        return
    src = open_source(source, peft=bool(peft))
    try:
        yield src
    finally:
        src.close()


def layer_filter(layers: Any) -> Callable[[RowSpec], bool]:
    """The test of ``analyze(layers=...)``: None (all), a regex searched in the longname, or a
    list of layer ids and/or longnames."""
    if layers is None:
        return lambda spec: True
    if isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as exc:
            raise SpectuneError(
                f"layers={layers!r} is not a valid regular expression: {exc}"
            ) from exc
        return lambda spec: bool(pattern.search(spec.longname))
    if isinstance(layers, int):
        layers = [layers]
    if isinstance(layers, Sequence):
        ids = {x for x in layers if isinstance(x, int)}
        names = {x for x in layers if isinstance(x, str)}
        return lambda spec: spec.layer_id in ids or spec.longname in names
    raise SpectuneError(
        f"layers must be None, a regex string or a list of layer ids/names, got {layers!r}"
    )


def filter_rows(specs: list[RowSpec], layers: Any) -> list[RowSpec]:
    """The rows ``layers`` selects (see :func:`layer_filter`)."""
    keep = layer_filter(layers)
    return [spec for spec in specs if keep(spec)]


def _module_ids(source: Any) -> dict[str, int]:
    """WW's layer ids for an nn.Module: index in named_modules()."""
    if not isinstance(source, torch.nn.Module):
        return {}
    return {normalize_module_name(name): i for i, (name, _) in enumerate(source.named_modules())}


def _lora_specs(src: WeightSource, ids: dict[str, int]) -> list[RowSpec]:
    """One row per LoRA pair."""
    pairs = src.lora_pairs()
    if not pairs:
        raise SpectuneError(
            f"{src!r} holds no LoRA pairs (lora_A/lora_B); drop peft=True to analyze its "
            "weights, or pass a PEFT adapter folder"
        )
    return [
        RowSpec(ids.get(pair.module, i), pair.name, "lora", tuple(pair.shape), pair=pair)
        for i, pair in enumerate(pairs)
    ]


def _weight_specs(src: WeightSource, ids: dict[str, int]) -> list[RowSpec]:
    """One row per float weight of two or more dimensions."""
    weights = [info for info in src.tensors() if info.is_weight]
    if not weights:
        raise SpectuneError(
            f"{src!r} has no analyzable matrix (no float weight of 2 or more dimensions)"
        )
    return [
        RowSpec(
            ids.get(info.key, i), info.key, info.layer_type, tuple(info.shape), tensor=info.name
        )
        for i, info in enumerate(weights)
    ]


def _matched_to_base(specs: list[RowSpec], base_src: WeightSource, what: str) -> list[RowSpec]:
    """The rows whose matrix matches a base matrix by name (and must then match its shape),
    each with its base tensor."""
    matched = []
    for spec in specs:
        base_info = base_src.find_weight(spec.longname)
        if base_info is None:
            continue
        if tuple(base_info.shape) != spec.shape:
            raise SpectuneError(
                f"{what}: {spec.tensor} has shape {spec.shape} but the base's {base_info.name} "
                f"has {tuple(base_info.shape)}; is base= the model this one was tuned from?"
            )
        spec.base_tensor = base_info.name
        matched.append(spec)
    if not matched:
        raise SpectuneError(f"{what}=True: no matrix of the model matches a base matrix by name")
    return matched


def select_rows(
    src: WeightSource, source: Any, peft: bool | str, delta: bool | str, base_src: Any
) -> list[RowSpec]:
    """The rows to compute, with their base matrices matched (see :func:`analyze`).

    Args:
        src: the opened source.
        source: what the user passed (an ``nn.Module`` gives WW's layer ids).
        peft: as for :func:`~spectune.watch.analyze.analyze`; an adapter source implies True.
        delta: True (W - W_base), "plus_base" (W_base + the source's update) or False: then
            only the matrices matching a base matrix by name and shape are rows.
        base_src: the opened base source, or None.
    """
    ids = _module_ids(getattr(src, "module", None) or source)
    if bool(peft) or getattr(src, "kind", "") == "peft":
        specs = _lora_specs(src, ids)
    else:
        specs = _weight_specs(src, ids)
        if delta:
            return _matched_to_base(
                specs, base_src, "plus_base" if delta == "plus_base" else "delta"
            )
    if base_src is not None and not delta:
        for spec in specs:
            info = base_src.find_weight(
                spec.pair.module if spec.pair is not None else spec.longname
            )
            spec.base_tensor = info.name if info is not None else None
        if peft == "with_base":
            missing = [s.longname for s in specs if s.base_tensor is None]
            if missing:
                raise SpectuneError(
                    f"peft='with_base': no base matrix for {missing[0]} "
                    f"({len(missing)} of {len(specs)} pairs unmatched)"
                )
    return specs


# -- one row ----------------------------------------------------------------------------------


def lead_columns(spec: RowSpec) -> dict[str, Any]:
    """The columns every row starts with (:data:`LEAD_COLUMNS`); ``name`` is the module's last
    part (``q_proj.lora_BA`` for LoRA rows)."""
    N, M, rf = spec.dims
    parts = spec.longname.split(".")
    return {
        "layer_id": spec.layer_id,
        "name": parts[-1] if spec.layer_type != "lora" else ".".join(parts[-2:]),
        "longname": spec.longname,
        "layer_type": spec.layer_type,
        "N": N,
        "M": M,
        "Q": N / M if M else math.nan,
        "rf": rf,
    }


def _matrices(W: torch.Tensor, layer_type: str) -> tuple[list[torch.Tensor], float]:
    """Split a weight into the matrices of its ESD and the scale WW applies."""
    if W.ndim == 2:
        return [W], 1.0
    if W.ndim == 4:
        mats = [W[:, :, i, j] for i in range(W.shape[2]) for j in range(W.shape[3])]
        return mats, CONV2D_NORM
    if W.ndim == 3:
        return [W[:, :, k] for k in range(W.shape[2])], 1.0
    raise ValueError(f"cannot take the ESD of a {W.ndim}-D tensor")


def _pooled(
    mats: list[torch.Tensor], scale: float, precision: str
) -> tuple[np.ndarray, int | None]:
    """The pooled, sorted eigenvalues of ``mats`` (scaled) and, for more than one matrix,
    their summed rank loss."""
    evs, rank_loss = [], 0
    floor = gram_rank_floor(precision)
    for m in mats:
        ev = eigenvalues(m, precision=precision) * (scale * scale)
        evs.append(ev)
        rank_loss += len(ev) - matrix_rank(np.sqrt(ev), max(m.shape), floor)
    ev = np.sort(np.concatenate(evs))
    return ev, (rank_loss if len(mats) > 1 else None)


def _pooled_esd(W: torch.Tensor, layer_type: str, precision: str, **kw: Any) -> PooledESD:
    """The ESD of a weight analyzed as a matrix of ``layer_type`` (Conv2D: pooled positions)."""
    mats, scale = _matrices(W, layer_type)
    evals, rank_loss = _pooled(mats, scale, precision)
    return PooledESD(evals, mats, scale, rank_loss, gram_rank_floor(precision), **kw)


def _dora_norm(W: torch.Tensor, pair: LoraPair) -> torch.Tensor:
    """PEFT's DoRA weight norm of W (oriented like the base weight, as a matrix): one norm per
    output, i.e. per row, or per column for transposed pairs (embeddings, fan_in_fan_out)."""
    return torch.linalg.vector_norm(W, dim=0 if pair.transposed else 1)


def _dora_weight(mag: torch.Tensor, W: torch.Tensor, pair: LoraPair) -> torch.Tensor:
    """DoRA's effective weight m * (W + dW) / ||W + dW|| (W already holds W + dW)."""
    factor = mag.double().reshape(-1) / _dora_norm(W, pair)
    return W * (factor.reshape(1, -1) if pair.transposed else factor.reshape(-1, 1))


def _dora_columns(
    src: WeightSource,
    pair: LoraPair,
    base_W: torch.Tensor | None,
    B: torch.Tensor,
    A: torch.Tensor,
) -> dict[str, float]:
    """DoRA's magnitude columns: mean and CV, and with the base weight their ratio to it."""
    mag = src.load(pair.magnitude_name).double().reshape(-1)
    cols = {
        "dora_magnitude_mean": float(mag.mean()),
        "dora_magnitude_cv": float(mag.std() / mag.mean()) if mag.mean() != 0 else math.nan,
    }
    if base_W is not None:
        # relative to the norms of the weight the magnitudes rescale (always the scaled update)
        ratio = mag / _dora_norm(base_W + (B.double() @ A.double()) * pair.scaling, pair)
        cols["dora_magnitude_ratio_mean"] = float(ratio.mean())
        cols["dora_magnitude_ratio_std"] = float(ratio.std())
    return cols


def _lora_esd(
    spec: RowSpec,
    src: WeightSource,
    base_src: Any,
    opts: RowOptions,
    row: dict[str, Any],
    extra: dict[str, Any],
) -> PooledESD:
    """The ESD of a LoRA row: of Delta W on the rank-r route, or of W + Delta W with
    ``peft="with_base"`` (then ``row``'s N, M, Q, rf become the merged weight's). ``extra``
    receives the LoRA and DoRA columns as they are known."""
    pair = spec.pair
    B, A = src.load_pair(pair)
    scaling = pair.scaling if opts.lora_scaling else 1.0
    extra.update(lora_rank=pair.r, scaling=pair.scaling)
    base_W = None
    if opts.with_base or (pair.magnitude_name and spec.base_tensor):
        # the base weight as a matrix oriented like B @ A (conv kernels flattened)
        base_W = base_src.load(spec.base_tensor).double().reshape(pair.shape)
    if pair.magnitude_name:
        extra.update(_dora_columns(src, pair, base_W, B, A))
    if not opts.with_base:
        return PooledESD(lora_eigenvalues(A, B, scaling), factors=(B, A))
    W = base_W + (B.double() @ A.double()) * scaling
    if pair.magnitude_name:  # DoRA: W' = m * (W + dW) / ||W + dW||
        W = _dora_weight(src.load(pair.magnitude_name), W, pair)
    # analyzed like the merged base weight (Conv2D: pooled kernel positions)
    base_type = base_src.info(spec.base_tensor).layer_type
    esd = _pooled_esd(W.reshape(pair.base_shape), base_type, opts.precision, factors=(B, A))
    row["N"], row["M"] = max(esd.mats[0].shape), min(esd.mats[0].shape)
    row["Q"], row["rf"] = row["N"] / row["M"], len(esd.mats)
    return esd


def _weight_esd(spec: RowSpec, src: WeightSource, base_src: Any, opts: RowOptions) -> PooledESD:
    """The ESD of a weight row: W, W - W_base (``delta``) or W_base + Delta W (``plus_base``)."""
    W = src.load(spec.tensor)
    if spec.base_tensor is not None and opts.delta:  # W - W_base
        W = W.double() - base_src.load(spec.base_tensor).double()
    elif spec.base_tensor is not None and opts.plus_base:  # W_base + Delta W
        W = base_src.load(spec.base_tensor).double() + W.double()
    return _pooled_esd(W, spec.layer_type, opts.precision)


def _skip_reason(spec: RowSpec, opts: RowOptions) -> str | None:
    """Why a (non-LoRA) matrix is too large to analyze, or None."""
    if spec.layer_type == "lora":
        return None
    N, _, _ = spec.dims
    if spec.num_evals > opts.max_evals:
        return f"{spec.num_evals} eigenvalues > max_evals={opts.max_evals}"
    if N > opts.max_N:
        return f"N={N} > max_N={opts.max_N}"
    return None


def _fit_metrics(spec: RowSpec, esd: PooledESD, N: int, opts: RowOptions) -> dict[str, Any]:
    """The fit and the metrics of the ESD; a LoRA row's reliability rule is on its rank r."""
    metrics, _fit = esd_metrics(
        esd.evals,
        N,
        min_evals=opts.min_evals,
        fix_fingers=opts.fix_fingers,
        rank_loss=esd.rank_loss,
        rank_floor=esd.rank_floor,
        fit_type=opts.fit_type,
        detX=opts.detX,
        compare_fits=opts.compare_fits,
    )
    if spec.layer_type == "lora" and metrics.get("status") in ("success", "failed"):
        # the ESD of a rank-r update has r nonzero eigenvalues; the reliability rule is on r
        if spec.pair.r < opts.min_evals and TOO_FEW not in metrics["warning"]:
            metrics["warning"] = "; ".join(filter(None, [metrics["warning"], TOO_FEW]))
    return metrics


def _rmt_columns(
    spec: RowSpec, esd: PooledESD, row: dict[str, Any], opts: RowOptions
) -> dict[str, Any]:
    """The Marchenko-Pastur (``mp_fit``) and randomized-ESD (``randomize``) columns asked for."""
    cols: dict[str, Any] = {}
    if opts.mp_fit:
        cols.update(
            mp_fit(esd.evals, row["N"], row["M"] if spec.layer_type != "lora" else spec.pair.r)
        )
    if opts.randomize:
        mats = esd.mats
        if not mats:  # LoRA rank-r route: randomize the (formed) update
            B, A = esd.factors
            mats = [(B.double() @ A.double()) * (spec.pair.scaling if opts.lora_scaling else 1.0)]
        seed = (opts.seed * 1_000_003 + spec.layer_id) % (2**63)
        cols.update(
            randomized_metrics(
                mats,
                esd.evals,
                row["N"],
                row["M"],
                seed=seed,
                scale=esd.scale,
                precision=opts.precision,
            )
        )
    return cols


def compute_row(
    spec: RowSpec,
    src: WeightSource,
    base_src: Any,
    opts: RowOptions,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute one row; bad numbers become a status, never an exception.

    ``keep``, if given, receives the row's ESD as ``keep["evals"]`` (for
    :func:`~spectune.watch.analyze.spectrum`).
    """
    row = lead_columns(spec)
    skipped = _skip_reason(spec, opts)
    if skipped is not None:
        row.update(empty_metrics("skipped", skipped))
        return row
    extra: dict[str, Any] = {}  # LoRA / DoRA columns, kept on a non-finite row too
    try:
        if spec.pair is not None:
            esd = _lora_esd(spec, src, base_src, opts, row, extra)
        else:
            esd = _weight_esd(spec, src, base_src, opts)
    except ValueError as exc:
        if "NaN or Inf" not in str(exc):
            raise
        row.update(empty_metrics("non-finite", f"{spec.tensor or spec.pair.name}: {exc}"))
        row.update(extra)
        return row
    if keep is not None:
        keep["evals"] = np.sort(esd.evals)
    metrics = _fit_metrics(spec, esd, row["N"], opts)
    row.update(metrics)
    row.update(extra)
    if opts.delta or spec.layer_type == "lora":
        row["rank90"] = rank_at_energy(esd.evals, 0.9)
    if opts.intruders:
        row.update(_intruder_columns(spec, src, base_src, opts))
    if metrics["status"] in ("success", "failed"):
        row.update(_rmt_columns(spec, esd, row, opts))
    return row


def _intruder_columns(
    spec: RowSpec, src: WeightSource, base_src: Any, opts: RowOptions
) -> dict[str, float]:
    """num_intruders / intruder_min_sim of one row (NaN with a reason where not defined)."""
    nan = {"num_intruders": math.nan, "intruder_min_sim": math.nan}
    if spec.base_tensor is None:
        return nan
    W0 = base_src.load(spec.base_tensor).double()
    kw = dict(top_k=opts.intruder_top_k, threshold=opts.intruder_threshold)
    try:
        if spec.pair is not None:
            pair = spec.pair
            if W0.ndim != 2 or pair.magnitude_name:  # conv kernels, DoRA: not defined here
                return nan
            B, A = src.load_pair(pair)  # oriented like the base weight (B A has pair.shape)
            res = lora_intruder_dimensions(W0.reshape(pair.shape), B, A, pair.scaling, **kw)
        else:
            Wt = src.load(spec.tensor).double()
            if opts.plus_base or opts.updates:  # the tuned matrix is W_0 + update
                Wt = W0 + Wt
            if Wt.ndim != 2:
                return nan
            res = intruder_dimensions(W0, Wt, **kw)
    except ValueError:  # NaN/Inf: the row's status already says so
        return nan
    return {"num_intruders": res.num_intruders, "intruder_min_sim": res.min_similarity}


# -- the base model's columns -----------------------------------------------------------------


def flag_overfit_adapter(row: dict[str, Any]) -> None:
    """The blog's overfitting signal: a LoRA update with alpha < 2 on a base layer with alpha > 6."""
    if row.get("layer_type") != "lora":
        return
    alpha, base_alpha = row.get("alpha", math.nan), row.get("base_alpha", math.nan)
    if alpha < OVERFIT_ADAPTER_ALPHA and base_alpha > OVERPARAMETERIZED_ALPHA:
        row["warning"] = "; ".join(filter(None, [row.get("warning", ""), OVERFIT_ADAPTER]))


def base_columns(
    base_src: Any, name: str, opts: RowOptions, cache: dict[str, dict]
) -> dict[str, Any]:
    """The ``base_*`` columns (:data:`BASE_COLUMNS`) of base matrix ``name``, computed once
    per matrix (``cache``); a non-finite base matrix says so only in these columns."""
    if name not in cache:
        info = base_src.info(name)
        W = base_src.load(name)
        mats, scale = _matrices(W, info.layer_type)
        try:
            evals, rank_loss = _pooled(mats, scale, opts.precision)
        except ValueError as exc:  # NaN/Inf in the base matrix: only the base columns say so
            if "NaN or Inf" not in str(exc):
                raise
            metrics = empty_metrics("non-finite", f"{name}: {exc}")
            cache[name] = {f"base_{c}": metrics[c] for c in BASE_COLUMNS}
            return cache[name]
        N = max(W.shape[0], W.shape[1])
        metrics, _ = esd_metrics(
            evals,
            N,
            min_evals=opts.min_evals,
            fix_fingers=opts.fix_fingers,
            rank_loss=rank_loss,
            rank_floor=gram_rank_floor(opts.precision),
            fit_type=opts.fit_type,
        )
        cache[name] = {f"base_{c}": metrics[c] for c in BASE_COLUMNS}
    return cache[name]


__all__ = [
    "BASE_COLUMNS",
    "LEAD_COLUMNS",
    "OVERFIT_ADAPTER",
    "OVERPARAMETERIZED_ALPHA",
    "PooledESD",
    "RowOptions",
    "RowSpec",
    "base_columns",
    "compute_row",
    "filter_rows",
    "flag_overfit_adapter",
    "layer_filter",
    "lead_columns",
    "open_weights",
    "select_rows",
]
