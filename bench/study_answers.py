"""The README's study answers, checked on study folders (Studies and advice > What the study
answers).

Reads ``DIR/study`` (``configs/study.yaml``: six methods, 3 seeds, per-method learning rates)
and ``DIR/study-lora`` (``configs/study-lora.yaml``: LoRA over r x lora_alpha x lora_dropout x
steps); a folder that holds no finished study is run first with ``spectune study`` (about 60
and 30 minutes on a 2-core CPU; an interrupted one continues). Then prints each answer's
figures and checks the conclusions the README states (not the exact figures, which move with
the machine's float rounding and the seeds):

- every interval of a method's accuracy gain is at most +-10 points wide (3 x 200 questions);
- QLoRA learns less than LoRA (resolved); LoRA - full fine-tuning is within noise;
- LoRA's learning rate is chosen inside its grid (not at an edge);
- per-layer Spearman of base alpha and the update's alpha: every adapter run's interval
  contains 0 and is below 0.3; full fine-tuning's is above 0 in every seed;
- more than 95% of the layers of every LoRA-family and full run have alpha < 2, and each of
  those runs gained more than 30 points with a held-out loss below 1 (3.86 before);
- in the LoRA grid, lora_alpha explains more of accuracy's and of forgetting's variance than r
  and lora_dropout do; the update's log norm correlates positively with forgetting (resolved);
- the advice with no limits cannot separate the leading methods.

Run: .venv/bin/python bench/study_answers.py results/answers
Exit status 1 when a conclusion does not hold (the figures are printed either way).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"study": ROOT / "configs/study.yaml", "study-lora": ROOT / "configs/study-lora.yaml"}
FAMILY = ("lora", "dora", "qlora", "full")


def finished(folder: Path) -> Any:
    from spectune.studies.study import StudyResult

    if not (folder / "study.json").is_file():
        print(f"running spectune study {CONFIGS[folder.name].name} into {folder}", flush=True)
        cmd = [sys.executable, "-m", "spectune.cli.main", "study", str(CONFIGS[folder.name]),
               "--out", str(folder), "--no-progress"]  # fmt: skip
        if folder.exists():
            cmd.append("--resume")
        subprocess.run(cmd, check=True)
    return StudyResult.load(folder)


def pts(d: dict[str, Any]) -> str:
    return f"{100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder of the two studies (run into it if absent)")
    args = ap.parse_args()
    main_study = finished(args.out / "study")
    lora_study = finished(args.out / "study-lora")
    failures: list[str] = []

    def check(ok: bool, claim: str) -> None:
        print(f"  [{'ok' if ok else 'FAILS'}] {claim}")
        if not ok:
            failures.append(claim)

    print("\nmethods (gain in points, perplexity increase in %):")
    summ = {s["method"]: s for s in main_study.summaries}
    for m, s in summ.items():
        print(f"  {m:6s} lr {s['learning_rate']:<7g} gain {pts(s['accuracy_gain'])}  "
              f"forgetting {pts(s['forgetting'])}  train {s['train_seconds']:.0f} s  "
              f"{s['ms_per_token']:.0f} ms/token  {s['peak_rss_gib']:.1f} GiB")  # fmt: skip
    half = [s["accuracy_gain"]["half_width"] for s in summ.values()]
    check(max(half) <= 0.10, f"gain intervals at most +-10 points (+-{100 * min(half):.1f} to "
                             f"+-{100 * max(half):.1f})")  # fmt: skip
    diffs = {(d["a"], d["b"]): d for d in main_study.differences}
    paired = [(d["high"] - d["low"]) / 2 for d in diffs.values()]
    check(max(paired) <= 0.10, f"paired differences at most +-10 points (+-{100 * min(paired):.1f}"
                               f" to +-{100 * max(paired):.1f})")  # fmt: skip
    ql, lf = diffs[("lora", "qlora")], diffs[("lora", "full")]
    print(f"  lora - qlora {pts(ql)}; lora - full {pts(lf)}")
    check(ql["low"] > 0, "QLoRA learns less than LoRA (resolved)")
    check(lf["low"] < 0 < lf["high"], "LoRA - full fine-tuning within noise")
    search = {s["method"]: s for s in main_study.lr_search}
    for m, s in search.items():
        print(f"  lr search {m}: " + ", ".join(
            f"{r:g}: {'-' if v is None else f'{100 * v[0]:.1f}%'}"
            for r, v in zip(s["rates"], s["scores"], strict=True)) + f" -> {s['chosen']:g}")  # fmt: skip
    lora_rates = search["lora"]["rates"]
    check(lora_rates[0] < search["lora"]["chosen"] < lora_rates[-1],
          "LoRA's best rate lies inside its grid")  # fmt: skip

    print("\nbase layer alpha vs the update's alpha (Spearman over layers, per run):")
    for m in summ:
        cs = [c for c in main_study.layer_correlations if c["method"] == m]
        print(f"  {m:6s} " + "; ".join(c["text"] for c in cs))
        if m == "full":
            check(all(c["low"] > 0 for c in cs), "full fine-tuning's update follows its base")
        else:
            check(all(c["low"] < 0 < c["high"] and c["rho"] < 0.3 for c in cs),
                  f"{m}: no resolved correlation")  # fmt: skip

    print("\nalpha < 2:")
    for r in main_study.runs:
        if r["method"] in FAMILY and r.get("status") == "complete":
            print(f"  {r['name']:9s} layers below 2 {100 * float(r['frac_alpha_below_2']):.1f}%  "
                  f"mean alpha {float(r['adapter_alpha']):.2f}  "
                  f"gain {100 * float(r['accuracy_gain']):+.1f}")  # fmt: skip
            check(float(r["frac_alpha_below_2"]) > 0.95 and float(r["accuracy_gain"]) > 0.30
                  and float(r["heldout_loss_after"]) < 1.0,
                  f"{r['name']}: alpha < 2 almost everywhere, and it learned (held-out loss "
                  f"{float(r['heldout_loss_after']):.2f})")  # fmt: skip
    corr = {(c["x"], c["y"]): c for c in main_study.correlations}
    print("  across runs: frac below 2 vs gain " + corr[("frac_alpha_below_2", "accuracy_gain")]
          ["text"] + "; vs forgetting " + corr[("frac_alpha_below_2", "forgetting")]["text"])  # fmt: skip

    print("\nLoRA grid (eta^2 per metric):")
    eff = {
        m: {e["parameter"]: e["eta_squared"] for e in es} for m, es in lora_study.effects.items()
    }
    for m, e in eff.items():
        print(f"  {m:15s} " + ", ".join(f"{p} {v:.2f}" for p, v in e.items() if v is not None))
    for metric in ("accuracy_after", "forgetting"):
        e = eff[metric]
        check(e["lora.lora_alpha"] > max(e["lora.r"], e["lora.lora_dropout"]),
              f"lora_alpha moves {metric} more than r and dropout")  # fmt: skip
    lcorr = {(c["x"], c["y"]): c for c in lora_study.correlations}
    for x in ("adapter_alpha", "log_norm", "frac_alpha_below_2"):
        print(f"  {x} vs forgetting: {lcorr[(x, 'forgetting')]['text']}")
    check(lcorr[("log_norm", "forgetting")]["low"] > 0, "the update's norm goes with forgetting")
    by = {(r["lora.r"], r["lora.lora_alpha"], r["lora.lora_dropout"], r["train.max_steps"]):
          100 * float(r["accuracy_gain"]) for r in lora_study.runs if r.get("status") == "complete"}  # fmt: skip
    for name, pairs in (("lora_alpha 32 - 8", [((r, 8, d, s), (r, 32, d, s)) for r in (4, 16)
                                               for d in (0.0, 0.1) for s in (12, 25)]),
                        ("r 16 - 4", [((4, a, d, s), (16, a, d, s)) for a in (8, 32)
                                      for d in (0.0, 0.1) for s in (12, 25)]),
                        ("dropout 0.1 - 0", [((r, a, 0.0, s), (r, a, 0.1, s)) for r in (4, 16)
                                             for a in (8, 32) for s in (12, 25)])):  # fmt: skip
        d = [by[b] - by[a] for a, b in pairs if a in by and b in by]
        if d:
            print(f"  {name}: accuracy gain differences {min(d):+.1f} to {max(d):+.1f} points "
                  f"(mean {sum(d) / len(d):+.1f}, {len(d)} pairs)")  # fmt: skip

    print("\nadvice with no limits:")
    adv = main_study.advice or {}
    print("  " + str(adv.get("choice")) + "; cannot separate: " + ", ".join(adv.get("tied", [])))
    check(bool(adv.get("tied")), "the data cannot separate the leading methods")
    print(
        f"\n{len(failures)} conclusion(s) do not hold" if failures else "\nevery conclusion holds"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
