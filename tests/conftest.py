"""Suite-wide fixtures, and the fine-tuning tests' tiny models: a random Llama saved as a model
folder with the embedded model's tokenizer (so prompts use the real chat template), and run
configs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

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
    from spectune.errors import SpectuneError
    from spectune.models import loading as models

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
_FIRST = ("tests/studies/test_demo_claims.py", "tests/tuning/objectives/test_distill.py",
          "tests/studies/test_study_ray.py")  # fmt: skip


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


def tiny_llama(vocab: int, *, hidden: int = 64, mlp: int | None = None, seed: int = 0):
    """A random 2-block Llama (hidden ``hidden``, MLP ``mlp`` or 2x, 4 heads / 2 KV heads, tied
    embeddings), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp or 2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(folder: Path, vocab: int, **kwargs: Any) -> Path:
    """:func:`tiny_llama` saved as a model folder."""
    tiny_llama(vocab, **kwargs).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from spectune.models.loading import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A tiny Llama with SmolLM2's tokenizer (hidden 64: every width packs for bitsandbytes)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_llama(folder, len(smol_tokenizer))
    smol_tokenizer.save_pretrained(folder)
    return folder


def tiny_run_config(model_dir: Path, method: str = "lora", **changes: Any) -> dict[str, Any]:
    """Raw config data of a seconds-long run on the tiny model."""
    data: dict[str, Any] = {
        "model": str(model_dir),
        "method": method,
        "seed": 0,
        # each method gets only the sections it reads (a foreign section is an error)
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "frog": {"budget": 0.05},
        "shira": {"r": 4},
        "data": {"train": "tasks", "n_train": 48, "n_eval": 8, "max_length": 96},
        "eval": {
            "max_new_tokens": 4,
            "batch_size": 8,
            "ppl_chars": 400,
            "ppl_window": 64,
            "ppl_stride": 32,
            "latency_tokens": 3,
            "latency_prompts": 1,
        },  # fmt: skip
        "train": {
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-2,
            "logging_steps": 1,
            "save_steps": 2,
            "warmup_steps": 0,
        },  # fmt: skip
    }
    from spectune.tuning.methods import get_method

    try:
        reads = set(get_method(method).sections)
    except Exception:  # an unknown method: let the config say so
        reads = set()
    for name in ("lora", "frog", "shira"):
        if name not in reads:
            data.pop(name)
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            data.setdefault(section, {})[leaf] = value
        else:
            data[key] = value
    return data


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Judging caches and Spectrum's SNR tables go to a per-session folder; the embedded
    model's cache stays shared."""
    from spectune.models.loading import cache_root

    root = cache_root()  # resolve the real cache first (the default model lives there)
    judge_dir = tmp_path_factory.getbasetemp() / "judge-cache"
    monkeypatch.setattr("spectune.judging.cache.cache_dir", lambda: judge_dir)
    # Spectrum's SNR tables of the tests' temporary model folders stay out of the user's cache
    # (the module object, not a dotted path: spectune.tuning.methods is also a function's name)
    import importlib

    spectrum = importlib.import_module("spectune.tuning.methods.spectrum")
    monkeypatch.setattr(spectrum, "snr_cache_dir", lambda: judge_dir.parent / "spectrum")
    yield root
