"""One self-contained HTML page of a results folder, one module per page.

- :mod:`~spectune.report.pages.run`: a run folder (``metrics.json``);
- :mod:`~spectune.report.pages.comparison`: a sweep, study, search or demo folder
  (``results.csv``, ``runs/<name>/``);
- :mod:`~spectune.report.pages.spectra`: a spectra folder (``spectune watch --out``,
  ``spectune compare --out``);
- :mod:`~spectune.report.pages.watch`: the watch sections of a spectra folder (fits,
  overparameterized layers, intruder dimensions, scale collapse, correlation flow) that every
  page embeds;
- :mod:`~spectune.report.pages.blocks`: what they share (escaping, number formats, the reader
  of a folder's files, tables, figures, the page shell and its CSS, the safe writer).

A page is a view of the files the folder already holds (``metrics.json`` is the canonical
artifact, the page only formats it): nothing is recomputed. It stands alone: CSS inline, every
image a ``data:image/png;base64,`` URI, no script, no external URL. Every string read from the
folder is HTML-escaped. A missing optional file or value never stops the rendering: a value
shows as ``-``, a section without data is left out, and files that could not be read are
listed at the top of the page. Only files that resolve inside the folder are read: a symbolic
link pointing outside it is left out (and listed), so a report never embeds a file from
elsewhere.

Each page module has ``render_<page>(folder)`` (the text) and ``write_<page>_report(folder)``
(``report.html`` written into the folder atomically, and nothing else); they never replace a
``report.html`` that spectune did not write (a page without spectune's generator tag, or a
link).
"""
