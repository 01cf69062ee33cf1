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


def preset_plan(path: Path) -> StudyPlan:
    """The plan of a preset study config as the study builds it: each variant's overrides on
    the base config, LoRA budgets matched to the base config's count through the lora
    method's ``match_budget`` hook when ``match_budget``, counts from the embedded model's
    shapes."""
    import copy
    import tempfile

    import yaml

    from spectune.models.loading import resolve_model_dir
    from spectune.tuning.config import apply_overrides
    from spectune.tuning.methods import BuildContext, get_method, meta_model

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    spec = raw.pop("study")
    model_dir = resolve_model_dir(raw["model"])
    meta, tmp = meta_model(model_dir), Path(tempfile.gettempdir())

    def count(config: TuneConfig) -> int | None:
        ctx = BuildContext(config, model_dir, tmp, progress=False)
        return get_method(config.method).trainable_count(ctx, meta)

    reference = count(TuneConfig.from_dict({**raw, "method": "lora"}))
    configs, trainable = {}, {}
    for name, v in spec["variants"].items():
        base = copy.deepcopy(raw) | {"method": v["method"]}
        if v["method"] == "full":
            base.pop("lora")
        data = apply_overrides(
            base, [f"{k}={json.dumps(x)}" for k, x in v.items() if k != "method"]
        )
        config = TuneConfig.from_dict(data)
        if spec.get("match_budget") and v["method"] != "full":
            ctx = BuildContext(config, model_dir, tmp, progress=False)
            match = get_method(config.method).match_budget(ctx, reference)
            config = TuneConfig.from_dict(apply_overrides(data, match))
        configs[name], trainable[name] = config, count(config)
    grid = spec["lr_grid"]
    search = spec.get("lr_search", {})
    return make_plan(
        configs,
        lr_grid=grid if isinstance(grid, dict) else {n: grid for n in configs},
        lr_seeds=search.get("seeds", [search.get("seed", 0)]),
        criterion=search.get("criterion", "accuracy"),
        trainable=trainable,
    )
