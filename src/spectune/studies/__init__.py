"""Studies: many runs, and what they say together.

- :mod:`.runner`: the skeleton every kind of many-run job shares: the folder opened and locked,
  the resume check, the runs' outcomes, the comparison files (results.csv/.md,
  comparison.json, figures, report.html) and the marker.
- :mod:`.backends`: where the runs go: this process, or Ray Tune trials.
- :mod:`.sweep`: :func:`~spectune.studies.sweep.sweep` over a grid of settings.
- :mod:`.demo`: :func:`~spectune.studies.demo.demo`, the methods at matched budgets on the
  embedded model.
- :mod:`.study`: :func:`~spectune.studies.study.study`, methods at their own learning rates over
  seeds; :mod:`.summary` says what its runs show together (intervals, paired differences,
  effects, correlations) and :mod:`.advice` recommends one.
- :mod:`.search`: :func:`~spectune.studies.search.search`, a multi-objective Optuna search over
  run settings and its Pareto set, resumable from its SQLite storage; its space, objectives
  and sampler are :mod:`.search_space`'s, its trials :mod:`.search_trials`'.
- :mod:`.judge_existing`: :func:`~spectune.studies.judge_existing.judge_model` (``spectune
  judge``), the recipe's judging and watch phases on what was trained elsewhere or before (a
  peft adapter, a spectune run's adapter, a merged model), into a run-like folder that the
  tables, ``advise`` and the report read beside the tuned runs.
"""
