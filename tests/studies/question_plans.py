"""Hand-built study plans and evidence for the preset questions' tests (no run trains)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spectune.studies.questions import Evidence, StudyPlan, Variant
from spectune.tuning.config import TuneConfig


def run_config(method: str = "lora", model: str = "default", **changes: Any) -> TuneConfig:
    """A resolved run config; ``changes``: ``r``, ``lora_alpha``, ``target_modules``, and
    ``train`` settings (``max_steps=8``...)."""
    lora = {"r": changes.pop("r", 8), "lora_alpha": changes.pop("lora_alpha", 16)}
    data: dict[str, Any] = {"model": model, "method": method}
    if "target_modules" in changes:
        data["target_modules"] = changes.pop("target_modules")
    if method != "full":
        data["lora"] = lora
    data["train"] = {"max_steps": 25, "per_device_train_batch_size": 8, **changes}
    return TuneConfig.from_dict(data)


def make_plan(
    configs: dict[str, TuneConfig],
    *,
    lr_grid: dict[str, list[float]] | None = None,
    lr_seeds: list[int] | None = None,
    criterion: str = "loss",
    grid: dict[str, list[Any]] | None = None,
    trainable: dict[str, int | None] | None = None,
    seeds: list[int] | None = None,
) -> StudyPlan:
    return StudyPlan(
        variants=[Variant(n, c.method) for n, c in configs.items()],
        configs=configs,
        trainable=trainable or {n: None for n in configs},
        seeds=seeds or [0],
        lr_grid=lr_grid or {n: [1e-3] for n in configs},
        lr_seeds=lr_seeds or [0],
        criterion=criterion,
        grid=grid or {},
        match_budget=False,
    )


def write_predictions(folder: Path, run: str, after: list[bool]) -> None:
    """``runs/<run>/predictions.jsonl``: every question wrong before, ``after`` after."""
    path = folder / "runs" / run
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"correct_before": False, "correct_after": a}) for a in after]
    (path / "predictions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_evidence(
    folder: Path,
    plan: StudyPlan,
    rows: list[dict[str, Any]] | None = None,
    searches: dict[str, dict[str, Any]] | None = None,
    summaries: list[dict[str, Any]] | None = None,
) -> Evidence:
    rows = rows or []
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r["candidate"], []).append(r["name"])
    return Evidence(folder, plan, rows, groups, summaries or [], searches or {})


def run_row(variant: str, seed: int, **values: Any) -> dict[str, Any]:
    """A finished real run's row (Evidence.rows)."""
    return {"name": f"{variant}-s{seed}", "candidate": variant, "variant": variant,
            "seed": seed, "status": "complete", **values}  # fmt: skip
