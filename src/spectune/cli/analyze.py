"""``spectune analyze``: spectral diagnostics of a model, checkpoint, GGUF or PEFT adapter."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "WeightWatcher-style spectral diagnostics (alpha, norms, ranks) of any weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="model folder, .safetensors/.bin/.pt/.gguf file, "
                        "PEFT adapter folder, or 'default' for the embedded model")  # fmt: skip
    parser.add_argument("--peft", action="store_true", help="analyze LoRA pairs as Delta W = s*B*A")
    parser.add_argument("--with-base", action="store_true",
                        help="with --peft and --base: analyze W + Delta W")  # fmt: skip
    parser.add_argument("--base", help="the base model: adds base_* columns (or the delta's base)")
    parser.add_argument("--delta", action="store_true", help="analyze W - W_base (needs --base)")
    parser.add_argument("--layers", help="regex: only rows whose longname matches")
    parser.add_argument("--out", help="results folder for details.csv/.json, summary.json, plots")
    parser.add_argument("--plots", action="store_true", help="also write PNG figures to --out")
    parser.add_argument("--min-evals", type=int, default=8)
    parser.add_argument("--max-evals", type=int, default=15000)
    parser.add_argument("--fix-fingers", choices=["clip_xmax"], default=None)
    parser.add_argument("--mp-fit", action="store_true", help="add Marchenko-Pastur columns")
    parser.add_argument("--randomize", action="store_true", help="add randomized-ESD columns")
    parser.add_argument("--no-lora-scaling", action="store_true",
                        help="analyze the unscaled B*A (WeightWatcher's convention)")  # fmt: skip
    parser.add_argument("--precision", choices=["float64", "float32"], default="float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def resolve_source(source: str) -> Any:
    """'default' means the embedded model's folder; anything else must exist."""
    from spectune.errors import SpectuneError

    if source == "default":
        from spectune.models import default_model_dir

        return default_model_dir()
    if not Path(source).exists():
        raise SpectuneError(f"{source}: no such file or folder")
    return source


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
        from spectune.cli._common import save_figure
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


def show_summary(details: Any, summary: dict, title: str) -> None:
    from spectune.cli._common import print_table

    worst = details[details["status"] == "success"].sort_values("alpha")
    rows = worst.head(5).to_dict(orient="records") + worst.tail(5).to_dict(orient="records")
    print_table(rows, f"{title}: lowest and highest alpha",
                ["longname", "N", "M", "alpha", "alpha_weighted", "log_norm", "stable_rank", "D",
                 "warning"])  # fmt: skip
    keys = ["n_layers", "n_analyzed", "alpha", "alpha_weighted", "log_norm",
            "log_spectral_norm", "stable_rank", "entropy"]  # fmt: skip
    print_table([{k: summary.get(k) for k in keys}], "summary (means over successful fits)", keys)
    if summary.get("warning_counts"):
        print("warnings:", ", ".join(f"{k}: {v}" for k, v in summary["warning_counts"].items()))


def run(args: argparse.Namespace) -> int:
    from spectune.spectral import analyze, summarize

    source = resolve_source(args.source)
    base = resolve_source(args.base) if args.base else None
    peft: bool | str = "with_base" if args.with_base else bool(args.peft)
    details = analyze(
        source, peft=peft, base=base, layers=args.layers, delta=args.delta,
        min_evals=args.min_evals, max_evals=args.max_evals, fix_fingers=args.fix_fingers,
        mp_fit=args.mp_fit, randomize=args.randomize, lora_scaling=not args.no_lora_scaling,
        precision=args.precision, seed=args.seed, progress=not args.no_progress,
    )  # fmt: skip
    summary = summarize(details)
    show_summary(details, summary, str(args.source))
    if args.out:
        written = write_results(details, summary, Path(args.out), plots=args.plots,
                                source=source, peft=peft, base=base)  # fmt: skip
        print(f"wrote {len(written)} files to {args.out}")
    elif args.plots:
        print("--plots needs --out DIR; no figures written")
    return 0
