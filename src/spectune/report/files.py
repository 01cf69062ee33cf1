"""Writers of result files and figures: every file atomically (temporary file, then rename).

Computation never writes files; these functions take what was computed (a details table, a
summary, matplotlib Figures) and put it on disk. The CLI and the fine-tuning recipe both use
them, so neither depends on the other.

The folder writers take ``own``: called with each file's name before the file is written, so
the folder's owner (:meth:`spectune.results.runfolder.RunFolder.own`) records it as
spectune's, or refuses a file of the user's that is in the way.

The CLI imports this module at start-up (``spectune --help`` included), so matplotlib, pandas,
the figures and the spectral engine are imported inside the functions that use them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spectune._io import atomic_path, write_json

#: ``own(name)`` before a file ``name`` is written into the folder (see the module docstring)
Own = Callable[[str], Any]


def _no_owner(name: str) -> None:
    return None


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib Figure as PNG atomically, then close it; returns ``path``."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def save_figures(figures: dict[str, Any], folder: Path) -> list[Path]:
    """Save ``name -> Figure`` into ``folder``; returns the paths written."""
    return [save_figure(fig, Path(folder) / name) for name, fig in figures.items()]


def write_csv(frame: Any, path: Path) -> Path:
    """A DataFrame as CSV (no index), atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def spectral_figures(details: Any = None, flow: Any = None) -> dict[str, Any]:
    """The figures of a details table's watch columns: ``intruders.png`` (intruder dimensions
    per layer, with ``num_intruders``) and ``correlation_flow.png`` (a non-empty
    :func:`~spectune.watch.compare.correlation_flow` table)."""
    import pandas as pd

    from spectune.report.plots import spectra as P

    figs: dict[str, Any] = {}
    if details is not None and "num_intruders" in details:
        if pd.to_numeric(details["num_intruders"], errors="coerce").notna().any():
            figs["intruders.png"] = P.intruders_by_layer(details)
    if flow is not None and len(flow):
        figs["correlation_flow.png"] = P.correlation_flow_plot(flow, title="Alpha along depth")
    return figs


def write_results(
    details: Any,
    summary: dict,
    out: Path,
    *,
    plots: bool,
    source: Any = None,
    peft: bool | str = False,
    base: Any = None,
    flow: bool = False,
    own: Own = _no_owner,
) -> list[Path]:
    """Write details.csv, details.json, summary.json and (optionally) figures, each atomically.

    With ``flow``, also ``flow.csv``: alpha along depth per layer type with its trend and the
    layers that break it (:func:`~spectune.watch.compare.correlation_flow`; written when
    any row has a block index), and with ``plots`` its figure. The ESD figures recompute the
    plotted rows' spectra with the options in ``details.attrs`` (delta, W + Delta W, LoRA
    scaling, precision, finger clipping) and ``base``. ``own`` is called with each file's
    name before it is written.
    """
    out.mkdir(parents=True, exist_ok=True)
    own("details.csv")
    written = [write_csv(details, out / "details.csv")]
    own("details.json")
    write_json(out / "details.json", details.to_dict(orient="records"))
    written.append(out / "details.json")
    own("summary.json")
    write_json(out / "summary.json", {**summary, "options": details.attrs.get("spectune", {})})
    written.append(out / "summary.json")
    flow_table = None
    if flow:
        from spectune.watch.compare import correlation_flow

        flow_table = correlation_flow(details)
        if len(flow_table):
            own("flow.csv")
            written.append(write_csv(flow_table, out / "flow.csv"))
    if plots:
        from spectune.report.plots import spectra as P
        from spectune.watch import spectrum

        figs = {
            "alpha_hist.png": P.alpha_histogram(details),
            "alpha_depth.png": P.alpha_by_depth(details),
        }
        if "base_alpha" in details:
            figs["alpha_vs_base.png"] = P.base_vs_adapter_alpha(details)
        if source is not None:
            opts = details.attrs.get("spectune", {})
            for i, name in enumerate(P.pick_layers(details)):
                evals, fit = spectrum(
                    source,
                    name,
                    peft=opts.get("peft", peft),
                    base=base,
                    delta=bool(opts.get("delta", False)),
                    plus_base=bool(opts.get("plus_base", False)),
                    lora_scaling=opts.get("lora_scaling", True),
                    precision=opts.get("precision", "float64"),
                    fix_fingers=opts.get("fix_fingers"),
                )
                figs[f"esd_{i}.png"] = P.esd_loglog(evals, fit, title=f"ESD of {name}")
        figs.update(spectral_figures(details, flow_table))
        for fname, fig in figs.items():
            own(fname)
            save_figure(fig, out / fname)
            written.append(out / fname)
    return written


def write_comparison_results(
    comparison: Any, out: Path, *, plots: bool, own: Own = _no_owner
) -> list[Path]:
    """Write a :class:`~spectune.watch.compare.ModelComparison` into ``out``, each file
    atomically: ``compare.csv`` (per layer), ``compare.json`` (the summary), ``flow.csv``
    (both flows side by side) and, with ``plots``, ``scale_collapse.png`` and
    ``correlation_flow.png``; ``own`` is called with each name first. Returns the paths
    written."""
    out.mkdir(parents=True, exist_ok=True)
    own("compare.csv")
    written = [write_csv(comparison.table, out / "compare.csv")]
    own("compare.json")
    write_json(out / "compare.json", comparison.summary)
    written.append(out / "compare.json")
    own("flow.csv")
    written.append(write_csv(comparison.flow, out / "flow.csv"))
    if plots:
        from spectune.report.plots.spectra import correlation_flow_plot, scale_collapse

        a, b = comparison.summary.get("labels") or ("a", "b")
        figures = {
            "scale_collapse.png": scale_collapse(
                comparison.table, title=f"Norm change ({b} - {a})"
            ),
            "correlation_flow.png": correlation_flow_plot(
                comparison.flow_a,
                comparison.flow_b,
                labels=(a, b),
                title=f"Alpha along depth: {a} (solid) and {b} (dashed)",
            ),
        }
        for name in figures:
            own(name)
        written += save_figures(figures, out)
    return written


__all__ = [
    "save_figure",
    "save_figures",
    "spectral_figures",
    "write_comparison_results",
    "write_csv",
    "write_results",
]
