"""describe / analyze / summarize: WeightWatcher-style diagnostics of any weights.

>>> import spectune as st                                           # doctest: +SKIP
>>> details = st.analyze("path/to/model")                           # one row per matrix
>>> st.summarize(details)["alpha"]                                  # mean alpha

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
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from spectune._progress import track
from spectune.errors import SpectuneError
from spectune.watch.esd import (
    CONV2D_NORM,
    eigenvalues,
    gram_rank_floor,
    lora_eigenvalues,
)
from spectune.watch.metrics import (
    METRIC_COLUMNS,
    TOO_FEW,
    empty_metrics,
    esd_metrics,
    rank_at_energy,
)
from spectune.watch.rmt import mp_fit as _mp_fit
from spectune.watch.rmt import randomized_metrics

DEFAULT_MIN_EVALS = 8
DEFAULT_MAX_EVALS = 15000
DEFAULT_MAX_N = 50000

LEAD_COLUMNS = ["layer_id", "name", "longname", "layer_type", "N", "M", "Q", "rf"]
#: metric columns copied with a ``base_`` prefix when a base model is given
BASE_COLUMNS = [
    "alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank", "entropy",
    "D", "num_evals", "status",
]  # fmt: skip
#: columns averaged by :func:`summarize`
SUMMARY_COLUMNS = [
    "alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm",
    "stable_rank", "entropy", "D", "sigma", "mp_softrank", "rank90",
]  # fmt: skip


@dataclass
class _Job:
    """One row to compute: a weight matrix, a LoRA pair, or a fine-tune delta."""

    layer_id: int
    longname: str
    layer_type: str
    shape: tuple[int, ...]
    tensor: str | None = None  # weight name in the source
    pair: Any = None  # LoraPair
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


class _Serialized:
    """A weight source whose method calls take a lock: sources read files (safetensors, GGUF,
    torch.load) and are not thread-safe; only the numeric work runs in parallel."""

    def __init__(self, src: Any, lock: threading.Lock) -> None:
        self._src, self._lock = src, lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._src, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


def _ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` on ``workers`` threads, results in order, at most ``workers + 1``
    items in flight (bounded memory).

    Each worker's BLAS/LAPACK and torch run single-threaded meanwhile: a symmetric eigensolver
    hardly scales across cores, two matrices at once on one core each do. The previous thread
    settings are restored afterwards.
    """
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(threads)


def _open(source: Any, peft: bool | str):
    from spectune.weights import WeightSource, open_source

    if isinstance(source, WeightSource):
        return source, False
    return open_source(source, peft=bool(peft)), True


def _layer_filter(layers: Any):
    if layers is None:
        return lambda job: True
    if isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as exc:
            raise SpectuneError(
                f"layers={layers!r} is not a valid regular expression: {exc}"
            ) from exc
        return lambda job: bool(pattern.search(job.longname))
    if isinstance(layers, int):
        layers = [layers]
    if isinstance(layers, Sequence):
        ids = {x for x in layers if isinstance(x, int)}
        names = {x for x in layers if isinstance(x, str)}
        return lambda job: job.layer_id in ids or job.longname in names
    raise SpectuneError(
        f"layers must be None, a regex string or a list of layer ids/names, got {layers!r}"
    )


def _module_ids(source: Any) -> dict[str, int]:
    """WW's layer ids for an nn.Module: index in named_modules()."""
    module = source if isinstance(source, torch.nn.Module) else None
    if module is None:
        return {}
    from spectune.weights import normalize_module_name

    return {normalize_module_name(name): i for i, (name, _) in enumerate(module.named_modules())}


def _plan(src: Any, source: Any, peft: bool | str, delta: bool | str, base_src: Any) -> list[_Job]:
    """The rows; with ``delta`` (True, or "plus_base") only the matrices matching a base matrix
    by name and shape, each with its base tensor."""
    ids = _module_ids(getattr(src, "module", None) or source)
    jobs: list[_Job] = []
    if peft:
        pairs = src.lora_pairs()
        if not pairs:
            raise SpectuneError(
                f"{src!r} holds no LoRA pairs (lora_A/lora_B); drop peft=True to analyze its "
                "weights, or pass a PEFT adapter folder"
            )
        for i, pair in enumerate(pairs):
            jobs.append(
                _Job(ids.get(pair.module, i), pair.name, "lora", tuple(pair.shape), pair=pair)
            )
        return jobs
    weights = [info for info in src.tensors() if info.is_weight]
    if not weights:
        raise SpectuneError(
            f"{src!r} has no analyzable matrix (no float weight of 2 or more dimensions)"
        )
    for i, info in enumerate(weights):
        jobs.append(
            _Job(
                ids.get(info.key, i), info.key, info.layer_type, tuple(info.shape), tensor=info.name
            )
        )
    if delta:
        what = "plus_base" if delta == "plus_base" else "delta"
        matched = []
        for job in jobs:
            base_info = base_src.find_weight(job.longname)
            if base_info is None:
                continue
            if tuple(base_info.shape) != job.shape:
                raise SpectuneError(
                    f"{what}: {job.tensor} has shape {job.shape} but the base's {base_info.name} "
                    f"has {tuple(base_info.shape)}; is base= the model this one was tuned from?"
                )
            job.base_tensor = base_info.name
            matched.append(job)
        if not matched:
            raise SpectuneError(
                f"{what}=True: no matrix of the model matches a base matrix by name"
            )
        return matched
    return jobs


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
    from spectune.watch.metrics import matrix_rank

    evs, rank_loss = [], 0
    floor = gram_rank_floor(precision)
    for m in mats:
        ev = eigenvalues(m, precision=precision) * (scale * scale)
        evs.append(ev)
        rank_loss += len(ev) - matrix_rank(np.sqrt(ev), max(m.shape), floor)
    ev = np.sort(np.concatenate(evs))
    return ev, (rank_loss if len(mats) > 1 else None)


def _dora_norm(W: torch.Tensor, pair: Any) -> torch.Tensor:
    """PEFT's DoRA weight norm of W (oriented like the base weight, as a matrix): one norm per
    output, i.e. per row, or per column for transposed pairs (embeddings, fan_in_fan_out)."""
    return torch.linalg.vector_norm(W, dim=0 if pair.transposed else 1)


def _dora_weight(mag: torch.Tensor, W: torch.Tensor, pair: Any) -> torch.Tensor:
    """DoRA's effective weight m * (W + dW) / ||W + dW|| (W already holds W + dW)."""
    factor = mag.double().reshape(-1) / _dora_norm(W, pair)
    return W * (factor.reshape(1, -1) if pair.transposed else factor.reshape(-1, 1))


def _dora_columns(src: Any, pair: Any, base_W: torch.Tensor | None, B: torch.Tensor,
                  A: torch.Tensor):  # fmt: skip
    mag = src.load(pair.magnitude_name).double().reshape(-1)
    cols = {"dora_magnitude_mean": float(mag.mean()),
            "dora_magnitude_cv": float(mag.std() / mag.mean()) if mag.mean() != 0 else math.nan}  # fmt: skip
    if base_W is not None:
        # relative to the norms of the weight the magnitudes rescale (always the scaled update)
        ratio = mag / _dora_norm(base_W + (B.double() @ A.double()) * pair.scaling, pair)
        cols["dora_magnitude_ratio_mean"] = float(ratio.mean())
        cols["dora_magnitude_ratio_std"] = float(ratio.std())
    return cols


def _row_name(job: _Job) -> str:
    """The short ``name`` column: the module's last part (``q_proj.lora_BA`` for LoRA rows)."""
    parts = job.longname.split(".")
    return parts[-1] if job.layer_type != "lora" else ".".join(parts[-2:])


def _row_for(
    job: _Job, src: Any, base_src: Any, opts: dict[str, Any], keep: dict | None = None
) -> dict[str, Any]:
    """Compute one row; bad numbers become a status, never an exception.

    ``keep``, if given, receives the row's ESD as ``keep["evals"]`` (for :func:`spectrum`).
    """
    N, M, rf = job.dims
    row: dict[str, Any] = {
        "layer_id": job.layer_id,
        "name": _row_name(job),
        "longname": job.longname,
        "layer_type": job.layer_type,
        "N": N,
        "M": M,
        "Q": N / M if M else math.nan,
        "rf": rf,
    }
    n_evals = M * rf if job.layer_type != "lora" else job.pair.r
    if job.layer_type != "lora" and n_evals > opts["max_evals"]:
        row.update(
            empty_metrics("skipped", f"{n_evals} eigenvalues > max_evals={opts['max_evals']}")
        )
        return row
    if job.layer_type != "lora" and N > opts["max_N"]:
        row.update(empty_metrics("skipped", f"N={N} > max_N={opts['max_N']}"))
        return row
    precision = opts["precision"]
    extra: dict[str, Any] = {}
    rank_loss = None
    rank_floor = 0.0  # the rank-r LoRA route's singular values are exact
    mats: list[torch.Tensor] = []
    scale = 1.0
    try:
        if job.pair is not None:
            pair = job.pair
            B, A = src.load_pair(pair)
            scaling = pair.scaling if opts["lora_scaling"] else 1.0
            extra.update(lora_rank=pair.r, scaling=pair.scaling)
            base_W = None
            if opts["with_base"] or (pair.magnitude_name and job.base_tensor):
                # the base weight as a matrix oriented like B @ A (conv kernels flattened)
                base_W = base_src.load(job.base_tensor).double().reshape(pair.shape)
            if pair.magnitude_name:
                extra.update(_dora_columns(src, pair, base_W, B, A))
            if opts["with_base"]:
                W = base_W + (B.double() @ A.double()) * scaling
                if pair.magnitude_name:  # DoRA: W' = m * (W + dW) / ||W + dW||
                    W = _dora_weight(src.load(pair.magnitude_name), W, pair)
                # analyzed like the merged base weight (Conv2D: pooled kernel positions)
                base_type = base_src.info(job.base_tensor).layer_type
                mats, scale = _matrices(W.reshape(pair.base_shape), base_type)
                evals, rank_loss = _pooled(mats, scale, precision)
                rank_floor = gram_rank_floor(precision)
                row["N"], row["M"] = max(mats[0].shape), min(mats[0].shape)
                row["Q"], row["rf"] = row["N"] / row["M"], len(mats)
            else:
                evals = lora_eigenvalues(A, B, scaling)
        else:
            W = src.load(job.tensor)
            if job.base_tensor is not None and opts["delta"]:  # W - W_base
                W = W.double() - base_src.load(job.base_tensor).double()
            elif job.base_tensor is not None and opts.get("plus_base"):  # W_base + Delta W
                W = base_src.load(job.base_tensor).double() + W.double()
            mats, scale = _matrices(W, job.layer_type)
            evals, rank_loss = _pooled(mats, scale, precision)
            rank_floor = gram_rank_floor(precision)
    except ValueError as exc:
        if "NaN or Inf" in str(exc):
            row.update(empty_metrics("non-finite", f"{job.tensor or job.pair.name}: {exc}"))
            row.update(extra)
            return row
        raise
    if keep is not None:
        keep["evals"] = np.sort(evals)
    metrics, _fit = esd_metrics(
        evals, row["N"], min_evals=opts["min_evals"], fix_fingers=opts["fix_fingers"],
        rank_loss=rank_loss, rank_floor=rank_floor, fit_type=opts.get("fit_type", "power_law"),
        detX=opts.get("detX", False), compare_fits=opts.get("compare_fits", False),
    )  # fmt: skip
    if job.layer_type == "lora" and metrics.get("status") in ("success", "failed"):
        # the ESD of a rank-r update has r nonzero eigenvalues; the reliability rule is on r
        if job.pair.r < opts["min_evals"] and TOO_FEW not in metrics["warning"]:
            metrics["warning"] = "; ".join(filter(None, [metrics["warning"], TOO_FEW]))
    row.update(metrics)
    row.update(extra)
    if opts["delta"] or job.layer_type == "lora":
        row["rank90"] = rank_at_energy(evals, 0.9)
    if opts.get("intruders"):
        row.update(_intruder_columns(job, src, base_src, opts))
    ok = metrics["status"] in ("success", "failed")
    if opts["mp_fit"] and ok:
        row.update(_mp_fit(evals, row["N"], row["M"] if job.layer_type != "lora" else job.pair.r))
    if opts["randomize"] and ok:
        if not mats:  # LoRA rank-r route: randomize the (formed) update
            mats = [(B.double() @ A.double()) * (job.pair.scaling if opts["lora_scaling"] else 1.0)]
        seed = (opts["seed"] * 1_000_003 + job.layer_id) % (2**63)
        row.update(
            randomized_metrics(
                mats, evals, row["N"], row["M"], seed=seed, scale=scale, precision=precision
            )  # fmt: skip
        )
    return row


def _intruder_columns(job: _Job, src: Any, base_src: Any, opts: dict[str, Any]) -> dict:
    """num_intruders / intruder_min_sim of one row (NaN with a reason where not defined)."""
    from spectune.watch.intruders import intruder_dimensions, lora_intruder_dimensions

    nan = {"num_intruders": math.nan, "intruder_min_sim": math.nan}
    if job.base_tensor is None:
        return nan
    W0 = base_src.load(job.base_tensor).double()
    kw = dict(top_k=opts["intruder_top_k"], threshold=opts["intruder_threshold"])
    try:
        if job.pair is not None:
            pair = job.pair
            if W0.ndim != 2 or pair.magnitude_name:  # conv kernels, DoRA: not defined here
                return nan
            B, A = src.load_pair(pair)  # oriented like the base weight (B A has pair.shape)
            res = lora_intruder_dimensions(W0.reshape(pair.shape), B, A, pair.scaling, **kw)
        else:
            Wt = src.load(job.tensor).double()
            if opts.get("plus_base") or opts.get("updates"):  # the tuned matrix is W_0 + update
                Wt = W0 + Wt
            if Wt.ndim != 2:
                return nan
            res = intruder_dimensions(W0, Wt, **kw)
    except ValueError:  # NaN/Inf: the row's status already says so
        return nan
    return {"num_intruders": res.num_intruders, "intruder_min_sim": res.min_similarity}


#: alpha above this: an overparameterized layer (FROG paper / WeightWatcher: "under-trained")
OVERPARAMETERIZED_ALPHA = 6.0
#: a LoRA update whose alpha is below this on an overparameterized base layer is flagged
OVERFIT_ADAPTER_ALPHA = 2.0
OVERFIT_ADAPTER = "adapter alpha < 2 on an alpha > 6 base layer (overfitting signal)"


def _flag_overfit_adapter(row: dict[str, Any]) -> None:
    """The blog's overfitting signal: a LoRA update with alpha < 2 on a base layer with alpha > 6."""
    if row.get("layer_type") != "lora":
        return
    alpha, base_alpha = row.get("alpha", math.nan), row.get("base_alpha", math.nan)
    if alpha < OVERFIT_ADAPTER_ALPHA and base_alpha > OVERPARAMETERIZED_ALPHA:
        row["warning"] = "; ".join(filter(None, [row.get("warning", ""), OVERFIT_ADAPTER]))


def _base_metrics(base_src: Any, name: str, opts: dict[str, Any], cache: dict[str, dict]) -> dict:
    if name not in cache:
        info = base_src.info(name)
        W = base_src.load(name)
        mats, scale = _matrices(W, info.layer_type)
        try:
            evals, rank_loss = _pooled(mats, scale, opts["precision"])
        except ValueError as exc:  # NaN/Inf in the base matrix: only the base columns say so
            if "NaN or Inf" not in str(exc):
                raise
            metrics = empty_metrics("non-finite", f"{name}: {exc}")
            cache[name] = {f"base_{c}": metrics[c] for c in BASE_COLUMNS}
            return cache[name]
        N = max(W.shape[0], W.shape[1])
        metrics, _ = esd_metrics(evals, N, min_evals=opts["min_evals"],
                                 fix_fingers=opts["fix_fingers"], rank_loss=rank_loss,
                                 rank_floor=gram_rank_floor(opts["precision"]),
                                 fit_type=opts.get("fit_type", "power_law"))  # fmt: skip
        cache[name] = {f"base_{c}": metrics[c] for c in BASE_COLUMNS}
    return cache[name]


def _jobs(src: Any, source: Any, peft: bool | str, delta: bool | str, base_src: Any) -> list[_Job]:
    """The rows to compute, with their base matrices matched (see :func:`analyze`); ``delta``
    is True (W - W_base), "plus_base" (W_base + the source's update) or False."""
    use_peft = bool(peft) or getattr(src, "kind", "") == "peft"
    jobs = _plan(src, source, use_peft, delta, base_src)
    if base_src is not None and not delta:
        for job in jobs:
            info = base_src.find_weight(job.pair.module if job.pair is not None else job.longname)
            job.base_tensor = info.name if info is not None else None
        if peft == "with_base":
            missing = [j.longname for j in jobs if j.base_tensor is None]
            if missing:
                raise SpectuneError(
                    f"peft='with_base': no base matrix for {missing[0]} "
                    f"({len(missing)} of {len(jobs)} pairs unmatched)"
                )
    return jobs


#: accepted ``fit=`` names (WeightWatcher's) -> (fit type, forced fix_fingers)
FIT_NAMES = {
    "PL": ("power_law", None), "power_law": ("power_law", None),
    "TPL": ("truncated_power_law", None), "truncated_power_law": ("truncated_power_law", None),
    "E_TPL": ("truncated_power_law", "xmin_peak"),
}  # fmt: skip


def _fit_options(fit: str, fix_fingers: str | None) -> tuple[str, str | None]:
    """Check ``fit`` and ``fix_fingers`` together; returns (fit type, fix_fingers)."""
    if fit not in FIT_NAMES:
        raise SpectuneError(f"fit must be one of {', '.join(FIT_NAMES)}, got {fit!r}")
    if fix_fingers not in (None, False, "", "clip_xmax", "xmin_peak"):
        raise SpectuneError(
            f"fix_fingers must be None, 'clip_xmax' or 'xmin_peak', got {fix_fingers!r}"
        )
    fit_type, forced = FIT_NAMES[fit]
    fix_fingers = fix_fingers or None
    if fit_type == "truncated_power_law" and fix_fingers == "clip_xmax":
        raise SpectuneError(
            f"fit={fit!r} cannot be combined with fix_fingers='clip_xmax' (as in WeightWatcher); "
            "use fix_fingers='xmin_peak' or fit='E_TPL'"
        )
    return fit_type, forced or fix_fingers


def analyze(
    source: Any,
    peft: bool | str = False,
    base: Any = None,
    layers: Any = None,
    *,
    delta: bool = False,
    plus_base: bool = False,
    updates: bool = False,
    min_evals: int = DEFAULT_MIN_EVALS,
    max_evals: int = DEFAULT_MAX_EVALS,
    max_N: int = DEFAULT_MAX_N,
    fix_fingers: str | None = None,
    mp_fit: bool = False,
    randomize: bool = False,
    lora_scaling: bool = True,
    precision: str = "float64",
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    fit: str = "PL",
    detX: bool = False,
    compare_fits: bool = False,
    intruders: bool = False,
    intruder_top_k: int = 10,
    intruder_threshold: float = 0.5,
) -> pd.DataFrame:
    """Spectral diagnostics of every weight matrix (or LoRA update) of ``source``.

    Args:
        source: an ``nn.Module``, state dict, Hugging Face folder, ``.safetensors`` /
            ``.bin`` / ``.pt`` / ``.gguf`` file, PEFT adapter folder or ``PeftModel``.
        peft: True to analyze LoRA pairs (Delta W = scaling * B A, one row per pair);
            "with_base" to analyze W + Delta W (needs ``base``). Adapter folders imply True.
        base: a second source, the base model. Rows get ``base_*`` columns of the matching
            base matrix (also with ``delta=True``, where it is subtracted, and with
            ``peft="with_base"``, where it is added).
        layers: None (all), a regex searched in each row's longname, or a list of layer ids
            and/or longnames.
        delta: analyze W - W_base for every matrix that matches a base matrix by name (full
            fine-tunes); adds ``rank90``.
        plus_base: the source holds updates Delta W (e.g. a mapping ``"<module>.weight" ->
            delta`` of a sparse fine-tune): analyze the tuned matrices W_base + Delta W, for
            every one that matches a base matrix by name (needs ``base``).
        updates: the source holds updates Delta W, as with ``plus_base``, but the rows are the
            updates themselves (a sparse fine-tune's own spectra); it tells ``intruders`` that
            the tuned matrix is W_base + Delta W.
        min_evals: fewer eigenvalues than this add the warning "too few eigenvalues for a
            reliable fit" (the row is still reported).
        max_evals: matrices with more eigenvalues (M * rf) are listed as "skipped".
        max_N: matrices with a larger dimension above this are listed as "skipped".
        fix_fingers: None, "clip_xmax" (WW's finger clipping; adds num_fingers, raw_alpha)
            or "xmin_peak" (xmin searched up to 1.5 x the ESD's peak, as WW with
            ``pl_package='powerlaw'``; WW's default package fails every such fit).
        mp_fit: add the Marchenko-Pastur columns (num_spikes, sigma_mp, bulk_max, bulk_min,
            mp_softrank, W_scale).
        randomize: add WW's randomized-ESD columns (seeded by ``seed``).
        lora_scaling: False for WW's unscaled B A.
        precision: "float64" (WW's numbers) or "float32" (faster; alphas within ~0.01).
        seed: seed of every random step (recorded in ``details.attrs``).
        progress: show a progress bar.
        workers: matrices computed at the same time, each on one thread (None: torch's
            thread count). Reading stays sequential, so at most ``workers + 1`` matrices are
            in memory; the rows are the same for any value.
        fit: "PL" (power law, the default), "TPL" (truncated power law: alpha is the TPL's,
            a ``Lambda`` column is added) or "E_TPL" (TPL with ``fix_fingers="xmin_peak"``),
            WeightWatcher's names and definitions (see :mod:`spectune.watch.tpl`).
        detX: add WW's detX / ERG columns (detX_num, num_ERG_spikes, ERG_gap, detX_val,
            detX_val_unrescaled).
        compare_fits: add the log-likelihood ratio test of power law against truncated power
            law on each row's tail (pl_tpl_R, pl_tpl_p, pl_tpl_R_normalized, better_fit).
        intruders: add intruder dimensions of the tuned matrix against the base
            (``num_intruders``, ``intruder_min_sim``; see
            :mod:`spectune.watch.intruders`): for LoRA rows W_0 + s B A (computed without
            forming B A), for ``delta=True`` rows the tuned matrix itself, for ``plus_base`` and
            ``updates`` rows W_base + Delta W. Needs ``base``.
        intruder_top_k: how many top singular vectors of the tuned matrix are examined.
        intruder_threshold: best |cosine| with the base's singular vectors below which a
            direction is an intruder.

    Returns:
        One row per matrix (see the module docstring for the columns); ``details.attrs``
        holds the arguments that produced it.

    Raises:
        SpectuneError: unreadable source, inconsistent options, nothing to analyze.
    """
    if peft not in (True, False, "with_base"):
        raise SpectuneError(f"peft must be True, False or 'with_base', got {peft!r}")
    if precision not in ("float64", "float32"):
        raise SpectuneError(f"precision must be 'float64' or 'float32', got {precision!r}")
    fit_type, fix_fingers = _fit_options(fit, fix_fingers)
    if peft == "with_base" and base is None:
        raise SpectuneError("peft='with_base' needs base= (the model the adapter was trained on)")
    if delta and base is None:
        raise SpectuneError("delta=True needs base= (the model before fine-tuning)")
    if delta and peft:
        raise SpectuneError("delta=True is for full fine-tunes; for an adapter use peft=True")
    if plus_base and (base is None or delta or peft):
        raise SpectuneError(
            "plus_base=True needs base= (the model the update applies to) and neither delta=True "
            "nor peft (for an adapter use peft='with_base')"
        )
    if updates and (delta or peft or plus_base):
        raise SpectuneError(
            "updates=True says the source holds updates analyzed as they are; it cannot be "
            "combined with delta=True, peft or plus_base=True"
        )
    if min_evals < 1:
        raise SpectuneError(f"min_evals must be >= 1, got {min_evals}")
    if intruders and base is None:
        raise SpectuneError(
            "intruders=True needs base= (the model before fine-tuning): intruder dimensions "
            "compare the tuned matrix's singular vectors with the base's"
        )
    if intruders and not (peft or delta or plus_base or updates):
        raise SpectuneError(
            "intruders=True needs a tuned model to compare: peft=True (an adapter), "
            "delta=True (a full fine-tune), plus_base=True or updates=True (a mapping of "
            "updates), with base="
        )
    if intruder_top_k < 1 or not 0.0 < intruder_threshold <= 1.0:
        raise SpectuneError(
            f"intruder_top_k must be >= 1 and intruder_threshold in (0, 1], got "
            f"{intruder_top_k} and {intruder_threshold}"
        )

    src, close_src = _open(source, peft)
    base_src, close_base = _open(base, False) if base is not None else (None, False)
    try:
        jobs = _jobs(src, source, peft, "plus_base" if plus_base else delta, base_src)
        keep = _layer_filter(layers)
        jobs = [j for j in jobs if keep(j)]
        if not jobs:
            raise SpectuneError(f"layers={layers!r} selects no matrix")
        opts = dict(
            min_evals=min_evals, max_evals=max_evals, max_N=max_N, fix_fingers=fix_fingers or None,
            mp_fit=mp_fit, randomize=randomize, lora_scaling=lora_scaling, precision=precision,
            seed=seed, delta=delta, plus_base=plus_base, updates=updates,
            with_base=peft == "with_base", fit_type=fit_type, detX=detX,
            compare_fits=compare_fits, intruders=intruders, intruder_top_k=intruder_top_k,
            intruder_threshold=intruder_threshold,
        )  # fmt: skip
        base_cache: dict[str, dict] = {}
        lock = threading.Lock()
        src_l = _Serialized(src, lock)
        base_l = _Serialized(base_src, lock) if base_src is not None else None

        def one(job: _Job) -> dict[str, Any]:
            row = _row_for(job, src_l, base_l, opts)
            if base_l is not None and job.base_tensor is not None:
                row.update(_base_metrics(base_l, job.base_tensor, opts, base_cache))
                _flag_overfit_adapter(row)
            return row

        n_workers = torch.get_num_threads() if workers is None else int(workers)
        rows = list(track(_ordered_map(one, jobs, n_workers), len(jobs), "spectra",
                          enabled=progress))  # fmt: skip
    finally:
        if close_src:
            src.close()
        if close_base:
            base_src.close()
    details = pd.DataFrame.from_records(rows)
    ordered = LEAD_COLUMNS + [c for c in METRIC_COLUMNS if c in details.columns]
    details = details[ordered + [c for c in details.columns if c not in ordered]]
    details.attrs["spectune"] = {
        "peft": peft, "delta": delta, "plus_base": plus_base, "updates": updates,
        "min_evals": min_evals,
        "max_evals": max_evals, "max_N": max_N, "fix_fingers": fix_fingers, "mp_fit": mp_fit, "randomize": randomize,
        "lora_scaling": lora_scaling, "precision": precision, "seed": seed, "fit": fit,
        "detX": detX, "compare_fits": compare_fits, "intruders": intruders,
        "intruder_top_k": intruder_top_k, "intruder_threshold": intruder_threshold,
    }  # fmt: skip
    return details


def spectrum(
    source: Any,
    layer: str,
    peft: bool | str = False,
    *,
    base: Any = None,
    delta: bool = False,
    plus_base: bool = False,
    lora_scaling: bool = True,
    precision: str = "float64",
    fix_fingers: str | None = None,
    fit: str = "PL",
):
    """The ESD of one row of :func:`analyze` and its power-law fit (for plots).

    Args:
        source: as for :func:`analyze`.
        layer: the row's ``longname``.
        peft, base, delta, plus_base, lora_scaling, precision, fix_fingers, fit: as for
            :func:`analyze`, so the spectrum is the one the row was computed from (a delta,
            W + Delta W...) and the fit the one its alpha came from.

    Returns:
        ``(evals, fit)``: ascending float64 eigenvalues and a
        :class:`~spectune.watch.powerlaw.PowerLawFit` (with ``fit="TPL"`` / ``"E_TPL"`` a
        :class:`~spectune.watch.tpl.TruncatedPowerLawFit`).

    Raises:
        SpectuneError: no row has that longname, inconsistent options, or the matrix holds
            NaN/Inf values.
    """
    import sys

    from spectune.watch.powerlaw import fit_powerlaw

    if (peft == "with_base" or delta or plus_base) and base is None:
        raise SpectuneError(
            "spectrum(): peft='with_base', delta=True and plus_base=True need base="
        )
    fit_type, fix_fingers = _fit_options(fit, fix_fingers)
    src, close_src = _open(source, peft)
    base_src, close_base = _open(base, False) if base is not None else (None, False)
    keep: dict[str, Any] = {}
    try:
        match = "plus_base" if plus_base else delta
        jobs = [j for j in _jobs(src, source, peft, match, base_src) if j.longname == layer]
        if not jobs:
            raise SpectuneError(f"no matrix named {layer!r} in {src!r}")
        opts = dict(
            min_evals=1, max_evals=sys.maxsize, max_N=sys.maxsize, fix_fingers=None,
            mp_fit=False, randomize=False, lora_scaling=lora_scaling, precision=precision,
            seed=0, delta=delta, plus_base=plus_base, with_base=peft == "with_base",
        )  # fmt: skip
        _row_for(jobs[0], src, base_src, opts, keep)
    finally:
        if close_src:
            src.close()
        if close_base:
            base_src.close()
    if "evals" not in keep:
        raise SpectuneError(f"{layer}: the matrix holds NaN or Inf values; it has no spectrum")
    evals = keep["evals"]
    if fit_type == "truncated_power_law":
        from spectune.watch.tpl import fit_truncated_powerlaw

        return evals, fit_truncated_powerlaw(evals, fix_fingers=fix_fingers)
    return evals, fit_powerlaw(evals, fix_fingers=fix_fingers)


def describe(source: Any, peft: bool | str = False, layers: Any = None) -> pd.DataFrame:
    """The rows :func:`analyze` would compute, with shapes only (no tensor data is read).

    Returns:
        DataFrame with layer_id, name, longname, layer_type, N, M, Q, rf, num_evals and, for
        LoRA pairs, lora_rank and scaling.
    """
    src, close_src = _open(source, peft)
    try:
        use_peft = bool(peft) or getattr(src, "kind", "") == "peft"
        jobs = [j for j in _plan(src, source, use_peft, False, None) if _layer_filter(layers)(j)]
    finally:
        if close_src:
            src.close()
    rows = []
    for job in jobs:
        N, M, rf = job.dims
        row = {"layer_id": job.layer_id, "name": _row_name(job),
               "longname": job.longname, "layer_type": job.layer_type, "N": N, "M": M,
               "Q": N / M if M else math.nan, "rf": rf,
               "num_evals": job.pair.r if job.pair is not None else M * rf}  # fmt: skip
        if job.pair is not None:
            row.update(lora_rank=job.pair.r, scaling=job.pair.scaling)
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def summarize(details: pd.DataFrame) -> dict[str, Any]:
    """Model-level summary: means of the metrics over layers whose fit succeeded.

    Rows with status "failed", "zero-update", "non-finite" or "skipped" are left out of the
    means (WW averages its -1 placeholders in) and counted instead.

    Returns:
        dict with n_layers, n_analyzed, counts per status and per warning, the mean of each
        column of :data:`SUMMARY_COLUMNS` present in ``details``, the overparameterized layers
        (alpha > 6: ``n_overparameterized``, ``overparameterized_layers``; with base columns
        also the base's: ``n_base_overparameterized``, ``base_overparameterized_layers``),
        with intruder columns their total (``num_intruders``) and ``layers_with_intruders``,
        and LoRA rows flagged as overfitting (``n_overfit_adapters``,
        ``overfit_adapter_layers``: alpha < 2 on a base alpha > 6).
    """
    if not isinstance(details, pd.DataFrame):
        raise SpectuneError("summarize() takes the DataFrame returned by analyze()")
    out: dict[str, Any] = {"n_layers": int(len(details))}
    status = details.get("status", pd.Series(dtype=str))
    ok = details[status == "success"]
    out["n_analyzed"] = int(len(ok))
    out["status_counts"] = {str(k): int(v) for k, v in status.value_counts().items()}
    warn_counts: dict[str, int] = {}
    for w in details.get("warning", pd.Series(dtype=str)).fillna(""):
        for part in filter(None, (p.strip() for p in str(w).split(";"))):
            # "tensor: reason" counts by reason; "N=... > max_N=..." by the limit
            key = part.rsplit(": ", 1)[-1] if ": " in part else part
            key = key.split(">")[-1].strip() if ">" in key else key
            warn_counts[key] = warn_counts.get(key, 0) + 1
    out["warning_counts"] = warn_counts
    for col in SUMMARY_COLUMNS:
        if col in ok.columns:
            values = pd.to_numeric(ok[col], errors="coerce").dropna()
            out[col] = float(values.mean()) if len(values) else math.nan
    if "alpha" in ok.columns and "longname" in ok.columns:
        over = ok[pd.to_numeric(ok["alpha"], errors="coerce") > OVERPARAMETERIZED_ALPHA]
        out["n_overparameterized"] = int(len(over))
        out["overparameterized_layers"] = [str(x) for x in over["longname"]]
    if {"base_alpha", "base_status", "longname"} <= set(details.columns):
        base_ok = details[details["base_status"] == "success"]
        over = base_ok[
            pd.to_numeric(base_ok["base_alpha"], errors="coerce") > OVERPARAMETERIZED_ALPHA
        ]
        out["n_base_overparameterized"] = int(len(over))
        out["base_overparameterized_layers"] = [str(x) for x in over["longname"]]
    if "num_intruders" in details.columns:
        n = pd.to_numeric(details["num_intruders"], errors="coerce")
        out["num_intruders"] = int(n.fillna(0).sum())
        out["layers_with_intruders"] = int((n > 0).sum())
    if "warning" in details.columns and "longname" in details.columns:
        flagged = details[details["warning"].fillna("").str.contains(OVERFIT_ADAPTER, regex=False)]
        if len(flagged):
            out["overfit_adapter_layers"] = [str(x) for x in flagged["longname"]]
        lora = "layer_type" in details.columns and (details["layer_type"] == "lora").any()
        if len(flagged) or (lora and "base_alpha" in details.columns):
            out["n_overfit_adapters"] = int(len(flagged))
    return out


__all__ = ["analyze", "describe", "spectrum", "summarize"]
