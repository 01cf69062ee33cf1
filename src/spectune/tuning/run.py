"""The state of one run as the recipe's phases fill it in (:class:`Run`), and what
:func:`spectune.tuning.recipe.tune` returns (:class:`TuneResult`)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.models.tokenizer import end_of_turn
from spectune.results.metrics import Judging, RunMetrics
from spectune.results.runfolder import RunFolder
from spectune.tuning.config import TuneConfig
from spectune.tuning.methods.base import BuildContext

if TYPE_CHECKING:
    from spectune.tuning.methods.base import Built, Method
    from spectune.tuning.objectives.base import Objective, RunData, TrainData
    from spectune.tuning.trainer import EarlyStopping


@dataclass
class TuneResult:
    """Where a run went and what it measured (``metrics.json``, typed)."""

    out: Path
    metrics: RunMetrics


@dataclass
class Run:
    """The state of one run as the phases fill it in.

    Attributes:
        config: the run's own copy of the config (``output_dir`` set to ``out``).
        out: the results folder.
        folder: its :class:`RunFolder`.
        method / objective: the registered plug-ins the config names.
        model_dir: the resolved base model folder.
        data: the objective's data (training records, held-out questions).
        progress: progress output.
        resume: continue from the last checkpoint.
        main: this process writes the results folder (rank 0; the only one in one process).
        world_size: the number of processes training together (torchrun / accelerate launch).
        notes: things the user should know about the run (beside the method's).
        pins: what the run started from (:mod:`spectune.tuning.pins`); ``pins_saved``:
            read from the folder (a resume) rather than made now.
        tokenizer, train_data, before, built, after...: what each phase produced
            (``validation``: the validation split's features; ``early_stopping``,
            ``best_step``, ``restored_best``, ``stopped_early``: what training did with it;
            ``correct_after`` / ``correct_before``: right or wrong per held-out question;
            ``tracking``: the trackers of ``train.report_to``, :mod:`spectune.report.tracking`).
    """

    config: TuneConfig
    out: Path
    folder: RunFolder
    method: Method
    objective: Objective
    model_dir: Path
    data: RunData
    progress: bool = True
    resume: bool = False
    main: bool = True
    world_size: int = 1
    notes: list[str] = field(default_factory=list)
    tokenizer: Any = None
    pins: dict[str, Any] | None = None
    pins_saved: bool = False
    objective_state: Any = None
    train_data: TrainData | None = None
    validation: TrainData | None = None
    early_stopping: EarlyStopping | None = None
    best_step: int | None = None
    restored_best: bool = False
    stopped_early: bool = False
    before: Judging | None = None
    built: Built | None = None
    last_checkpoint: str | None = None
    device: str = "cpu"
    train_seconds: float = 0.0
    train_offset: float = 0.0
    tokens: int = 0
    #: positions of the padded batches trained on (real tokens and padding), this session
    positions: int = 0
    #: training FLOPs counted (:class:`spectune.models.flops.FlopCounter`), all processes,
    #: this session
    flops: float = 0.0
    #: what the training batches were (:mod:`spectune.tuning.batching`)
    batching: str | None = None
    #: this machine's GEMM rate on the run's shapes (FLOP/s, all processes together)
    gemm_rate: float | None = None
    #: ``train.torch_compile``: the compile time within the training time (None: off)
    compile_seconds: float | None = None
    #: wall seconds of each phase this session (:func:`spectune.tuning.recipe.tune`'s names)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    global_step: int = 0
    peak_rss: tuple[int, bool] = (0, False)
    adapter_bytes: int = 0
    after: Judging | None = None
    after_predictions: list[str] = field(default_factory=list)
    before_predictions: list[str] | None = None
    correct_after: list[bool] = field(default_factory=list)
    correct_before: list[bool] | None = None
    details: Any = None
    summary: dict[str, Any] | None = None
    comparison: Any = None
    metrics: RunMetrics | None = None
    tracking: Any = None

    _scratch: Path | None = None

    @property
    def context(self) -> BuildContext:
        eot = None if self.tokenizer is None else end_of_turn(self.tokenizer)
        added = () if eot is None else eot.added  # data.end_of_turn=token: rows to train
        if not self.main:  # the run folder is rank 0's: the others keep files to themselves
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="spectune-rank-"))
            return BuildContext(
                self.config, self.model_dir, self._scratch, self.progress, added, self.train_data
            )
        workdir = self.out / "checkpoints"
        if not self.folder.complete:  # a complete run's checkpoints are gone for good
            workdir.mkdir(parents=True, exist_ok=True)
        return BuildContext(
            self.config, self.model_dir, workdir, self.progress, added, self.train_data
        )

    def cleanup(self) -> None:
        """Remove what this process kept outside the run folder."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


__all__ = ["Run", "TuneResult"]
