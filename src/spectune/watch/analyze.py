"""analyze / spectrum: WeightWatcher-style diagnostics of any weights, one row per matrix.

>>> import spectune as st                                           # doctest: +SKIP
>>> details = st.analyze("path/to/model")                           # one row per matrix
>>> st.summarize(details)["alpha"]                                  # mean alpha

:func:`analyze` checks its arguments together, opens the source (and the base model), selects
the rows, computes them and returns them as a DataFrame in WeightWatcher 0.7.7's column order;
what a row holds and how it is computed is :mod:`spectune.watch.rows`' part (also the module
docstring's list of deliberate differences from WW), :func:`~spectune.watch.summary.describe`
and :func:`~spectune.watch.summary.summarize` are the tables before and after. Rows are
computed on ``workers`` threads, reading serialized (sources are not thread-safe), at most
``workers + 1`` matrices in memory, in the same order and with the same numbers for any
number of workers. :func:`spectrum` gives one row's ESD and fit, for plots.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from spectune._progress import track
from spectune.errors import SpectuneError
from spectune.watch.metrics import METRIC_COLUMNS
from spectune.watch.powerlaw import PowerLawFit, fit_powerlaw
from spectune.watch.rows import (
    LEAD_COLUMNS,
    RowOptions,
    RowSpec,
    base_columns,
    compute_row,
    filter_rows,
    flag_overfit_adapter,
    open_weights,
    select_rows,
)
from spectune.watch.tpl import TruncatedPowerLawFit, fit_truncated_powerlaw

DEFAULT_MIN_EVALS = 8
DEFAULT_MAX_EVALS = 15000
DEFAULT_MAX_N = 50000

#: the arguments of :func:`analyze` recorded in ``details.attrs["spectune"]``, in order
RECORDED_ARGUMENTS = (
    "peft", "delta", "plus_base", "updates", "min_evals", "max_evals", "max_N", "fix_fingers",
    "mp_fit", "randomize", "lora_scaling", "precision", "seed", "fit", "detX", "compare_fits",
    "intruders", "intruder_top_k", "intruder_threshold",
)  # fmt: skip


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


def _row_options(args: dict[str, Any]) -> RowOptions:
    """Check :func:`analyze`'s arguments (``args``, by name) together and turn those that
    shape a row into :class:`~spectune.watch.rows.RowOptions`.

    Raises:
        SpectuneError: an unknown value or an inconsistent combination, naming what to change.
    """
    peft, has_base, delta = args["peft"], args["base"] is not None, args["delta"]
    plus_base, updates, intruders = args["plus_base"], args["updates"], args["intruders"]
    if peft not in (True, False, "with_base"):
        raise SpectuneError(f"peft must be True, False or 'with_base', got {peft!r}")
    if args["precision"] not in ("float64", "float32"):
        raise SpectuneError(f"precision must be 'float64' or 'float32', got {args['precision']!r}")
    fit_type, fix_fingers = _fit_options(args["fit"], args["fix_fingers"])
    if peft == "with_base" and not has_base:
        raise SpectuneError("peft='with_base' needs base= (the model the adapter was trained on)")
    if delta and not has_base:
        raise SpectuneError("delta=True needs base= (the model before fine-tuning)")
    if delta and peft:
        raise SpectuneError("delta=True is for full fine-tunes; for an adapter use peft=True")
    if plus_base and (not has_base or delta or peft):
        raise SpectuneError(
            "plus_base=True needs base= (the model the update applies to) and neither delta=True "
            "nor peft (for an adapter use peft='with_base')"
        )
    if updates and (delta or peft or plus_base):
        raise SpectuneError(
            "updates=True says the source holds updates analyzed as they are; it cannot be "
            "combined with delta=True, peft or plus_base=True"
        )
    if args["min_evals"] < 1:
        raise SpectuneError(f"min_evals must be >= 1, got {args['min_evals']}")
    if intruders and not has_base:
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
    if args["intruder_top_k"] < 1 or not 0.0 < args["intruder_threshold"] <= 1.0:
        raise SpectuneError(
            f"intruder_top_k must be >= 1 and intruder_threshold in (0, 1], got "
            f"{args['intruder_top_k']} and {args['intruder_threshold']}"
        )
    return RowOptions(
        min_evals=args["min_evals"],
        max_evals=args["max_evals"],
        max_N=args["max_N"],
        precision=args["precision"],
        lora_scaling=args["lora_scaling"],
        fix_fingers=fix_fingers or None,
        fit_type=fit_type,
        mp_fit=args["mp_fit"],
        randomize=args["randomize"],
        seed=args["seed"],
        delta=delta,
        plus_base=plus_base,
        updates=updates,
        with_base=peft == "with_base",
        detX=args["detX"],
        compare_fits=args["compare_fits"],
        intruders=intruders,
        intruder_top_k=args["intruder_top_k"],
        intruder_threshold=args["intruder_threshold"],
    )


def _compute_rows(
    specs: list[RowSpec],
    src: Any,
    base_src: Any,
    opts: RowOptions,
    workers: int | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """The rows of ``specs`` in order, each with its base columns, on ``workers`` threads."""
    base_cache: dict[str, dict] = {}
    lock = threading.Lock()
    src_l = _Serialized(src, lock)
    base_l = _Serialized(base_src, lock) if base_src is not None else None

    def one(spec: RowSpec) -> dict[str, Any]:
        row = compute_row(spec, src_l, base_l, opts)
        if base_l is not None and spec.base_tensor is not None:
            row.update(base_columns(base_l, spec.base_tensor, opts, base_cache))
            flag_overfit_adapter(row)
        return row

    n_workers = torch.get_num_threads() if workers is None else int(workers)
    return list(track(_ordered_map(one, specs, n_workers), len(specs), "spectra", enabled=progress))


def _details_frame(rows: list[dict[str, Any]], recorded: dict[str, Any]) -> pd.DataFrame:
    """The rows as a DataFrame: the lead columns, the metric columns present, then the rest;
    ``recorded`` (the arguments) goes to ``attrs["spectune"]``."""
    details = pd.DataFrame.from_records(rows)
    ordered = LEAD_COLUMNS + [c for c in METRIC_COLUMNS if c in details.columns]
    details = details[ordered + [c for c in details.columns if c not in ordered]]
    details.attrs["spectune"] = recorded
    return details


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
    arguments = dict(locals())  # every argument by name: checked together, then recorded
    opts = _row_options(arguments)
    recorded = {name: arguments[name] for name in RECORDED_ARGUMENTS}
    recorded["fix_fingers"] = opts.fix_fingers  # as resolved by ``fit`` ("E_TPL": "xmin_peak")
    with (
        open_weights(source, peft) as src,
        open_weights(base, False) if base is not None else nullcontext() as base_src,
    ):
        specs = select_rows(src, source, peft, "plus_base" if plus_base else delta, base_src)
        specs = filter_rows(specs, layers)
        if not specs:
            raise SpectuneError(f"layers={layers!r} selects no matrix")
        rows = _compute_rows(specs, src, base_src, opts, workers, progress)
    return _details_frame(rows, recorded)


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
) -> tuple[np.ndarray, PowerLawFit | TruncatedPowerLawFit]:
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
    if (peft == "with_base" or delta or plus_base) and base is None:
        raise SpectuneError(
            "spectrum(): peft='with_base', delta=True and plus_base=True need base="
        )
    fit_type, fix_fingers = _fit_options(fit, fix_fingers)
    opts = RowOptions(
        min_evals=1,
        max_evals=sys.maxsize,
        max_N=sys.maxsize,
        precision=precision,
        lora_scaling=lora_scaling,
        delta=delta,
        plus_base=plus_base,
        with_base=peft == "with_base",
    )
    keep: dict[str, Any] = {}
    with (
        open_weights(source, peft) as src,
        open_weights(base, False) if base is not None else nullcontext() as base_src,
    ):
        match = "plus_base" if plus_base else delta
        specs = [s for s in select_rows(src, source, peft, match, base_src) if s.longname == layer]
        if not specs:
            raise SpectuneError(f"no matrix named {layer!r} in {src!r}")
        compute_row(specs[0], src, base_src, opts, keep)
    if "evals" not in keep:
        raise SpectuneError(f"{layer}: the matrix holds NaN or Inf values; it has no spectrum")
    evals = keep["evals"]
    if fit_type == "truncated_power_law":
        return evals, fit_truncated_powerlaw(evals, fix_fingers=fix_fingers)
    return evals, fit_powerlaw(evals, fix_fingers=fix_fingers)


__all__ = ["analyze", "spectrum"]
