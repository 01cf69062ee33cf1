"""Errors that spectune raises for bad input.

Every error a user can cause by what they pass in is a :class:`SpectuneError` whose message
names the file, tensor or parameter at fault and says what to do. The CLI prints these as a
single line and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SpectuneError(Exception):
    """Bad input or a missing resource, reported to the user as one line (CLI exit code 2)."""


class MissingDependencyError(SpectuneError):
    """A package spectune needs at run time is not installed; the message has the install command."""
