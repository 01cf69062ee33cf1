"""glibc's mmap threshold, fixed with its own environment variable ``MALLOC_MMAP_THRESHOLD_``
(what the README and ``spectune.tuning.scale.memory`` advise for a peak RSS that stays at the
estimate): freed blocks go back to the system instead of staying resident as holes in the
heap (the memory a training step's peak RSS grows by after the first step by default)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_FRAGMENT = """
import torch
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
x = torch.ones(2**21)  # 8 MiB: mmapped; by default freeing it raises glibc's threshold to 8 MiB
del x
base = rss()
blocks = [torch.ones(2**19) for _ in range(16)]  # 16 x 2 MiB
del blocks[::2]  # every other one freed: holes between live blocks
print((rss() - base) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_fixed_mmap_threshold_returns_freed_blocks():
    def grown(**env: str) -> float:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", _FRAGMENT], capture_output=True, text=True,
                             check=True, env={**base, **env})  # fmt: skip
        return float(out.stdout.strip().splitlines()[-1])

    # 8 live blocks of 2 MiB = 16 MiB; by default the 8 freed ones stay resident as holes
    assert grown() == pytest.approx(32, abs=2)
    assert grown(MALLOC_MMAP_THRESHOLD_="131072") == pytest.approx(16, abs=2)
