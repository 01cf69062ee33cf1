"""Figures by subject: functions that take results and return matplotlib Figures.

- :mod:`~spectune.report.plots.spectra`: the spectra of weights (alpha histograms and depth,
  ESDs, scale collapse, correlation flow, intruder dimensions);
- :mod:`~spectune.report.plots.runs`: fine-tuning runs (training and validation curves,
  learning against forgetting, a sweep's bars and trade-off, a search's objectives).

Nothing here writes files: :mod:`spectune.report.files` saves the figures (atomically).
"""
