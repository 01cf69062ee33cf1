"""Progress bars, in one style: tqdm's, the one the transformers Trainer draws for training.

Every long loop of spectune shows its bar through :func:`track` or :func:`progress_bar`, so a
run's analysis, judging and training bars look alike and none of them is a rich bar drawn
between tqdm bars. Bars go to stderr and are removed when done (``leave=False``): what stays on
the terminal is the results.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(
    total: int | None, description: str, enabled: bool = True, unit: str = "it"
) -> Any:
    """A bar to advance by hand (``bar.update(n)``); also a context manager.

    Args:
        total: the number of steps, or None when unknown.
        description: the label before the bar.
        enabled: False gives a silent bar with the same methods.
        unit: what one step is (``"matrix"``, ``"batch"``...).

    Returns:
        A ``tqdm`` bar on stderr, removed from the terminal when it closes.
    """
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
    )


def track(
    items: Iterable[T], total: int | None, description: str, enabled: bool = True, unit: str = "it"
) -> Iterator[T]:
    """Iterate ``items`` with a bar showing count, elapsed time and ETA (to stderr)."""
    if not enabled:
        yield from items
        return
    with progress_bar(total, description, unit=unit) as bar:
        for item in items:
            yield item
            bar.update(1)
