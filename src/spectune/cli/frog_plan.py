"""``spectune frog-plan``: FROG's per-matrix budget table and layer-importance charts."""

from __future__ import annotations

import argparse

HELP = "plan FROG sparse fine-tuning on a model: per-matrix budget table and importance charts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="'default' (embedded SmolLM2-135M-Instruct) or a local HF folder"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.01,
        help="G, fraction of the target weights that train, in (0, 1] (default: %(default)s)",
    )
    parser.add_argument(
        "--global",
        dest="global_selection",
        action="store_true",
        help="select the top weights over all matrices together (paper section 10) instead "
        "of per matrix",
    )
    parser.add_argument("--out", required=True, help="folder for the table and charts (new, "
                        "empty, or an earlier frog-plan --out, whose files are replaced)")  # fmt: skip
    parser.add_argument(
        "--target-modules",
        default="all-linear",
        help="'all-linear' (default), comma-separated module names/suffixes, or a regex "
        "prefixed with 're:'",
    )
    parser.add_argument("--exclude-modules", default=None, help="comma-separated names/suffixes")
    parser.add_argument("--svd", choices=("exact", "randomized"), default="exact")
    parser.add_argument("--svd-rank", type=int, default=None, help="rank of the (randomized) SVD")
    parser.add_argument(
        "--importance",
        choices=("frobenius", "alpha"),
        default="frobenius",
        help="matrix importance; 'alpha' is experimental (uses the spectral engine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _targets(text: str) -> str | list[str]:
    if text.startswith("re:"):
        return text[3:]
    if text == "all-linear":
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def _load_model(model: str, progress: bool):
    from spectune.errors import SpectuneError
    from spectune.models.loading import resolve_model_dir

    folder = resolve_model_dir(model)
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        try:
            lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        except ValueError:  # not a causal LM: the bare model still has its linear layers
            lm = AutoModel.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise SpectuneError(f"cannot load the model in {folder}: {exc}") from None
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return folder, lm.eval()


def run(args: argparse.Namespace) -> int:
    from spectune._io import atomic_path, check_writable_dir, write_json, write_text
    from spectune.results.runfolder import RunFolder
    from spectune.tune.methods.frog import FrogConfig, plan_frog
    from spectune.tune.methods.frog.plots import global_selection_figure, layer_importance_figure

    # before the model is read: a folder of the user's is refused, an earlier plan's replaced
    out = check_writable_dir(args.out, "--out")
    owner = RunFolder(out, "frog_plan")
    owner.check(overwrite=True)
    config = FrogConfig(
        budget=args.budget,
        selection="global" if args.global_selection else "per_matrix",
        target_modules=_targets(args.target_modules),
        exclude_modules=_targets(args.exclude_modules) if args.exclude_modules else None,
        svd=args.svd,
        svd_rank=args.svd_rank,
        importance=args.importance,
        seed=args.seed,
    )
    folder, model = _load_model(args.model, progress=not args.no_progress)
    plan = plan_frog(model, config, progress=not args.no_progress)
    table = plan.table
    report = plan.to_dict()
    report["summary"]["model"] = str(folder)
    figures = {"layer_importance.png": layer_importance_figure(table)}
    if config.selection == "global":
        figures["global_selection.png"] = global_selection_figure(table)
    with owner.replacing():
        owner.own("frog_plan.csv", "frog_plan.json", *figures)
        write_text(out / "frog_plan.csv", table.to_csv(index=False))
        write_json(out / "frog_plan.json", report)
        for name, fig in figures.items():
            with atomic_path(out / name) as tmp:
                fig.savefig(tmp, format="png", dpi=120)

    s = report["summary"]
    print(
        f"FROG plan for {folder.name}: {s['num_matrices']} matrices, "
        f"{s['total_trainable']:,} of {s['total_weights']:,} weights trainable "
        f"({s['trainable_percent']:.4g}%), selection={config.selection}"
    )
    cols = ["name", "shape", "importance", "trainable", "percent"]
    print(table[cols].head(8).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if len(table) > 8:
        print(f"... {len(table) - 8} more rows in {out / 'frog_plan.csv'}")
    for name in ["frog_plan.csv", "frog_plan.json", *figures]:
        print(f"wrote {out / name}")
    return 0
