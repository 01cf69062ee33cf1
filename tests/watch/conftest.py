"""Shared helpers for the spectral-engine tests: known-answer matrices, quiet WeightWatcher,
tiny models and adapters (built with the helpers of ``tests/weights/conftest.py``)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.weights.conftest import make_peft, make_tiny_llama, save_peft

__all__ = [
    "make_peft",
    "make_tiny_llama",
    "matrix_with_singular_values",
    "mp_matrix",
    "pareto_sample",
    "quiet",
    "save_peft",
]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence WeightWatcher: its prints ("SMALL N PL FIT"...), logging and warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@pytest.fixture(scope="session")
def ww() -> Any:
    """The weightwatcher package (0.7.7, the dev extra), imported quietly."""
    with quiet():
        from tests.conftest import require

        module = require("weightwatcher", "WeightWatcher 0.7.7, the parity anchor")
    assert module.__version__ == "0.7.7", module.__version__
    return module


def mp_matrix(N: int, M: int, seed: int) -> np.ndarray:
    """Gaussian N x M matrix with entry variance 1/N (its ESD follows Marchenko-Pastur)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, M)) / np.sqrt(N)


def random_orthonormal(n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """n x m (n >= m) float64 matrix with orthonormal columns (Haar: QR with sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, m, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def matrix_with_singular_values(svals: np.ndarray, N: int, seed: int) -> torch.Tensor:
    """An N x M float64 matrix U diag(svals) V^T with random orthogonal U, V (M = len(svals))."""
    g = torch.Generator().manual_seed(seed)
    s = torch.as_tensor(np.asarray(svals, dtype=np.float64))
    M = len(s)
    U = random_orthonormal(N, M, g)
    V = random_orthonormal(M, M, g)
    return (U * s) @ V.T


def pareto_sample(n: int, alpha: float, xmin: float, seed: int) -> np.ndarray:
    """n draws of a continuous power law p(x) ~ x^-alpha on [xmin, inf), sorted ascending.

    Inverse CDF: x = xmin * u^(-1 / (alpha - 1)), u uniform on (0, 1].
    """
    rng = np.random.default_rng(seed)
    u = 1.0 - rng.uniform(size=n)  # in (0, 1]
    return np.sort(xmin * u ** (-1.0 / (alpha - 1.0)))


@pytest.fixture(scope="session")
def tiny() -> torch.nn.Module:
    """A tiny random Llama (2 layers, hidden 32); do not modify it."""
    return make_tiny_llama(seed=0)


@pytest.fixture(scope="session")
def lora16(tmp_path_factory) -> tuple[Any, Path]:
    """A PEFT LoRA with r=16 (>= WeightWatcher's min_evals) on the tiny Llama, and its folder.

    Only modules whose smaller side is 32 > r are targeted (WW's truncated SVD needs k < M).
    """
    peft_model = make_peft(
        make_tiny_llama(seed=0),
        seed=3,
        r=16,
        lora_alpha=24,
        target_modules=["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    folder = save_peft(peft_model, tmp_path_factory.mktemp("lora16"))
    return peft_model, folder
