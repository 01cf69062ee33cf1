"""Results: what a run leaves behind, typed, and the rules of the folders it is written to.

- :mod:`.metrics`: :class:`~spectune.results.metrics.RunMetrics`, the one reader and writer of
  ``metrics.json`` (judgings before and after, learning, forgetting, cost, spectra), and the
  comparison table's rows.
- :mod:`.runfolder`: the results-folder rules every run, sweep, study and search follows:
  the ``run.json`` marker and its status, refusing a folder spectune did not write, resume,
  ``--overwrite`` (only what the run wrote), the lock held by a running job.
- :mod:`.logs`: the logs a run folder holds (train_log.csv, validation_log.csv, spectra_log.csv)
  read back as numbers.
- :mod:`.table`: the one writer of the runs' tables (results.csv, results.md, pareto.csv): a
  column per key of the rows.
- :mod:`.stats`: bootstrap intervals over questions and seeds, paired differences,
  correlations, effects and Pareto fronts (numpy; no torch).

None of these modules imports torch: reading a run's results needs only its files.
"""
