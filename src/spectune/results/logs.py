"""The logs a run folder holds, read back as numbers: ``train_log.csv`` (the training loss and
learning rate per logged step), ``validation_log.csv`` (validation during training) and
``spectra_log.csv`` (the spectra watched during training)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from spectune.results.metrics import SpectraPoint, ValidationPoint


def log_rows(out: Path) -> list[dict[str, float]]:
    """The rows of a run's train_log.csv as numbers (empty when there is no log yet)."""
    path = out / "train_log.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(fh)
        ]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in ("", None) else None
    except ValueError:
        return None


def validation_points(out: Path) -> list[ValidationPoint]:
    """The validation curve of a run folder (``validation_log.csv``; empty without one)."""
    return [
        ValidationPoint(
            step=int(float(r["step"])),
            loss=float(r["validation_loss"]),
            epoch=_float(r.get("epoch")),
            seconds=_float(r.get("seconds")),
        )
        for r in _csv_rows(out / "validation_log.csv")
    ]


def spectra_points(out: Path) -> list[SpectraPoint]:
    """Mean alpha and the fraction of fitted matrices with alpha < 2 per step of a run's
    ``spectra_log.csv`` (empty without one); a matrix counts as fitted when its status is
    ``success`` and its alpha finite (as in ``spectra/summary.json``)."""
    steps: dict[int, list[dict[str, str]]] = {}
    for r in _csv_rows(out / "spectra_log.csv"):
        steps.setdefault(int(float(r["step"])), []).append(r)
    points = []
    for step, rows in sorted(steps.items()):
        alphas = [
            a
            for r in rows
            if r.get("status") == "success"
            and (a := _float(r.get("alpha"))) is not None
            and math.isfinite(a)
        ]
        points.append(
            SpectraPoint(
                step=step,
                mean_alpha=sum(alphas) / len(alphas) if alphas else None,
                frac_alpha_below_2=sum(a < 2 for a in alphas) / len(alphas) if alphas else None,
                n_layers=len(rows),
                n_fitted=len(alphas),
                seconds=_float(rows[0].get("seconds")),
            )
        )
    return points


__all__ = ["log_rows", "spectra_points", "validation_points"]
