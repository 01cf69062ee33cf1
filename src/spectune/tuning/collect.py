"""What a run reports: its :class:`~spectune.results.metrics.RunMetrics` from what the phases
measured and the logs its folder holds (``train_log.csv``, ``validation_log.csv``,
``spectra_log.csv``), and the figures and spectra files beside ``metrics.json``."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from spectune.report.files import save_figures, spectral_figures, write_comparison_results
from spectune.report.plots import runs as T
from spectune.report.plots import spectra as P
from spectune.results.logs import log_rows, spectra_points, validation_points
from spectune.results.metrics import (
    Cost,
    Forgetting,
    Learning,
    RunInfo,
    RunMetrics,
    SpectraSummary,
    Training,
    Validation,
)

if TYPE_CHECKING:
    from spectune.tuning.run import Run


def versions() -> dict[str, str]:
    """The versions of Python and of the packages a run depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("spectune", "torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _validation(run: Run) -> Validation | None:
    if run.validation is None:
        return None
    args = run.config.training_arguments()
    curve = validation_points(run.out)
    best = min(curve, key=lambda p: (p.loss, p.step)) if curve else None
    es = run.early_stopping
    return Validation(
        n_examples=len(run.validation.dataset),
        strategy=args["eval_strategy"],
        every_steps=args.get("eval_steps") if args["eval_strategy"] == "steps" else None,
        curve=curve,
        best_step=None if best is None else best.step,
        best_loss=None if best is None else best.loss,
        adapter_step=run.best_step if run.restored_best else run.global_step,
        restored_best=run.restored_best,
        early_stopping_patience=None if es is None else es.early_stopping_patience,
        early_stopping_threshold=None if es is None else es.early_stopping_threshold,
        stopped_early=run.stopped_early,
        seconds=sum(p.seconds or 0.0 for p in curve),
    )


def collect_metrics(run: Run) -> RunMetrics:
    """The run's :class:`RunMetrics` from what the phases measured."""
    log = log_rows(run.out)
    built, after = run.built, run.after
    targs = run.config.training_arguments()
    per_device = int(targs["per_device_train_batch_size"])
    global_batch = per_device * int(targs["gradient_accumulation_steps"]) * run.world_size
    return RunMetrics(
        run=RunInfo(
            name=run.out.name,
            method=run.config.method,
            objective=run.config.objective,
            model=run.config.model,
            model_dir=str(run.model_dir),
            seed=run.config.seed,
            device=run.device,
            threads=torch.get_num_threads(),
            world_size=run.world_size,
            resumed=bool(run.last_checkpoint),
            started=run.folder.state.get("started"),
            versions=versions(),
        ),
        config=run.config.to_dict(),
        settings={col: run.config.get(key) for col, key in run.method.settings.items()},
        data={**run.data.info, "tokenize": run.train_data.info},
        before=run.before,
        after=after,
        learning=Learning.compare(
            run.before, after, correct_before=run.correct_before, correct_after=run.correct_after
        ),
        forgetting=Forgetting.compare(run.before, after),
        cost=Cost(
            train_seconds=run.train_offset + run.train_seconds,
            train_seconds_this_session=run.train_seconds,
            steps=run.global_step,
            tokens=run.tokens,
            tokens_per_second=run.tokens / run.train_seconds if run.train_seconds > 0 else None,
            peak_rss_bytes=run.peak_rss[0],
            peak_rss_exact=run.peak_rss[1],
            trainable=built.trainable,
            total=built.total,
            trainable_percent=built.trainable_percent,
            adapter_bytes=run.adapter_bytes,
            ms_per_token=None if after.latency is None else after.latency.ms_per_token,
            ms_per_token_before=None
            if run.before is None or run.before.latency is None
            else run.before.latency.ms_per_token,
            positions=run.positions or None,
            train_flops=run.flops or None,
            gemm_flops_per_second=run.gemm_rate,
            phase_seconds={k: round(v, 3) for k, v in run.phase_seconds.items()},
            compile_seconds=run.compile_seconds,
        ),
        training=Training(
            first_loss=log[0].get("loss") if log else None,
            final_loss=log[-1].get("loss") if log else None,
            global_step=run.global_step,
            epochs=log[-1].get("epoch") if log else None,
            per_device_batch=per_device,
            global_batch=global_batch,
            batching=run.batching,
        ),
        spectra=None if run.summary is None else SpectraSummary.from_summary(run.summary),
        method_extras=run.method.extras(built),
        objective_extras={},
        notes=list(built.notes),
        validation=_validation(run),
        spectra_curve=spectra_points(run.out),
    )


def write_run_plots(
    plots: Path,
    metrics: RunMetrics,
    log: list[dict],
    details: Any,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """The run's figures as PNG files (each written atomically); ``extra`` are the method's.
    Without a training log (``spectune judge``) there is no loss curve."""
    figures = {"loss_curve.png": T.loss_curve({metrics.run.name: log})} if log else {}
    figures["learning_forgetting.png"] = T.learning_forgetting([metrics])
    if metrics.validation is not None and metrics.validation.curve:
        figures["validation_curve.png"] = T.validation_curve(log, metrics.validation)
    if metrics.spectra_curve:
        figures["spectra_vs_validation.png"] = T.spectra_vs_validation(
            metrics.spectra_curve, metrics.validation
        )
    if details is not None and (details["status"] == "success").any():
        figures["alpha_hist.png"] = P.alpha_histogram(details, title="Adapter alphas")
        if "base_alpha" in details:
            figures["alpha_vs_base.png"] = P.base_vs_adapter_alpha(details)
    figures.update(extra or {})
    return save_figures(figures, plots)


def write_spectra_files(spectra: Path, details: Any, comparison: Any) -> list[Path]:
    """The watch files of a run's ``spectra/``: the base against tuned comparison
    (compare.csv, compare.json, flow.csv, scale_collapse.png, correlation_flow.png) and the
    intruder figure."""
    written = save_figures(spectral_figures(details), spectra)
    if comparison is not None:
        written += write_comparison_results(comparison, spectra, plots=True)
    return written


__all__ = [
    "collect_metrics",
    "versions",
    "write_run_plots",
    "write_spectra_files",
]
