"""The runner that sweeps, the demo, studies and searches share: one skeleton, written once.

Each of them does the same around its own runs:

1. **opens its folder** (:func:`opened_folder`): :class:`~spectune.results.runfolder.RunFolder`
   (refuses a folder spectune did not write, resumes or overwrites one it did) with the run
   folders' locks (:class:`~spectune.results.runfolder.HeldFolders`) held until it ends; on
   resume it first checks that its settings did not change (a refused resume leaves the marker
   as it was), and whatever ends it afterwards, its ``run.json`` is never left "running";
2. **saves its settings** (:func:`save_settings`) for the next resume to compare
   (:func:`changed_settings`);
3. **runs its jobs** through a backend (:func:`spectune.studies.backends.make_executor`) and
   turns their results into :class:`RunOutcome` objects (:func:`outcomes_of`);
4. **writes the comparison** (:func:`write_comparison`): results.csv and results.md (the one
   table writer, :mod:`spectune.results.table`), comparison.json and the figures
   (:mod:`spectune.report.plots.study`); then report.html
   (:func:`~spectune.report.pages.comparison.write_comparison_report`);
5. **closes its marker** (:func:`finish`): "complete", or "failed" naming the failed runs (so
   ``--resume`` runs them again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectune._io import write_json, write_text
from spectune.report.files import save_figures
from spectune.report.plots.study import comparison_figures
from spectune.results.logs import log_rows
from spectune.results.metrics import RunMetrics
from spectune.results.runfolder import HeldFolders, RunFolder, fail_on_exit
from spectune.results.table import csv_text, markdown_table, table_columns
from spectune.studies.backends import Job, JobResult
from spectune.tuning.config import changed_fields, yaml_dump, yaml_load

#: the columns of results.md (results.csv has them all)
#: (accuracy_after_low / _high: its 95% bootstrap interval over the held-out questions)
MD_COLUMNS = ["name", "method", "trainable_percent", "train_loss", "accuracy_before",
              "accuracy_after", "accuracy_after_low", "accuracy_after_high", "perplexity_before",
              "perplexity_after", "train_seconds", "ms_per_token", "peak_rss_mib", "adapter_mib",
              "adapter_alpha", "base_alpha", "status"]  # fmt: skip


@dataclass
class RunOutcome:
    """One run of a sweep, the demo, a study or a search: its name, setting, and its metrics
    or failure.

    Attributes:
        name: the run's folder name under ``runs/``.
        method: the run's method.
        setting: the values that made this run (a grid's, a study's, a search's).
        metrics: the run's metrics (None when it failed).
        error: why it failed (None when it completed).
    """

    name: str
    method: str
    setting: dict[str, Any]
    metrics: RunMetrics | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        return "complete" if self.error is None else f"failed: {self.error}"

    def row(self) -> dict[str, Any]:
        """The run's row of results.csv (:meth:`RunMetrics.row`, the setting's keys, status);
        its name is the folder's under ``runs/``."""
        base = (
            self.metrics.row()
            if self.metrics is not None
            else {"name": self.name, "method": self.method}
        )
        return {**base, "name": self.name, **self.setting, "status": self.status}


@contextlib.contextmanager
def opened_folder(
    out: Path,
    kind: str,
    *,
    overwrite: bool,
    resume: bool,
    held: HeldFolders,
    before: Callable[[RunFolder], None] | None = None,
) -> Iterator[RunFolder]:
    """The folder ``out`` of a ``kind`` (sweep, demo, study, search), opened and locked.

    Args:
        out: the folder.
        kind: what it holds (recorded in its marker; a resume must match it).
        overwrite / resume: as for :func:`spectune.tuning.recipe.tune`.
        held: the run folders' locks, released when the block ends, however it ends.
        before: called with the opened folder before the block: the resume checks (what it
            raises leaves the marker as it was) and what must be recorded before the runs.

    Yields:
        The opened folder; any exception of the block (an interruption included) marks it
        failed with the reason before it propagates.
    """
    folder = RunFolder(out, kind).open(overwrite=overwrite, resume=resume)
    with folder, held:
        if before is not None:
            before(folder)
        with fail_on_exit(folder):
            yield folder


def changed_settings(
    saved: Path, settings: dict[str, Any], ignore: Sequence[str] = ()
) -> list[str]:
    """The fields in which ``settings`` differ from the ones saved in ``saved`` (none when
    nothing was saved), less ``ignore``."""
    if not saved.is_file():
        return []
    old = yaml_load(saved.read_text(encoding="utf-8"), str(saved))
    return [k for k in changed_fields(old, settings) if k not in ignore]


def save_settings(saved: Path, settings: dict[str, Any], header: str) -> None:
    """``settings`` as YAML in ``saved``, after the comment line ``header``."""
    write_text(saved, f"# {header}\n" + yaml_dump(settings))


def outcomes_of(
    jobs: Sequence[Job], settings: Sequence[dict[str, Any]], results: Sequence[JobResult]
) -> tuple[list[RunOutcome], dict[str, list[dict]]]:
    """The outcomes of ``jobs`` (with their settings) from an executor's results, and the
    training logs of those that finished."""
    outcomes: list[RunOutcome] = []
    logs: dict[str, list[dict]] = {}
    for job, setting, (metrics, error) in zip(jobs, settings, results, strict=True):
        outcomes.append(RunOutcome(job.name, job.method, setting, metrics=metrics, error=error))
        if metrics is not None:
            logs[job.name] = log_rows(job.out)
    return outcomes, logs


def write_comparison(
    out: Path, outcomes: list[RunOutcome], logs: dict[str, list[dict]], meta: dict[str, Any]
) -> None:
    """results.csv, results.md, comparison.json and the comparison plots (atomically)."""
    rows = [o.row() for o in outcomes]
    columns = table_columns(rows)
    write_text(out / "results.csv", csv_text(rows))
    write_text(out / "results.md", markdown_table(rows, [c for c in MD_COLUMNS if c in columns]))
    write_json(out / "comparison.json", meta)
    save_figures(comparison_figures(rows, logs), out / "plots")


def finish(folder: RunFolder, failed: Sequence[str], count: int, noun: str = "runs") -> None:
    """Mark ``folder`` complete, or failed naming the ``failed`` of its ``count`` runs (not
    "complete": ``--resume`` runs them again)."""
    if failed:
        folder.fail(f"{len(failed)} of {count} {noun} failed: {', '.join(failed)}")
    else:
        folder.finish()


__all__ = [
    "MD_COLUMNS",
    "RunOutcome",
    "changed_settings",
    "finish",
    "opened_folder",
    "outcomes_of",
    "save_settings",
    "write_comparison",
]
