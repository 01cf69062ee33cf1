"""The update-rank question: planted updates with known singular values, written as a run
writes its spectra (spectune's analyze and write_results), give known rank90 per matrix type;
planted learning-forgetting points give known residuals from full fine-tuning's curve."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy.stats import t as student_t

from spectune.errors import SpectuneError
from spectune.studies.questions import Evidence, StudyPlan, Variant, get_question
from spectune.tuning.config import load_config

TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: (out, in) of each type in the tiny Llama (hidden 64, 2 KV heads of 16, MLP 128)
SHAPES = {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64), "o_proj": (64, 64),
          "gate_proj": (128, 64), "up_proj": (128, 64), "down_proj": (64, 128)}  # fmt: skip
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
#: planted number of equal singular values of full fine-tuning's Delta W, per seed, type and
#: layer: rank90 = ceil(0.9 k) (0.9 k never an integer, so no float is near the edge)
K_FULL = {
    seed: {t: (k + 2 * seed, k + 2 * seed + 2) for t, k in base.items()}
    for seed, base in enumerate(
        [{"q_proj": 45, "k_proj": 25, "v_proj": 25, "o_proj": 45,
          "gate_proj": 51, "up_proj": 51, "down_proj": 51}] * 3
    )
}  # fmt: skip
#: LoRA's planted singular values (r=2): equal on attention (rank90 2), [4, 1] on MLP (16/17 of
#: the energy in the first: rank90 1)
S_LORA = {t: (1.0, 1.0) if t in ATTN else (4.0, 1.0) for t in TYPES}


def _module(layer: int, kind: str) -> str:
    part = "self_attn" if kind in ATTN else "mlp"
    return f"model.layers.{layer}.{part}.{kind}"


def _planted(shape: tuple[int, int], svals: list[float], seed: int) -> torch.Tensor:
    """U diag(s) V^T of ``shape`` with orthonormal random U, V."""
    g = torch.Generator().manual_seed(seed)
    out, inp = shape
    k = len(svals)
    U, _ = torch.linalg.qr(torch.randn(out, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(inp, k, generator=g, dtype=torch.float64))
    return (U * torch.tensor(svals, dtype=torch.float64)) @ V.T


def _write_spectra(run: Path, details) -> None:
    from spectune.report.files import write_results

    write_results(details, {}, run / "spectra", plots=False)


def _full_run(run: Path, seed: int) -> None:
    """W_base random, W = W_base + Delta W with k equal singular values; the spectra as
    full fine-tuning's watch phase computes them (analyze with delta=True)."""
    from spectune.watch import analyze

    base, tuned = {}, {}
    for layer in (0, 1):
        for kind in TYPES:
            name = _module(layer, kind) + ".weight"
            w0 = torch.randn(*SHAPES[kind], generator=torch.Generator().manual_seed(layer))
            k = K_FULL[seed][kind][layer]
            base[name] = w0.float()
            tuned[name] = (
                w0.double() + _planted(SHAPES[kind], [1.0] * k, 7 * seed + layer)
            ).float()
    base["model.embed_tokens.weight"] = tuned["model.embed_tokens.weight"] = torch.randn(100, 64)
    _write_spectra(run, analyze(tuned, base=base, delta=True, precision="float32", progress=False))


def _lora_run(run: Path, seed: int, model) -> None:
    """A real peft LoRA adapter (r=2) whose s B A has the planted singular values."""
    from peft import LoraConfig, get_peft_model

    from spectune.watch import analyze

    peft_model = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules=list(TYPES), lora_dropout=0.0)
    )
    with torch.no_grad():
        for layer in (0, 1):
            for kind in TYPES:
                mod = peft_model.get_submodule("base_model.model." + _module(layer, kind))
                dw = _planted(SHAPES[kind], list(S_LORA[kind]), 100 + seed + layer)
                U, S, Vh = torch.linalg.svd(dw, full_matrices=False)
                B, A = U[:, :2] * S[:2].sqrt(), S[:2].sqrt()[:, None] * Vh[:2]  # (out, 2), (2, in)
                mod.lora_B["default"].weight.copy_(B.float())
                mod.lora_A["default"].weight.copy_(A.float())
    peft_model.save_pretrained(run / "adapter")
    _write_spectra(run, analyze(run / "adapter", precision="float32", progress=False))
    peft_model.unload()


def _rank90(k: int) -> int:
    return math.ceil(0.9 * k)


def _configs(lora_r: int = 2, spectra: bool = True) -> dict:
    flag = "true" if spectra else "false"
    return {
        "full": load_config(None, ["method=full", f"eval.spectra={flag}"]),
        "lora": load_config(None, ["method=lora", f"lora.r={lora_r}", f"eval.spectra={flag}"]),
    }


def _plan(configs: dict, variants: list[Variant] | None = None) -> StudyPlan:
    variants = variants or [Variant("full", "full"), Variant("lora", "lora")]
    return StudyPlan(
        variants=variants,
        configs=configs,
        trainable={v.name: None for v in variants},
        seeds=[0, 1, 2],
        lr_grid={v.name: [1e-3] for v in variants},
        lr_seeds=[0],
        criterion="loss",
        grid={},
        match_budget=False,
    )


def _row(variant: str, method: str, seed: int, gain: float, forgetting: float) -> dict:
    return {
        "name": f"{variant}-s{seed}",
        "variant": variant,
        "candidate": variant,
        "method": method,
        "seed": seed,
        "status": "complete",
        "accuracy_gain": gain,
        "forgetting": forgetting,
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A study folder: full and LoRA runs at seeds 0, 1, 2 with planted spectra."""
    from tests.conftest import tiny_llama

    folder = tmp_path_factory.mktemp("update-rank")
    for seed in range(3):
        _full_run(folder / "runs" / f"full-s{seed}", seed)
        _lora_run(folder / "runs" / f"lora-s{seed}", seed, tiny_llama(256))
    return folder


def test_check_refuses_a_plan_without_full_or_lora_or_spectra():
    q = get_question("update-rank")
    only_lora = {"lora": _configs()["lora"], "dora": load_config(None, ["method=dora"])}
    with pytest.raises(SpectuneError, match="needs a variant with method full"):
        q.check(_plan(only_lora, [Variant("lora", "lora"), Variant("dora", "dora")]))
    shira = {"full": _configs()["full"], "shira": load_config(None, ["method=shira"])}
    with pytest.raises(SpectuneError, match="one of the LoRA family"):
        q.check(_plan(shira, [Variant("full", "full"), Variant("shira", "shira")]))
    with pytest.raises(SpectuneError, match=r"eval\.spectra is off for full, lora"):
        q.check(_plan(_configs(spectra=False)))
    q.check(_plan(_configs()))  # a full and a LoRA variant with spectra: accepted


def test_rank90_per_type_from_planted_spectra(planted):
    rows = [_row(v, v, s, 0.5, 0.1) for v in ("full", "lora") for s in range(3)]
    evidence = Evidence(planted, _plan(_configs()), rows, {}, [], {})
    answer = get_question("update-rank").answer(evidence)
    table = {(r["variant"], r["type"]): r for r in answer.table}
    assert [r["type"] for r in answer.table[:7]] == list(TYPES)  # embeddings left out
    for kind in TYPES:
        full = [sum(_rank90(k) for k in K_FULL[s][kind]) / 2 for s in range(3)]
        row = table[("full", kind)]
        assert row["rank90_mean"] == pytest.approx(sum(full) / 3)
        assert row["fraction"] == pytest.approx(sum(full) / 3 / min(SHAPES[kind]))
        assert row["full_rank"] == min(SHAPES[kind]) and row["layers"] == 2
        assert row["per_run"] == " / ".join(f"s{s}: {x:.1f}" for s, x in enumerate(full))
        lora = 2 if kind in ATTN else 1
        assert table[("lora", kind)]["rank90_mean"] == lora
        # full over LoRA paired by seed: geometric mean, Student t on the logs
        logs = [math.log(x / lora) for x in full]
        mean = sum(logs) / 3
        sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2)
        half = student_t.ppf(0.975, 2) * sd / math.sqrt(3)
        want = f"{math.exp(mean):.1f} [{math.exp(mean - half):.1f}, {math.exp(mean + half):.1f}]x"
        assert row["over_lora"] == want
    types = answer.findings[1]
    assert types.verdict == "agrees"
    assert types.figures["q_proj"]["estimate"] == pytest.approx(
        math.exp(
            sum(math.log((_rank90(45 + 2 * s) + _rank90(47 + 2 * s)) / 4) for s in range(3)) / 3
        )
    )


def test_band_verdict_and_an_unreachable_band(planted):
    rows = [_row(v, v, s, 0.5, 0.1) for v in ("full", "lora") for s in range(3)]
    band = get_question("update-rank").answer(
        Evidence(planted, _plan(_configs()), rows, {}, [], {})
    )
    band = band.findings[0]
    per_seed = [
        sum(_rank90(k) for kind in TYPES for k in K_FULL[s][kind]) / (2 * len(TYPES)) / 2
        for s in range(3)
    ]
    assert band.figures["ratio"]["estimate"] == pytest.approx(sum(per_seed) / 3)
    assert 10 < band.figures["ratio"]["low"] < band.figures["ratio"]["high"] < 100
    assert band.verdict == "agrees"
    # at r=8 the band starts at rank 80, above every full rank here (64): cannot be tested
    wide = get_question("update-rank").answer(
        Evidence(planted, _plan(_configs(lora_r=8)), rows, {}, [], {})
    )
    assert wide.findings[0].verdict == "undetermined"
    assert "cannot exceed 8.0x" in wide.findings[0].why


def _curve_evidence(tmp_path: Path, lora_gain: float, lora_forgetting: float, rates: int = 2):
    rows = []
    for s, jitter in enumerate((0.0, 0.01, -0.01)):
        rows.append(_row("full-lo", "full", s, 0.40 + jitter, 0.10 + jitter))
        if rates == 2:
            rows.append(_row("full-hi", "full", s, 0.60 + jitter, 0.30 + jitter))
        rows.append(_row("lora", "lora", s, lora_gain + jitter, lora_forgetting + jitter))
    variants = [Variant("full-lo", "full"), Variant("full-hi", "full"), Variant("lora", "lora")]
    configs = {"full-lo": _configs()["full"], "full-hi": _configs()["full"], **_configs()}
    return Evidence(tmp_path, _plan(configs, variants), rows, {}, [], {})


def test_one_curve_on_off_and_without_a_curve(tmp_path):
    q = get_question("update-rank")
    on = q.answer(_curve_evidence(tmp_path, 0.50, 0.20)).findings[2]
    assert on.figures["lora"]["residual"] == pytest.approx(0.0, abs=1e-12)
    assert -0.05 < on.figures["lora"]["low"] <= 0 <= on.figures["lora"]["high"] < 0.05
    assert on.verdict == "agrees"
    above = q.answer(_curve_evidence(tmp_path, 0.60, 0.20)).findings[2]
    assert above.figures["lora"]["residual"] == pytest.approx(0.10)
    assert above.figures["lora"]["low"] > 0 and above.verdict == "differs"
    assert "+10.0 [" in above.ours
    outside = q.answer(_curve_evidence(tmp_path, 0.30, 0.05)).findings[2]
    assert outside.verdict == "undetermined" and "not extrapolated" in outside.ours
    one = q.answer(_curve_evidence(tmp_path, 0.50, 0.20, rates=1)).findings[2]
    assert one.verdict == "undetermined" and "two rates or more" in one.why
    # no spectra in these folders: every run is left out of the rank table, said so
    assert not q.answer(_curve_evidence(tmp_path, 0.5, 0.2)).table
