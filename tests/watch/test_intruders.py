"""Intruder dimensions: planted directions, the LoRA route against the dense computation,
peft's own selection (``reduce_intruder_dimension``), and analyze()'s columns."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from spectune.errors import SpectuneError
from spectune.watch import analyze
from spectune.watch.intruders import intruder_dimensions, lora_intruder_dimensions

from .conftest import make_peft, make_tiny_llama, matrix_with_singular_values


def base_matrix(N: int = 160, M: int = 96, seed: int = 0) -> torch.Tensor:
    """A base weight (N, M) with a decaying spectrum (like a trained layer's)."""
    if N < M:
        return base_matrix(M, N, seed).T.contiguous()
    sv = 10.0 / (1.0 + np.arange(M)) ** 0.7
    return matrix_with_singular_values(sv, N, seed)


def test_a_planted_intruder_is_found():
    W0 = base_matrix()
    g = torch.Generator().manual_seed(1)
    u = torch.randn(W0.shape[0], 1, generator=g, dtype=torch.float64)
    v = torch.randn(1, W0.shape[1], generator=g, dtype=torch.float64)
    u, v = u / u.norm(), v / v.norm()
    tuned = W0 + 30.0 * u @ v  # a new top direction, nearly orthogonal to every base one
    res = intruder_dimensions(W0, tuned)
    assert res.num_intruders == 1 and res.indices == [0]
    assert res.similarities[0] < 0.5 and res.top_k == 10
    # the direction found is the planted one
    U_t = np.linalg.svd(tuned.numpy(), full_matrices=False)[0]
    assert abs(float(U_t[:, 0] @ u.numpy()[:, 0])) > 0.99


def test_a_small_update_along_base_directions_has_no_intruders():
    W0 = base_matrix()
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
    tuned = U @ torch.diag(S * 1.05) @ Vh  # rescaled singular values, same directions
    res = intruder_dimensions(W0, tuned)
    assert res.num_intruders == 0 and res.min_similarity > 0.99
    assert intruder_dimensions(W0, W0).num_intruders == 0


@pytest.mark.parametrize(("N", "M", "r", "scale"), [(160, 96, 8, 4.0), (96, 200, 4, 0.3),
                                                   (40, 30, 4, 2.0)])  # fmt: skip
def test_lora_route_matches_the_dense_computation(N, M, r, scale):
    W0 = base_matrix(N, M, seed=2)
    g = torch.Generator().manual_seed(3)
    B = torch.randn(N, r, generator=g, dtype=torch.float64)
    A = torch.randn(r, M, generator=g, dtype=torch.float64) / np.sqrt(M)
    lora = lora_intruder_dimensions(W0, B, A, scale)
    dense = intruder_dimensions(W0, W0 + scale * B @ A)
    assert lora.indices == dense.indices
    np.testing.assert_allclose(lora.singular_values, dense.singular_values, rtol=1e-10)
    np.testing.assert_allclose(lora.similarities, dense.similarities, atol=1e-8)


def test_bad_input_is_a_clear_error():
    W0 = base_matrix()
    with pytest.raises(ValueError, match="shape"):
        intruder_dimensions(W0, W0[:10])
    with pytest.raises(ValueError, match="top_k"):
        intruder_dimensions(W0, W0, top_k=0)
    with pytest.raises(ValueError, match="NaN"):
        intruder_dimensions(W0, W0 * float("nan"))
    with pytest.raises(ValueError, match="do not fit"):
        lora_intruder_dimensions(W0, torch.ones(3, 2), torch.ones(2, 96))
    with pytest.raises(SpectuneError, match="needs base="):
        analyze({"a.weight": W0}, intruders=True, delta=True, progress=False)


def peft_counts(peft_model) -> dict[str, int]:
    """Intruders per module as peft's reduce_intruder_dimension reports them."""
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    lines: list[str] = []
    reduce_intruder_dimension(copy.deepcopy(peft_model), logging_sink=lines.append)
    counts = {}
    for line in lines:
        m = re.match(r"(.+): (?:Intruders: (\d+)|No intruders)", line)
        if m:
            name = m.group(1).removeprefix("base_model.model.")
            counts[name] = int(m.group(2) or 0)
    return counts


def test_counts_match_peft_reduce_intruder_dimension():
    """peft's own selection (top 10, epsilon 0.5, float32 SVDs) on a LoRA whose B is large
    enough to create intruders in some modules and not in others."""
    base = make_tiny_llama(seed=0, hidden_size=64, intermediate_size=128)
    peft_model = make_peft(copy.deepcopy(base), seed=5, r=4, lora_alpha=8,
                           target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])  # fmt: skip
    with torch.no_grad():
        for i, (name, p) in enumerate(peft_model.named_parameters()):
            if "lora_B" in name:
                p.mul_(1e-3 if i % 3 else 40.0)  # strong updates in some modules only
    theirs = peft_counts(peft_model)
    ours = analyze(peft_model, peft=True, base=base, intruders=True, progress=False)
    assert len(ours) == len(theirs) == 8
    names = [ln.removesuffix(".lora_BA") for ln in ours["longname"]]
    got = dict(zip(names, ours["num_intruders"].astype(int), strict=True))
    assert got == theirs
    assert 0 < sum(got.values()) and min(got.values()) == 0


def test_analyze_delta_intruders_and_missing_base():
    W0 = base_matrix()
    g = torch.Generator().manual_seed(4)
    u = torch.randn(W0.shape[0], 1, generator=g, dtype=torch.float64)
    tuned = {"layer.weight": W0 + 20.0 * (u / u.norm()) @ torch.ones(1, W0.shape[1], dtype=torch.float64) / 10.0,
             "other.weight": base_matrix(seed=9)}  # fmt: skip
    d = analyze(tuned, base={"layer.weight": W0, "other.weight": base_matrix(seed=9)},
                delta=True, intruders=True, progress=False)  # fmt: skip
    by = d.set_index("longname")
    assert by.loc["layer", "num_intruders"] == 1
    assert by.loc["other", "num_intruders"] == 0
    # the same tuned matrices given as updates on the base (plus_base): the same counts
    base = {"layer.weight": W0, "other.weight": base_matrix(seed=9)}
    update = {k: tuned[k] - base[k] for k in tuned}
    plus = analyze(update, base=base, plus_base=True, intruders=True, progress=False)
    assert plus.set_index("longname")["num_intruders"].to_dict() == {"layer": 1, "other": 0}
    # ... and as updates analyzed as they are (a sparse fine-tune's rows): the same counts on
    # rows that are the updates' own spectra
    own = analyze(update, base=base, updates=True, intruders=True, progress=False)
    assert own.set_index("longname")["num_intruders"].to_dict() == {"layer": 1, "other": 0}
    alone = analyze(update, progress=False).set_index("longname")
    assert own.set_index("longname")["log_norm"].equals(alone["log_norm"])  # "other": 0, NaN
    assert alone.loc["layer", "log_norm"] > 0
    with pytest.raises(SpectuneError, match="peft=True .* delta=True .* plus_base=True or updates"):
        analyze(tuned, base=tuned, intruders=True, progress=False)
    with pytest.raises(SpectuneError, match="updates=True .* cannot be combined"):
        analyze(update, base=base, updates=True, plus_base=True, progress=False)


@pytest.mark.parametrize("shape", [(40, 90), (90, 40), (120, 120)])
def test_base_vectors_through_the_gram_give_the_svds_best_cosines(shape):
    """The Gram route's columns differ from the SVD's only in sign (and within a repeated
    singular value), which max |cos| does not see: equal on random tuned directions, and a
    tall matrix of rank 5 (too ill-conditioned for W v / s) takes the SVD instead."""
    from spectune.watch.intruders import base_left_vectors

    rng = np.random.default_rng(1)
    W = rng.standard_normal(shape)
    probe = rng.standard_normal((shape[0], 12))
    probe /= np.linalg.norm(probe, axis=0)
    U_svd = np.linalg.svd(W, full_matrices=False)[0]
    U = base_left_vectors(W)
    assert U.shape == U_svd.shape
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-10)
    np.testing.assert_allclose(np.abs(probe.T @ U).max(1), np.abs(probe.T @ U_svd).max(1),
                               atol=1e-12)  # fmt: skip
    low = rng.standard_normal((90, 5)) @ rng.standard_normal((5, 40))  # 90 x 40, rank 5
    U_low = base_left_vectors(low)
    np.testing.assert_allclose(U_low.T @ U_low, np.eye(40), atol=1e-10)  # the SVD's basis


@pytest.mark.parametrize("shape", [(150, 100), (100, 150)])
@pytest.mark.parametrize("rank", [None, 5])
def test_top_vectors_of_a_dense_tuned_matrix_are_the_svds(shape, rank):
    """The Gram route (tall and wide), and the SVD where the rank is below k."""
    from spectune.watch.intruders import _top_left

    rng = np.random.default_rng(2)
    if rank is None:
        W = rng.standard_normal(shape) + 5 * np.outer(
            rng.standard_normal(shape[0]), rng.standard_normal(shape[1])
        )
    else:
        W = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
        W += 1e-9 * rng.standard_normal(shape)  # rank 5 and noise: s_10 / s_1 about 1e-10
    U, S = _top_left(W, 10)
    U_svd, S_svd, _ = np.linalg.svd(W, full_matrices=False)
    np.testing.assert_allclose(S, S_svd[:10], rtol=1e-10)
    top = 10 if rank is None else rank  # past the rank: a cluster of noise, any basis of it
    np.testing.assert_allclose(np.abs(np.sum(U * U_svd[:, :10], axis=0))[:top], 1.0, atol=1e-8)


def test_the_base_vectors_are_computed_once_per_matrix_and_shared_within_the_budget(monkeypatch):
    """Two tuned matrices of one base: one decomposition of the base (the same array, read
    only); a matrix equal in values from elsewhere is the same entry; one over the budget is
    computed each time and not kept."""
    from spectune.watch import intruders as mod

    calls = []
    real = mod.base_left_vectors
    monkeypatch.setattr(mod, "base_left_vectors", lambda W: calls.append(W.shape) or real(W))
    mod.clear_shared_base_vectors()
    W0 = base_matrix(120, 90).double()
    g = torch.Generator().manual_seed(3)
    B, A = torch.randn(120, 4, generator=g), torch.randn(4, 90, generator=g)
    first = lora_intruder_dimensions(W0, B, A, 0.5)
    second = lora_intruder_dimensions(W0.clone(), 2 * B, A, 0.5)  # another adapter, same base
    dense = intruder_dimensions(W0.numpy().copy(), W0 + 0.5 * B @ A)
    assert calls == [(120, 90)]
    np.testing.assert_allclose(dense.similarities, first.similarities, atol=1e-10)
    assert not np.array_equal(first.similarities, second.similarities)
    U = mod.shared_base_left_vectors(W0.numpy())
    assert not U.flags.writeable
    monkeypatch.setattr(mod, "BASE_VECTORS_BUDGET", U.nbytes + 100)
    other = base_matrix(120, 90, seed=5).double()
    for _ in range(2):
        intruder_dimensions(other, other)
    assert calls == [(120, 90)] * 3  # over the budget: computed each time, the first kept
    mod.clear_shared_base_vectors()
    mod.shared_base_left_vectors(W0.numpy())
    assert len(calls) == 4
    mod.clear_shared_base_vectors()
