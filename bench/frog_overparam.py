"""FROG's budget on the embedded model with ``overparam='none' | 'away' | 'towards'``.

Without ``--train``: reads the power-law alpha of every linear layer of SmolLM2-135M-Instruct
(spectune.analyze), marks the overparameterized ones (alpha > 6) and prints, for plain FROG
and the two options at the same budget G, how many trainable weights land on them (Frobenius
importance, per-matrix largest-remainder allocation, as plan_frog allocates).

With ``--train``: trains plain FROG, ``overparam: away`` and ``overparam: towards`` at the
same budget with the demo's settings (``spectune.studies.demo``: the bundled task set,
all-linear targets, FROG's budget matched to LoRA r=8's trainable count, 25 steps), one run
each per seed, into one sweep folder (``results.csv``, ``report.html``, ``runs/<name>/``; an
interrupted measurement continues with ``--resume``). Then prints, per mode, the held-out
accuracy with its 95% bootstrap interval over the questions (over seeds and questions with
several seeds; ``spectune.results.stats``), the paired difference from plain FROG on the
same questions, the perplexity change on general text (forgetting) and the share of the
trained weights on alpha > 6 matrices. ``key=value`` arguments change every run (as for
``spectune tune``).

Run: .venv/bin/python bench/frog_overparam.py [--budget 0.023] [--factor 0.5]
     .venv/bin/python bench/frog_overparam.py --train --out results/bench-frog-overparam
         [--seeds 0,1,2] [--factor 0.5] [--resume] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("none", "away", "towards")


def allocation(budget: float, factor: float) -> None:
    """Where the budget lands under each mode (no training)."""
    from spectune.models.loading import default_model_dir
    from spectune.tuning.methods.frog.budget import allocate, overparam_importance, total_trainable
    from spectune.tuning.methods.frog.scoring import frobenius_importance
    from spectune.watch import analyze

    d = analyze(str(default_model_dir()), layers=r"\.layers\.", progress=False)
    d = d[d["layer_type"] == "linear"]
    sizes = (d["N"] * d["M"]).to_numpy(dtype=np.int64)
    norms = np.sqrt(d["norm"].to_numpy(dtype=np.float64))  # WW's norm is ||W||_F^2
    alphas = d["alpha"].to_numpy(dtype=np.float64)
    over = np.isfinite(alphas) & (alphas > 6.0)
    k = total_trainable(budget, int(sizes.sum()))
    print(f"{len(d)} linear layers, {over.sum()} with alpha > 6 "
          f"({100 * sizes[over].sum() / sizes.sum():.1f}% of the weights); G={budget}: "
          f"{k} trainable weights")  # fmt: skip
    for mode in MODES:
        r = overparam_importance(frobenius_importance(norms), alphas, mode=mode, factor=factor)
        counts = allocate(k, r, sizes)
        print(f"  overparam={mode:8s}: {counts[over].sum():8d} weights on alpha > 6 layers "
              f"({100 * counts[over].sum() / k:5.1f}% of the budget)")  # fmt: skip
    kinds = d.loc[over, "name"].value_counts().to_dict()
    print("alpha > 6 layers by kind:", kinds)


def training_runs(seeds: list[int], factor: float, overrides: list[str]) -> list[tuple]:
    """(name, config, setting) of every run: the demo's FROG config, one per mode and seed."""
    from spectune.studies.demo import demo_runs
    from spectune.tuning.config import TuneConfig, apply_overrides

    ((_, frog, _),) = demo_runs(("frog",), overrides)
    runs = []
    for seed in seeds:
        for mode in MODES:
            items = [f"seed={seed}", f"frog.overparam={mode}", f"frog.overparam_factor={factor}"]
            config = TuneConfig.from_dict(apply_overrides(frog.to_dict(), items),
                                          source=f"frog overparam={mode} seed={seed}")  # fmt: skip
            name = f"frog-{mode}" + (f"-s{seed}" if len(seeds) > 1 else "")
            runs.append((name, config, {"overparam": mode, "seed": seed}))
    return runs


def correct_after(run_dir: Path) -> list[float]:
    """Per held-out question: 1.0 when the tuned model's answer is right (predictions.jsonl)."""
    lines = (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [1.0 if json.loads(line).get("correct_after") is True else 0.0
            for line in lines if line.strip()]  # fmt: skip


def overparam_share(run_dir: Path) -> float | None:
    """Share of the trained weights on matrices whose base alpha > 6: per-target counts from
    the FROG adapter, base alphas from the run's spectra (None without them)."""
    import pandas as pd

    cfg = json.loads((run_dir / "adapter" / "frog_config.json").read_text(encoding="utf-8"))
    spectra = run_dir / "spectra" / "compare.csv"
    if not spectra.is_file():
        return None
    alpha = pd.read_csv(spectra).set_index("longname")["alpha_a"]
    counts = {name: t["trainable"] for name, t in cfg["targets"].items()}
    on = sum(n for name, n in counts.items() if name in alpha and alpha[name] > 6.0)
    return on / max(1, sum(counts.values()))


def measure(out: Path, runs: list[tuple], seeds: list[int]) -> None:
    """Print the table of the finished runs."""
    from spectune.results.metrics import RunMetrics
    from spectune.results.stats import bootstrap_runs, paired_difference

    by_mode: dict[str, list[tuple[str, Any]]] = {m: [] for m in MODES}
    for name, _, setting in runs:
        by_mode[setting["overparam"]].append((name, setting["seed"]))
    scores = {m: [correct_after(out / "runs" / n) for n, _ in by_mode[m]] for m in MODES}
    metrics = {m: [RunMetrics.load(out / "runs" / n) for n, _ in by_mode[m]] for m in MODES}
    print(f"\nFROG overparam at the same budget ({metrics['none'][0].cost.trainable:,} trainable "
          f"weights), {len(seeds)} seed(s), {len(scores['none'][0])} held-out questions each:")  # fmt: skip
    head = (f"{'overparam':10s} {'accuracy [95% CI]':>22s} {'vs plain FROG [95% CI]':>30s} "
            f"{'perplexity before -> after (change)':>38s} {'on alpha>6':>11s}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for mode in MODES:
        acc = bootstrap_runs(scores[mode])
        diff = "" if mode == "none" else paired_difference(
            scores[mode], scores["none"], names=(mode, "none"))  # fmt: skip
        dtext = "(reference)" if mode == "none" else (
            f"{diff.interval.text(100)} pts {'*' if diff.resolved else ' '}")  # fmt: skip
        ppl0 = np.mean([m.forgetting.perplexity_before for m in metrics[mode]])
        ppl1 = np.mean([m.forgetting.perplexity_after for m in metrics[mode]])
        shares = [overparam_share(out / "runs" / n) for n, _ in by_mode[mode]]
        share = "-" if None in shares else f"{100 * np.mean(shares):.1f}%"
        print(f"{mode:10s} {acc.text(100) + '%':>22s} {dtext:>30s} "
              f"{f'{ppl0:.3f} -> {ppl1:.3f} ({ppl1 - ppl0:+.3f})':>38s} {share:>11s}")  # fmt: skip
    print("accuracy: held-out exact match; * = the paired interval excludes 0; 'on alpha>6': "
          "share of the trained weights on matrices whose base alpha > 6")  # fmt: skip
    print(f"report: {out / 'report.html'}")


def train(args: argparse.Namespace) -> None:
    from spectune.studies.sweep import run_comparison

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = training_runs(seeds, args.factor, args.overrides)
    budget = runs[0][1].get("frog.budget")
    print(f"FROG budget G = {budget:.5g} (LoRA r=8's trainable count on all-linear targets); "
          f"runs: {', '.join(name for name, _, _ in runs)}")  # fmt: skip
    out = Path(args.out)
    outcomes = run_comparison(
        runs, out, kind="sweep", title="FROG overparam: none / away / towards at one budget",
        meta={"grid": {"frog.overparam": list(MODES), "seed": seeds},
              "base_config": runs[0][1].to_dict(),
              "notes": [f"frog.overparam_factor={args.factor}; the demo's settings"]},
        overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
    )  # fmt: skip
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise SystemExit("failed runs: " + "; ".join(f"{o.name}: {o.error}" for o in failed))
    measure(out, runs, seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.023, help="without --train")
    parser.add_argument("--factor", type=float, default=0.5)
    parser.add_argument("--train", action="store_true", help="train the three modes (see above)")
    parser.add_argument("--out", default="results/bench-frog-overparam")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (--train)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value changes of every run (--train)")
    args = parser.parse_args()
    if args.train:
        train(args)
    else:
        allocation(args.budget, args.factor)


if __name__ == "__main__":
    main()
