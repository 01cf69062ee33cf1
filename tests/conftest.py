"""Suite-wide fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Tests marked slow (real weights) keep torch's thread count; all others run on one
    thread, restored afterwards. Their tensors are tiny: two OpenMP threads per process only
    spin, and on the shared 2-core machine they made the spectral suite about 5x slower in
    wall time (measured)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
