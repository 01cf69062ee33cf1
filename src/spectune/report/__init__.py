"""Show: the pages and figures of results, rendered from the files a run or a study wrote.

- :mod:`~spectune.report.pages`: one self-contained ``report.html`` per results folder, one
  module per page (``run``, ``comparison``, ``spectra``) on shared ``blocks``;
- :mod:`~spectune.report.plots`: functions that take results and return matplotlib Figures,
  one module per subject (``spectra``, ``runs``, ``study``);
- :mod:`~spectune.report.files`: the writers of result files and figures (atomically);
- :mod:`~spectune.report.tracking`: the user's experiment trackers (``train.report_to``:
  TensorBoard, MLflow, trackio, Weights & Biases) get what a run judged, its config and its
  report, in the run the Trainer logged the training curve to.

Computation never plots or writes files: it hands its results to these. ``report`` imports
only :mod:`spectune.results` and the packages below it.
"""
