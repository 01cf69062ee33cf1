"""Peak resident memory of one phase of this process (e.g. the training loop alone).

On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's high-water mark
(``VmHWM`` in ``/proc/self/status``), so the peak of a phase is exact even when an earlier
phase (loading, evaluating another model) used more. Elsewhere the phase peak falls back to
the process's lifetime peak (``ru_maxrss``), which is an upper bound; :class:`PeakRSS`
records which of the two it measured.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _lifetime_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


class PeakRSS:
    """Context manager: ``bytes`` is the peak RSS while inside, ``exact`` whether it was reset.

    Example::

        with PeakRSS() as peak:
            trainer.train()
        print(peak.bytes / 2**30, "GiB")
    """

    def __init__(self) -> None:
        self.bytes = 0
        self.exact = False

    def __enter__(self) -> PeakRSS:
        try:
            fd = os.open(_CLEAR, os.O_WRONLY)
            try:
                os.write(fd, b"5")
                self.exact = _hwm_bytes() is not None
            finally:
                os.close(fd)
        except OSError:
            self.exact = False
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _hwm_bytes() if self.exact else None
        self.bytes = hwm if hwm is not None else _lifetime_peak_bytes()
