"""Suite-wide fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules import shared helpers as ``tests.<package>.conftest``: make the repository root
# importable under plain ``pytest`` too, not only under ``python -m pytest`` (which adds the
# working directory), and from any working directory.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def require(module: str, why: str = "an anchor the suite compares against") -> object:
    """Import ``module`` for a test. Under ``make test`` (``SPECTUNE_REQUIRE_ANCHORS=1``, what
    CI runs) a missing anchor fails the test; elsewhere (plain pytest) the test is skipped with
    the reason."""
    import importlib
    import os

    if os.environ.get("SPECTUNE_REQUIRE_ANCHORS") == "1":
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            pytest.fail(f"{module} ({why}) is not installed: {exc}; make setup-dev installs it")
    return pytest.importorskip(module, reason=f"{module} ({why}) is not installed")


def pytest_report_header(config) -> list[str]:
    """Say up front whether the embedded model is there and its cache built: tests that load
    it build the cache on first use (tens of seconds), or fail naming the install command."""
    from spectune import models
    from spectune.errors import SpectuneError

    try:
        folder = models.default_model_cache_dir()
    except SpectuneError as exc:
        return [f"spectune embedded model: MISSING, tests that load it will fail: {exc}"]
    if models.cache_problem(folder) is None:
        return [f"spectune embedded model: cache built at {folder}"]
    return [
        f"spectune embedded model: cache not built yet ({folder}); the first test that loads "
        "the model builds it (about 45 s), `spectune model` builds it beforehand"
    ]


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


# --------------------------------------------------------------------------- parallel runs
# ``make test`` runs ``pytest -n 2 --dist loadscope``: xdist hands each test module to one
# worker, so module-scoped fixtures (the demo's four runs, the distillation run...) are built
# once, as in a serial run, and the one module that starts Ray (test_study_ray.py) never meets
# a second instance. (``--dist loadgroup`` would not group here: pytest-xdist 3.8 marks a
# group by rewriting ``item._nodeid``, which pytest 9.2's node ids no longer read.)
# ``--no-loadscope-reorder`` keeps the order below: the longest module first (the demo's four
# runs on the embedded model take 9-12 minutes on one thread), then the other modules with
# real-weight tests, then the rest, so that no worker is left with a long module at the end.
#: modules that go first, in this order (the longest in the last measured run)
_FIRST = ("tests/finetune/test_demo_claims.py", "tests/finetune/test_distill.py",
          "tests/finetune/test_study_ray.py")  # fmt: skip


def pytest_collection_modifyitems(config, items) -> None:
    """Order the modules (stable within each): :data:`_FIRST`, then modules with a slow test,
    then the rest. Every xdist worker sorts alike, so their collections agree."""
    slow = {i.nodeid.split("::", 1)[0] for i in items if i.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        module = item.nodeid.split("::", 1)[0]
        if module in _FIRST:
            return (0, _FIRST.index(module))
        return (1, 0) if module in slow else (2, 0)

    items.sort(key=rank)


def pytest_configure(config) -> None:
    """On an xdist worker, split the machine's cores between the workers: torch's threads
    (and ``OMP_NUM_THREADS`` for the processes a test starts) = cores // workers, so two
    workers running real-weight tests do not run four OpenMP threads on two cores. An
    ``OMP_NUM_THREADS`` set by hand is kept (``make test-numerics`` runs on one thread)."""
    import os

    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or "OMP_NUM_THREADS" in os.environ:  # one process, or threads set by hand
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // int(workers))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
