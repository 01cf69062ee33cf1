"""Command-line interface: one module per verb, each importing heavy packages lazily.

:mod:`.main` registers the verbs, lists them under the README's headings (tune, watch, judge
and study, show) and keeps renamed verbs' old names as aliases with a note for one release.
"""
