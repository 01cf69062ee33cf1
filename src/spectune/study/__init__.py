"""Study: many runs, and what they say together.

- :mod:`.sweep`: :func:`~spectune.study.sweep.sweep` over a grid of settings, and the
  comparison folder.
- :mod:`.demo`: :func:`~spectune.study.demo.demo`, the methods at matched budgets on the
  embedded model.
- :mod:`.study`: :func:`~spectune.study.study.study`, methods at their own learning rates over
  seeds, with intervals and a recommendation (:mod:`.advice`).
- :mod:`.search`: :func:`~spectune.study.search.search`, a multi-objective Optuna search over
  run settings and its Pareto set, resumable from its SQLite storage.
- :mod:`.backends`: where the runs go: this process, or Ray Tune trials.
"""
