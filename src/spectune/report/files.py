"""Writers of result files and figures: every file atomically (temporary file, then rename).

Computation never writes files; these functions take what was computed (a details table, a
summary, matplotlib Figures) and put it on disk. The CLI and the fine-tuning recipe both use
them, so neither depends on the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib Figure as PNG atomically, then close it; returns ``path``."""
    import matplotlib.pyplot as plt

    from spectune._io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def save_figures(figures: dict[str, Any], folder: Path) -> list[Path]:
    """Save ``name -> Figure`` into ``folder``; returns the paths written."""
    return [save_figure(fig, Path(folder) / name) for name, fig in figures.items()]


def write_results(details: Any, summary: dict, out: Path, *, plots: bool,
                  source: Any = None, peft: bool | str = False,
                  base: Any = None) -> list[Path]:  # fmt: skip
    """Write details.csv, details.json, summary.json and (optionally) figures, each atomically.

    The ESD figures recompute the plotted rows' spectra with the options in ``details.attrs``
    (delta, W + Delta W, LoRA scaling, precision, finger clipping) and ``base``.
    """
    from spectune._io import atomic_path, write_json

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with atomic_path(out / "details.csv") as tmp:
        details.to_csv(tmp, index=False)
    written.append(out / "details.csv")
    write_json(out / "details.json", details.to_dict(orient="records"))
    written.append(out / "details.json")
    write_json(out / "summary.json", {**summary, "options": details.attrs.get("spectune", {})})
    written.append(out / "summary.json")
    if plots:
        from spectune.report import plots as P
        from spectune.spectral import spectrum

        figs = {"alpha_hist.png": P.alpha_histogram(details),
                "alpha_depth.png": P.alpha_by_depth(details)}  # fmt: skip
        if "base_alpha" in details:
            figs["alpha_vs_base.png"] = P.base_vs_adapter_alpha(details)
        if source is not None:
            opts = details.attrs.get("spectune", {})
            for i, name in enumerate(P.pick_layers(details)):
                evals, fit = spectrum(
                    source, name, peft=opts.get("peft", peft), base=base,
                    delta=bool(opts.get("delta", False)),
                    lora_scaling=opts.get("lora_scaling", True),
                    precision=opts.get("precision", "float64"),
                    fix_fingers=opts.get("fix_fingers"),
                )  # fmt: skip
                figs[f"esd_{i}.png"] = P.esd_loglog(evals, fit, title=f"ESD of {name}")
        for fname, fig in figs.items():
            save_figure(fig, out / fname)
            written.append(out / fname)
    return written


__all__ = ["save_figure", "save_figures", "write_results"]
