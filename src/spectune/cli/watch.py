"""``spectune watch`` (old name ``analyze``): spectral diagnostics of a model, checkpoint, GGUF
or PEFT adapter."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spectune.report.files import write_results  # noqa: F401 - re-exported for callers

HELP = "WeightWatcher-style spectral diagnostics (alpha, norms, ranks) of any weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="model folder, .safetensors/.bin/.pt/.gguf file (a GGUF is read directly), "
        "PEFT adapter folder, a Hugging Face hub id (org/name[@revision], through its cache), "
        "or 'default' for the embedded model",
    )
    parser.add_argument("--peft", action="store_true", help="analyze LoRA pairs as Delta W = s*B*A")
    parser.add_argument(
        "--with-base", action="store_true", help="with --peft and --base: analyze W + Delta W"
    )
    parser.add_argument(
        "--base",
        help="the base model (as the source: a folder, file or hub id): adds base_* columns "
        "(or the delta's base)",
    )
    parser.add_argument("--delta", action="store_true", help="analyze W - W_base (needs --base)")
    parser.add_argument("--layers", help="regex: only rows whose longname matches")
    parser.add_argument(
        "--out",
        help="results folder for details.csv/.json, summary.json, plots "
        "(new, empty, or an earlier watch --out, whose files are replaced)",
    )
    parser.add_argument("--plots", action="store_true", help="also write PNG figures to --out")
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write report.html to --out, with the figures and flow.csv "
        "(alpha along depth per layer type)",
    )
    parser.add_argument("--min-evals", type=int, default=8)
    parser.add_argument("--max-evals", type=int, default=15000)
    parser.add_argument(
        "--fix-fingers",
        choices=["clip_xmax", "xmin_peak"],
        default=None,
        help="WeightWatcher's finger fixes: clip the top eigenvalues, or search "
        "xmin near the ESD's peak",
    )
    parser.add_argument(
        "--fit",
        choices=["PL", "TPL", "E_TPL"],
        default="PL",
        help="power law (default), truncated power law (adds Lambda), or TPL "
        "with xmin near the peak; WeightWatcher's definitions",
    )
    parser.add_argument(
        "--compare-fits",
        action="store_true",
        help="add the log-likelihood ratio test power law vs truncated power "
        "law per matrix (pl_tpl_R, pl_tpl_p, better_fit)",
    )
    parser.add_argument(
        "--detx", action="store_true", help="add WeightWatcher's detX / ERG columns"
    )
    parser.add_argument(
        "--intruders",
        action="store_true",
        help="with --base and --peft or --delta: count intruder dimensions "
        "(top-10 tuned singular vectors with |cos| < 0.5 to every base one)",
    )
    parser.add_argument("--mp-fit", action="store_true", help="add Marchenko-Pastur columns")
    parser.add_argument("--randomize", action="store_true", help="add randomized-ESD columns")
    parser.add_argument(
        "--no-lora-scaling",
        action="store_true",
        help="analyze the unscaled B*A (WeightWatcher's convention)",
    )
    parser.add_argument("--precision", choices=["float64", "float32"], default="float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def resolve_source(source: str, what: str = "source") -> Any:
    """'default' means the embedded model's folder, a hub id (``org/name[@revision]``, not a
    local path) its snapshot in the Hugging Face cache; anything else must exist (a GGUF file
    is read as it is, not dequantized)."""
    from spectune.errors import SpectuneError

    if source == "default":
        from spectune.models.loading import default_model_dir

        return default_model_dir()
    if not Path(source).expanduser().exists():
        from spectune.models.sources import hub_snapshot, parse_hub_id

        if parse_hub_id(source) is not None and not source.startswith((".", "~")):
            return hub_snapshot(source, what).path
        raise SpectuneError(f"{source}: no such file or folder, and not a hub id (org/name)")
    return source


def show_summary(details: Any, summary: dict, title: str) -> None:
    import pandas as pd

    from spectune.cli._common import print_table

    worst = details[details["status"] == "success"].sort_values("alpha")
    # the 5 lowest and 5 highest; with 10 rows or fewer, each row once
    shown = worst if len(worst) <= 10 else pd.concat([worst.head(5), worst.tail(5)])
    rows = shown.to_dict(orient="records")
    print_table(
        rows,
        f"{title}: lowest and highest alpha",
        [
            "longname",
            "N",
            "M",
            "alpha",
            "alpha_weighted",
            "log_norm",
            "stable_rank",
            "D",
            "warning",
        ],
    )
    keys = [
        "n_layers",
        "n_analyzed",
        "alpha",
        "alpha_weighted",
        "log_norm",
        "log_spectral_norm",
        "stable_rank",
        "entropy",
    ]
    print_table([{k: summary.get(k) for k in keys}], "summary (means over successful fits)", keys)
    if summary.get("warning_counts"):
        print("warnings:", ", ".join(f"{k}: {v}" for k, v in summary["warning_counts"].items()))


def run(args: argparse.Namespace) -> int:
    from spectune._io import check_writable_dir
    from spectune.errors import SpectuneError
    from spectune.results.runfolder import RunFolder
    from spectune.watch import analyze, summarize

    if args.report and not args.out:
        raise SpectuneError("--report needs --out DIR (the folder report.html is written to)")
    if args.min_evals < 1:
        raise SpectuneError(f"--min-evals must be >= 1, got {args.min_evals}")
    if args.max_evals < max(args.min_evals, 1):
        raise SpectuneError(
            f"--max-evals must be >= --min-evals ({args.min_evals}) and >= 1, got "
            f"{args.max_evals}: with it every matrix would be skipped or too small"
        )
    # checked before the analysis, which can take minutes, not after it: a folder of the
    # user's (or of another spectune command) is refused, an earlier watch's is replaced. Its
    # marker's kind stays "analyze", the verb's old name, so folders written before still count
    out = check_writable_dir(args.out, "--out") if args.out else None
    folder = RunFolder(out, "analyze") if out is not None else None
    if folder is not None:
        folder.check(overwrite=True)
    source = resolve_source(args.source)
    base = resolve_source(args.base, "--base") if args.base else None
    peft: bool | str = "with_base" if args.with_base else bool(args.peft)
    details = analyze(
        source,
        peft=peft,
        base=base,
        layers=args.layers,
        delta=args.delta,
        min_evals=args.min_evals,
        max_evals=args.max_evals,
        fix_fingers=args.fix_fingers,
        mp_fit=args.mp_fit,
        randomize=args.randomize,
        lora_scaling=not args.no_lora_scaling,
        precision=args.precision,
        seed=args.seed,
        progress=not args.no_progress,
        fit=args.fit,
        detX=args.detx,
        compare_fits=args.compare_fits,
        intruders=args.intruders,
    )
    summary = summarize(details)
    show_summary(details, summary, str(args.source))
    if summary.get("n_overparameterized"):
        print(f"overparameterized (alpha > 6): {summary['n_overparameterized']} layers")
    if "num_intruders" in summary:
        print(
            f"intruder dimensions: {summary['num_intruders']} in "
            f"{summary['layers_with_intruders']} layers"
        )
    if summary.get("overfit_adapter_layers"):
        print(
            "adapter alpha < 2 on an alpha > 6 base layer: "
            + ", ".join(summary["overfit_adapter_layers"])
        )
    if out is not None and folder is not None:
        summary["source"] = str(args.source)
        with folder.replacing():
            written = write_results(
                details,
                summary,
                out,
                plots=args.plots or args.report,
                source=source,
                peft=peft,
                base=base,
                flow=args.report,
                own=folder.own,
            )
            if args.report:
                from spectune.report.pages.blocks import REPORT
                from spectune.report.pages.spectra import write_spectra_report

                folder.own(REPORT)
                written.append(write_spectra_report(out))
        print(f"wrote {len(written)} files to {args.out}")
    elif args.plots:
        print("--plots needs --out DIR; no figures written")
    return 0
