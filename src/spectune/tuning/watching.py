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


def watch_update(
    what: Any, model_dir: Path, config: Any, *, progress: bool, notes: list[str]
) -> tuple[Any, dict[str, Any], Any]:
    """The spectra of what training changed (``what``: a :class:`~spectune.tuning.methods.
    base.SpectraInput`) with the base model's metrics alongside, their summary, and the tuned
    matrices against the base's (``eval.compare_base``): the recipe's watch phase, and
    ``spectune judge``'s on an adapter that exists.

    Args:
        what: what the engine reads (an adapter folder, a model, a mapping of updates).
        model_dir: the base model folder.
        config: the run's :class:`~spectune.tuning.config.TuneConfig` (its ``eval`` section).
        progress: progress bars.
        notes: where a comparison that cannot be made says why.

    Returns:
        (details table, summary dict, :class:`~spectune.watch.compare.ModelComparison` or
        None).
    """
    from spectune.watch import summarize

    # intruders: there is a tuned W to compare (an adapter, a full fine-tune, a sparse update)
    intruders = config.eval.intruders and (what.peft or what.delta or what.update)
    details = analyze_spectra(
        what.source,
        peft=what.peft,
        delta=what.delta,
        updates=what.update,
        base=model_dir,
        precision=config.eval.spectra_precision,
        intruders=intruders,
        progress=progress,
    )
    summary = summarize(details)
    if "base_alpha" in details:
        ok = details[details["base_status"] == "success"]
        summary["base_alpha"] = float(ok["base_alpha"].mean()) if len(ok) else None
    comparison = None
    if config.eval.compare_base:
        comparison = compare_to_base(what, details, model_dir, config, progress, notes)
    if comparison is not None:
        summary["n_collapsed"] = comparison.summary["n_collapsed"]
        summary["n_flow_bent"] = comparison.summary["n_flow_bent"]
    return details, summary, comparison


def compare_base(run: Run, what: Any, details: Any) -> Any:
    """:func:`compare_to_base` of a run (its model folder, config, progress and notes)."""
    return compare_to_base(what, details, run.model_dir, run.config, run.progress, run.built.notes)


def compare_to_base(
    what: Any, details: Any, model_dir: Path, config: Any, progress: bool, notes: list[str]
) -> Any:
    """The tuned matrices (base + the update) against the base's, layer by layer: a
    :class:`~spectune.watch.compare.ModelComparison` (scale collapse, correlation flow),
    or None, with a note in ``notes``, when they cannot be formed.

    The tuned matrices are analyzed with the base alongside (its columns give the base's
    table): a LoRA-family adapter as W + Delta W (``peft="with_base"``; DoRA's magnitudes
    applied; a 4-bit base's rounding left out), a model (full fine-tuning) as it is, and a
    mapping of updates (FROG, ShiRA) as W_base + Delta W (``plus_base``).
    """
    kw = dict(base=model_dir, precision=config.eval.spectra_precision, progress=progress)
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
        notes.append(f"base against tuned comparison left out: {exc}")
        return None


__all__ = ["compare_base", "compare_to_base", "spectra_rows", "watch_update"]
