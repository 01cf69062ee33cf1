"""What a run's training costs, measured around the Trainer's ``train()`` (:func:`measured`):
wall time, peak memory, the training FLOPs counted from the products that ran and this
machine's GEMM rate on the same shapes (:mod:`spectune.models.flops`), the compile time
(:mod:`spectune.tuning.compiling`); and each phase's wall time (:func:`timed`). All of it lands
in metrics.json ``cost``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from spectune._memory import PeakRSS
from spectune.models.flops import FlopCounter, machine_rate
from spectune.models.loading import cache_root
from spectune.tuning.compiling import compiling
from spectune.tuning.scale import distributed

if TYPE_CHECKING:
    from spectune.tuning.run import Run


@contextmanager
def measured(run: Run, trainer: Any) -> Iterator[None]:
    """Training inside is measured into ``run`` (train_seconds, peak_rss, tokens, positions,
    flops, gemm_rate, compile_seconds: totals over the processes, the largest process's time
    and memory), with the decoder compiled while inside when ``train.torch_compile`` says so
    (its notes go to the run's notes). Nothing is recorded when training raises."""
    compile_on = bool(run.config.training_arguments().get("torch_compile", False))
    model = run.built.model
    with (
        PeakRSS() as peak,
        FlopCounter(model) as counted,
        compiling(model, compile_on, run.device) as compiled,
    ):
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
    compiled.finish(trainer.step_seconds)
    run.built.notes.extend(compiled.notes)
    run.compile_seconds = compiled.seconds
    run.flops = float(distributed.total(counted.flops.total))
    run.positions = int(distributed.total(trainer.positions))
    run.gemm_rate = gemm_rate(run, counted.flops, trainer)
    # over every process: the tokens all of them trained on, the largest process's memory
    run.peak_rss = (int(distributed.largest(peak.bytes)), peak.exact)
    run.tokens = int(distributed.total(trainer.tokens))
    run.train_seconds = distributed.largest(seconds)


def gemm_rate(run: Run, flops: Any, trainer: Any) -> float | None:
    """This machine's GEMM rate (FLOP/s) on the shapes the run trained, at its rows per batch
    in its training dtype (:func:`spectune.models.flops.machine_rate`, cached per machine);
    times the processes that trained. None when no batch was trained."""
    if not trainer.batches or not flops.shapes:
        return None
    trained = [p for p in run.built.model.parameters() if p.requires_grad]
    dtype = trained[0].dtype if trained and trained[0].is_floating_point() else torch.float32
    rows = trainer.positions / trainer.batches
    rate = machine_rate(flops.shapes, round(rows), dtype, cache_root() / "gemm_rates.json")
    return rate * max(1, run.world_size)


def timed(run: Run, phase: str, fn: Any) -> Any:
    """``fn()``, its wall seconds added to ``run.phase_seconds[phase]`` (metrics.json
    ``cost.phase_seconds``: where a run's time went; the report phase writes that file and is
    not in it)."""
    start = time.perf_counter()
    try:
        return fn()
    finally:
        run.phase_seconds[phase] = run.phase_seconds.get(phase, 0.0) + time.perf_counter() - start


__all__ = ["gemm_rate", "measured", "timed"]
