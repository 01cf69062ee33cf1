"""Value checks shared by the configs: each names the setting and says what is expected.

``label`` is how the setting is named in the message (``"FrogConfig.budget"``,
``"train.learning_rate"``...), so that an error points at the exact key to fix.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any

from spectune.errors import SpectuneError


def number(label: str, value: Any, *, nonnegative: bool = False) -> float:
    """A finite real number (bool is refused), as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpectuneError(f"{label} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise SpectuneError(
            f"{label} must be finite, got an integer of {len(str(value))} "
            "digits, beyond a float (1.8e308)"
        ) from None
    if not math.isfinite(value):
        raise SpectuneError(f"{label} must be finite, got {value!r}")
    if nonnegative and value < 0:
        raise SpectuneError(f"{label} must be >= 0, got {value!r}")
    return value


def integer(label: str, value: Any, *, minimum: int) -> int:
    """An integer (bool is refused) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpectuneError(f"{label} must be an integer, got {value!r}")
    if value < minimum:
        raise SpectuneError(f"{label} must be >= {minimum}, got {value!r}")
    return int(value)


def choice(label: str, value: Any, choices: Iterable[str]) -> str:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise SpectuneError(
            f"{label} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return str(value)


def unknown_keys(
    where: str, keys: Iterable[str], known: Iterable[str], kind: str, *, list_valid: bool = True
) -> None:
    """Refuse keys not in ``known``, suggesting the closest known key for each typo.

    The message reads ``"<where>: unknown <kind> key(s) ['budgit'] (did you mean 'budget'?);
    valid keys: [...]"``; with ``list_valid=False`` (a class with a hundred fields) the valid
    keys are not listed.
    """
    known = sorted(known)
    unknown = sorted(set(keys) - set(known))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            hints.append(f"{key!r} -> {close[0]!r}")
    hint = f" (did you mean: {', '.join(hints)}?)" if hints else ""
    if not list_valid:
        raise SpectuneError(f"{where}: unknown {kind} key(s) {unknown}{hint}")
    raise SpectuneError(f"{where}: unknown {kind} key(s) {unknown}{hint}; valid keys: {known}")
