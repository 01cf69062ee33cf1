"""Results: what a run leaves behind, typed, and the rules of the folders it is written to.

- :mod:`.metrics`: :class:`~spectune.results.metrics.RunMetrics`, the one reader and writer of
  ``metrics.json``, and the comparison table's rows.
- :mod:`.runfolder`: the results-folder rules: refuse a folder spectune did not write,
  resume, overwrite, the marker file, locks held by a running job.
- :mod:`.table`: the one writer of the runs' tables (results.csv, results.md, pareto.csv): a
  column per key of the rows.
- :mod:`.stats`: bootstrap and t intervals, paired differences, the statistics of studies.
"""
