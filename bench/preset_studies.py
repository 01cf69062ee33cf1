"""The README's preset-study findings, checked on study folders (Studies and advice > Published
findings, reproduced).

For each preset under ``configs/studies/`` (or the ones named), reads ``DIR/<name>/study.json``;
a folder that holds no finished study is run first with ``spectune study`` (``--resume`` when
the folder exists, so an interrupted one continues). Then prints each finding of the study's
question (the published figure, ours with its interval, the verdict), the study's wall time
against its budget (30 minutes; ``peers`` 60) and checks:

- every verdict the README states (:data:`STATED`) is the verdict the study reached, and each
  figure it states lies in its band (:data:`FIGURES`); a finding the README states nothing
  about is printed, not checked;
- the study's wall time is within its budget (a machine slower than the 2-core CPU the README's
  figures come from may miss it: the figure is printed either way).

Run: .venv/bin/python bench/preset_studies.py results/studies [lr-ratio update-rank ...]
Exit status 1 when a stated verdict or a budget does not hold.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "studies"
#: wall-time budget per preset, seconds (the issue's: 30 minutes, peers 60)
BUDGET = {"peers": 3600.0}
DEFAULT_BUDGET = 1800.0

#: preset -> finding claim -> the verdict the README states (README "Published findings,
#: reproduced"); keep the two in step
STATED: dict[str, dict[str, str]] = {
    # 3 search seeds: r=8's and r=64's intervals reach past 30x
    "lr-ratio": {
        "LoRA r=1 (lora-r1) best rate / full fine-tuning's": "agrees",
        "LoRA r=8 (lora-r8) best rate / full fine-tuning's": "undetermined",
        "LoRA r=64 (lora-r64) best rate / full fine-tuning's": "undetermined",
        "max / min of LoRA's best rates across ranks": "agrees",
    },
    "peers": {
        "OFT on the Pareto front": "undetermined",
        "SHiRA, GraLoRA, OFT, MLP-only LoRA among the best for their forgetting": "undetermined",
        "LoRA's best init": "undetermined",
    },
    "targets": {
        "attention-only - all-linear, accuracy gain": "agrees",
        "attention-only / all-linear, held-out loss": "agrees",
        "MLP-only - all-linear, accuracy gain": "undetermined",
        "MLP-only / all-linear, held-out loss": "undetermined",
    },
    # fixed rates, 2 optimizer steps at batch 128: the README says what "differs" means here
    "batch": {
        "LoRA - full accuracy gain, change per doubling of the batch": "differs",
        "log(LoRA / full held-out loss), change per doubling of the batch": "undetermined",
        "LoRA - full accuracy gain at the largest batch (128)": "differs",
    },
    "update-rank": {
        "full fine-tuning's rank90 / LoRA's r": "differs",
        "full's rank90 above LoRA's in every matrix type": "agrees",
        "LoRA on full fine-tuning's learning-forgetting curve": "undetermined",
    },
}
#: preset -> finding claim -> (its figure's key, the band the README states the estimate lies in)
FIGURES: dict[str, dict[str, tuple[str, float, float]]] = {
    # the geometric means over 3 search seeds (README: 15.0x, 17.9x, 19.6x; 1.32x); one study so
    # far: bands wide enough for other kernels and seeds, to be narrowed from repeated runs
    "lr-ratio": {
        "LoRA r=1 (lora-r1) best rate / full fine-tuning's": ("interval", 8.0, 30.0),
        "LoRA r=8 (lora-r8) best rate / full fine-tuning's": ("interval", 8.0, 30.0),
        "LoRA r=64 (lora-r64) best rate / full fine-tuning's": ("interval", 8.0, 30.0),
        "max / min of LoRA's best rates across ranks": ("interval", 1.0, 2.0),
    },
    # README: 8.4x [8.3, 8.6] over 3 seeds; one study so far, band set wider for other kernels
    "update-rank": {"full fine-tuning's rank90 / LoRA's r": ("ratio", 6.0, 10.0)},
    # README: -8.5 points and 1.43x (3 seeds); one study so far, bands for other kernels
    "targets": {
        "attention-only - all-linear, accuracy gain": ("interval", -0.16, -0.03),
        "attention-only / all-linear, held-out loss": ("interval", 1.15, 1.8),
    },
    # README: +14.3 points at batch 128 (2 steps at fixed rates); one study so far
    "batch": {"LoRA - full accuracy gain at the largest batch (128)": ("interval", 0.05, 0.25)},
}


def finished(name: str, folder: Path) -> Any:
    """The study in ``folder``, run from ``configs/studies/<name>.yaml`` first if unfinished."""
    from spectune.studies.study import StudyResult

    if not (folder / "study.json").is_file():
        config = PRESETS / f"{name}.yaml"
        print(f"running spectune study {config.relative_to(ROOT)} into {folder}", flush=True)
        cmd = [sys.executable, "-m", "spectune.cli.main", "study", str(config),
               "--out", str(folder), "--no-progress"]  # fmt: skip
        if folder.exists():
            cmd.append("--resume")
        subprocess.run(cmd, check=True)
    return StudyResult.load(folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder of the studies (each run into it if absent)")
    ap.add_argument("names", nargs="*", help="presets (default: every configs/studies/*.yaml)")
    args = ap.parse_args()
    names = args.names or sorted(p.stem for p in PRESETS.glob("*.yaml"))
    unknown = [n for n in names if not (PRESETS / f"{n}.yaml").is_file()]
    if unknown:
        ap.error(f"no preset {unknown[0]!r} in {PRESETS} (have: "
                 f"{', '.join(sorted(p.stem for p in PRESETS.glob('*.yaml')))})")  # fmt: skip
    failures: list[str] = []

    def check(ok: bool, claim: str) -> None:
        print(f"  [{'ok' if ok else 'FAILS'}] {claim}")
        if not ok:
            failures.append(claim)

    for name in names:
        result = finished(name, args.out / name)
        answer = result.answer or {}
        print(f"\n{name}: {answer.get('title', '(no answer)')}")
        stated = STATED.get(name, {})
        for f in answer.get("findings", []):
            print(f"  {f['claim']}: published {f['published']}; ours {f['ours']} -> {f['verdict']}")
            if f["claim"] in stated:
                check(f["verdict"] == stated[f["claim"]],
                      f"{f['claim']}: {stated[f['claim']]} (README)")  # fmt: skip
            band = FIGURES.get(name, {}).get(f["claim"])
            if band is not None:
                key, low, high = band
                est = (f["figures"].get(key) or {}).get("estimate")
                check(est is not None and low <= est <= high,
                      f"{f['claim']}: {est} inside [{low:g}, {high:g}] (README)")  # fmt: skip
        missing = sorted(set(stated) - {f["claim"] for f in answer.get("findings", [])})
        for claim in missing:
            check(False, f"{claim}: stated in the README, absent from the answer")
        for note in answer.get("notes", []):
            print(f"  note: {note}")
        seconds, budget = result.total_seconds, BUDGET.get(name, DEFAULT_BUDGET)
        if seconds is not None:
            check(seconds <= budget, f"wall time {seconds / 60:.1f} min within "
                                     f"{budget / 60:.0f} min")  # fmt: skip
    print(f"\n{len(failures)} check(s) do not hold" if failures else "\nevery check holds")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
