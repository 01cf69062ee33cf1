"""Spectrum on a planted model: matrices of known singular values, so the SNR of each is known
by construction and the selection can be checked against the hand-made order."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from spectune.errors import SpectuneError
from spectune.tuning.config import TuneConfig
from spectune.tuning.methods import get_method
from spectune.tuning.methods import spectrum as sp
from spectune.tuning.methods.base import BuildContext, load_float_base, meta_model
from spectune.watch.esd import eigenvalues
from tests.conftest import tiny_llama, tiny_run_config

#: the SNR planted in each of the 14 matrices of the tiny Llama, in model order (q, k, v, o,
#: gate, up, down of block 0, then block 1): SNR = 0.08 + 0.04 d, d a shuffle of 0..13
DESIGN = [5, 12, 0, 9, 3, 13, 7, 10, 1, 11, 4, 2, 8, 6]


def target_snr(d: int) -> float:
    return 0.08 + 0.04 * d


def planted(shape: tuple[int, int], snr: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian matrix whose top k singular values are replaced by k equal spikes (at most
    5, far above the bulk's edge of about 2) making sum(spikes) / sum(rest) = ``snr``; returns
    the matrix and its singular values."""
    N, M = max(shape), min(shape)
    rng = np.random.default_rng(seed)
    U, s, Vt = np.linalg.svd(rng.standard_normal((N, M)) / np.sqrt(N), full_matrices=False)
    k = 1
    while snr * s[k:].sum() / k > 5.0:
        k += 1
    s = s.copy()
    s[:k] = snr * s[k:].sum() / k
    W = U @ np.diag(s) @ Vt
    return (W if shape[0] == N else W.T), s


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "snr_cache_dir", lambda: tmp_path / "snr-cache")


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    """The tiny Llama with each target matrix replaced by a planted one; (folder, names,
    hand-computed SNR per name)."""
    model = tiny_llama(97)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:-1]
    modules, hand = dict(model.named_modules()), {}
    with torch.no_grad():
        for i, (name, d) in enumerate(zip(names, DESIGN, strict=True)):
            weight = modules[name].weight
            W, s = planted(tuple(weight.shape), target_snr(d), seed=i)
            weight.copy_(torch.from_numpy(W))
            k = int(np.count_nonzero(s == s[0]))
            hand[name] = float(s[:k].sum() / s[k:].sum())  # = target_snr(d) by construction
    folder = tmp_path_factory.mktemp("planted")
    model.save_pretrained(folder)
    return folder, names, hand


def context(folder, **changes) -> BuildContext:
    changes = {f"spectrum__{k}": v for k, v in changes.items()}
    config = TuneConfig.from_dict(tiny_run_config(folder, "spectrum", **changes))
    return BuildContext(config, folder, folder, progress=False)


def test_snr_of_noise_is_zero_and_of_a_planted_matrix_the_hand_value():
    for seed, shape in enumerate([(64, 64), (128, 64), (576, 192)]):
        G = np.random.default_rng(seed).standard_normal(shape) / np.sqrt(shape[0])
        assert sp.snr(eigenvalues(torch.from_numpy(G)), max(shape), min(shape)) == (0.0, 0)
        W, s = planted(shape, 0.3, seed)
        value, k = sp.snr(eigenvalues(torch.from_numpy(W)), max(shape), min(shape))
        assert k == int(np.count_nonzero(s == s[0])) and k >= 1
        assert value == pytest.approx(s[:k].sum() / s[k:].sum(), rel=1e-9)
        assert value == pytest.approx(0.3, rel=1e-9)
        # scale-free (Spectrum's s_1 normalisation is not)
        assert sp.snr(eigenvalues(torch.from_numpy(7 * W)), *sorted(shape)[::-1])[0] == (
            pytest.approx(value, rel=1e-9)
        )


def test_snr_table_of_the_planted_model_is_the_hand_computed_one(planted_dir, tmp_path):
    folder, names, hand = planted_dir
    table = sp.snr_table(context(folder), names)
    assert list(table) == names
    for name in names:
        assert table[name]["snr"] == pytest.approx(hand[name], rel=1e-5), name
    # read back from the cache: nothing recomputed
    assert len(list((tmp_path / "snr-cache").glob("*.json"))) == 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sp, "snr", lambda *a: pytest.fail("recomputed a cached SNR"))
        assert sp.snr_table(context(folder), names[:3]) == {n: table[n] for n in names[:3]}


@pytest.mark.parametrize(
    ("per_type", "fraction", "expected"),
    [
        # per type (two matrices each): the block with the higher d in DESIGN, by hand
        (True, 0.5, {"q": 1, "k": 0, "v": 1, "o": 0, "gate": 0, "up": 0, "down": 0}),
        (True, 1.0, None),
        # over all 14: the top round(f 14) planted SNRs
        (False, 0.5, 7),
        (False, 3 / 14, 3),
        (False, 0.01, 1),
    ],
)
def test_selects_exactly_the_matrices_of_highest_snr(planted_dir, per_type, fraction, expected):
    folder, names, _ = planted_dir
    ctx = context(folder, fraction=fraction, per_type=per_type)
    method = get_method("spectrum")
    built = method.build(ctx, load_float_base(folder))
    trained = {
        n.removesuffix(".weight") for n, p in built.model.named_parameters() if p.requires_grad
    }
    if expected is None:
        want = set(names)
    elif isinstance(expected, dict):  # block index per type
        want = {f"model.layers.{b}.{'mlp' if t in ('gate', 'up', 'down') else 'self_attn'}.{t}_proj"
                for t, b in expected.items()}  # fmt: skip
    else:
        by_design = sorted(range(14), key=lambda i: -DESIGN[i])
        want = {names[i] for i in by_design[:expected]}
    assert trained == want
    assert set(built.targets) == want
    n = sum(built.model.get_submodule(t).weight.numel() for t in want)
    assert method.trainable_count(ctx, meta_model(folder)) == n
    assert method.memory_terms(ctx, meta_model(folder)).trainable == n


def test_match_budget_picks_the_nearest_whole_matrices(planted_dir):
    folder, names, _ = planted_dir
    method = get_method("spectrum")
    per_type_half = 4096 + 2048 + 2048 + 4096 + 8192 * 3  # one matrix of each type
    assert method.match_budget(context(folder), per_type_half) == ["spectrum.fraction=0.5"]
    assert method.match_budget(context(folder), 70000) == ["spectrum.fraction=1"]
    with pytest.raises(SpectuneError, match=r"nearest are 36,864 \(spectrum.fraction=0.5\) and "
                       r"73,728 \(spectrum.fraction=1\).*per_type=false"):  # fmt: skip
        method.match_budget(context(folder), 52000)
    # globally: the top three by SNR (d = 13, 12, 11), then applied gives that set
    sizes = {n: math.prod(load_float_base(folder).get_submodule(n).weight.shape) for n in names}
    top3 = [names[DESIGN.index(d)] for d in (13, 12, 11)]
    (override,) = method.match_budget(context(folder, per_type=False), sum(sizes[n] for n in top3))
    fraction = float(override.removeprefix("spectrum.fraction="))
    ctx = context(folder, per_type=False, fraction=fraction)
    assert sorted(method.build(ctx, load_float_base(folder)).targets) == sorted(top3)


def test_plan_shows_the_selected_matrices_with_their_snr(planted_dir):
    folder, names, hand = planted_dir
    plan = get_method("spectrum").plan(context(folder, fraction=0.5))
    assert "36,864 of" in plan.headline and "7 of 14 matrices" in plan.headline
    table = plan.table
    assert list(table["selected"]) == [True] * 7 + [False] * 7
    for row in table.itertuples():
        assert row.snr == pytest.approx(hand[row.name], rel=1e-5)
    assert set(plan.files) == {"snr.csv"}


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, "half", True, float("nan")])
def test_a_fraction_outside_0_1_is_refused(planted_dir, bad):
    with pytest.raises(SpectuneError, match=r"spectrum\.fraction"):
        context(planted_dir[0], fraction=bad)


def test_per_type_must_be_a_boolean(planted_dir):
    with pytest.raises(SpectuneError, match=r"spectrum\.per_type"):
        context(planted_dir[0], per_type="yes")


def test_without_weights_the_count_comes_from_the_shapes_per_type(planted_dir, tmp_path):
    """``spectune memory`` of a config.json: per type the count needs no SNR; globally it does."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text((planted_dir[0] / "config.json").read_text())
    method, meta = get_method("spectrum"), meta_model(folder)
    assert method.trainable_count(context(folder, fraction=0.5), meta) == 36864
    assert method.memory_terms(context(folder, fraction=1.0), meta).trainable == 73728
    assert method.trainable_count(context(folder, per_type=False), meta) is None
    assert method.memory_terms(context(folder, per_type=False), meta) is None


def test_methods_and_memory_cli_show_the_selection(planted_dir, tmp_path, capsys):
    from spectune.cli.main import main

    folder, names, _ = planted_dir
    args = ["methods", "spectrum", "--model", str(folder), "--out", str(tmp_path / "plan")]
    assert main([*args, "spectrum.fraction=0.5"]) == 0
    out = capsys.readouterr().out
    assert "36,864 of" in out and "7 of 14 matrices (top 0.5 of each module type by SNR)" in out
    written = pd.read_csv(tmp_path / "plan" / "snr.csv")
    assert written["selected"].sum() == 7 and set(written["name"]) == set(names)
    assert main(["memory", "--method", "spectrum", str(folder), "spectrum.fraction=0.5"]) == 0
    assert "trainable: spectrum 36,864" in capsys.readouterr().out
    assert main([*args, "spectrum.fraction=2"]) == 2
    assert "spectrum.fraction must be in (0, 1], got 2" in capsys.readouterr().err
