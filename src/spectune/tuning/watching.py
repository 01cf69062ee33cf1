"""The run watched: the spectra of what it trains, while it trains (:func:`spectra_rows`, one
row per matrix for the ``eval.spectra_every_steps`` log) and after (:func:`compare_base`, the
tuned matrices against the base model's). The analysis itself is :mod:`spectune.watch`'s."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.errors import SpectuneError
from spectune.watch import analyze as analyze_spectra
from spectune.watch.compare import base_and_tuned, compare_models

if TYPE_CHECKING:
    from spectune.tuning.run import Run


def spectra_rows(run: Run) -> list[dict[str, Any]]:
    """The spectra of the model as it is now (:meth:`Method.spectra`, without the base
    comparison), one row per analyzed matrix (the :data:`~spectune.tuning.trainer.
    SPECTRA_COLUMNS`). The adapter is saved (into a temporary folder under ``checkpoints/``)
    only when the method's spectra read the saved folder (the LoRA family: its low-rank path)."""
    with tempfile.TemporaryDirectory(dir=run.out / "checkpoints", prefix="spectra-") as tmp:
        folder = Path(tmp) / "adapter"
        what = run.method.spectra(run.built, run.context, folder)
        if isinstance(what.source, (str, Path)) and Path(what.source).is_relative_to(folder):
            folder.mkdir()
            run.method.save(run.built, folder)
        details = analyze_spectra(
            what.source,
            peft=what.peft,
            delta=what.delta,
            base=run.model_dir if what.delta else None,
            precision=run.config.eval.spectra_precision,
            progress=False,
        )
    rows = []
    for rec in details.to_dict(orient="records"):
        row = {
            k: rec.get(k)
            for k in ("layer_id", "longname", "status", "alpha", "stable_rank", "log_norm")
        }
        rows.append(
            {
                k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in row.items()
            }
        )
    return rows


def compare_base(run: Run, what: Any, details: Any) -> Any:
    """The tuned matrices (base + the update) against the base's, layer by layer: a
    :class:`~spectune.watch.compare.ModelComparison` (scale collapse, correlation flow),
    or None, with a note, when they cannot be formed.

    The tuned matrices are analyzed with the base alongside (its columns give the base's
    table): a LoRA-family adapter as W + Delta W (``peft="with_base"``; DoRA's magnitudes
    applied; a 4-bit base's rounding left out), a model (full fine-tuning) as it is, and a
    mapping of updates (FROG, ShiRA) as W_base + Delta W (``plus_base``).
    """
    kw = dict(
        base=run.model_dir, precision=run.config.eval.spectra_precision, progress=run.progress
    )
    try:
        if what.peft:
            tuned = analyze_spectra(what.source, peft="with_base", **kw)
        elif what.delta:
            tuned = analyze_spectra(what.source, layers=[str(n) for n in details["longname"]], **kw)
        else:
            tuned = analyze_spectra(what.source, plus_base=True, **kw)
        base_table, tuned_table = base_and_tuned(tuned)
        return compare_models(base_table, tuned_table, labels=("base", "tuned"))
    except SpectuneError as exc:
        run.built.notes.append(f"base against tuned comparison left out: {exc}")
        return None


__all__ = ["compare_base", "spectra_rows"]
