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


#: glibc's ``mallopt`` parameter number of M_MMAP_THRESHOLD (``malloc.h``)
_M_MMAP_THRESHOLD = -3
#: glibc's initial mmap threshold (128 KiB), kept fixed by :func:`keep_mmap_threshold`
MMAP_THRESHOLD = 128 * 1024


def keep_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Have glibc give every allocation of ``nbytes`` or more its own pages (mmap), returned
    to the system when freed, for the rest of the process.

    By default glibc raises this threshold up to 32 MiB the first time such a block is freed;
    after that the activations of a training step (each under 32 MiB) come from the heap,
    which keeps freed memory and fragments: on SmolLM2-135M (LoRA, batch 8 x 128) the peak
    RSS grew by about 1 GiB after the first step, while the live tensors did not. A fixed
    threshold keeps the peak at the first step's, which is what
    :func:`spectune.finetune.plan.plan_memory` estimates.

    Returns:
        Whether the setting was applied (False where the C library has no ``mallopt``:
        macOS, musl; nothing changes there).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, int(nbytes)) == 1
