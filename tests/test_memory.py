"""glibc's mmap threshold kept fixed: freed blocks go back to the system instead of leaving holes
in the heap (the memory a training step's peak RSS grew by after the first step)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_FRAGMENT = """
import sys, torch
from spectune._memory import keep_mmap_threshold
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
if sys.argv[1] == "fixed":
    assert keep_mmap_threshold()
x = torch.ones(2**21)  # 8 MiB: mmapped; by default freeing it raises glibc's threshold to 8 MiB
del x
base = rss()
blocks = [torch.ones(2**19) for _ in range(16)]  # 16 x 2 MiB
del blocks[::2]  # every other one freed: holes between live blocks
print((rss() - base) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_fixed_mmap_threshold_returns_freed_blocks():
    def grown(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _FRAGMENT, mode], capture_output=True,
                             text=True, check=True)  # fmt: skip
        return float(out.stdout.strip().splitlines()[-1])

    # 8 live blocks of 2 MiB = 16 MiB; by default the 8 freed ones stay resident as holes
    assert grown("default") == pytest.approx(32, abs=2)
    assert grown("fixed") == pytest.approx(16, abs=2)
