"""objective: distill: the divergences against torch.distributions and TRL, a finite-difference
gradient check, the batch loss, bad teachers refused before any work, and end-to-end runs
(tiny model: LoRA, frog and full with the three kinds of teacher; slow: context distillation
on the embedded model moves agreement with the teacher)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from spectune.errors import SpectuneError
from spectune.tuning.config import TuneConfig
from spectune.tuning.objectives.distill.data import DistillCollator, distill_features
from spectune.tuning.objectives.distill.loss import distill_batch_loss, generalized_jsd
from spectune.tuning.recipe import tune
from tests.conftest import save_tiny_llama, tiny_llama, tiny_run_config


def _logits(seed: int = 0, tokens: int = 7, vocab: int = 11, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(tokens, vocab, generator=g, dtype=dtype) * 2,
            torch.randn(tokens, vocab, generator=g, dtype=dtype) * 2)  # fmt: skip


# --------------------------------------------------------------------------- the divergences


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_forward_and_reverse_kl_equal_torch_distributions(temperature):
    from torch.distributions import Categorical, kl_divergence

    s, t = _logits()
    p, q = Categorical(logits=t / temperature), Categorical(logits=s / temperature)
    forward = generalized_jsd(s, t, beta=0.0, temperature=temperature)
    reverse = generalized_jsd(s, t, beta=1.0, temperature=temperature)
    torch.testing.assert_close(forward, kl_divergence(p, q), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(reverse, kl_divergence(q, p), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_is_the_mixture_formula(beta):
    from torch.distributions import Categorical, kl_divergence

    s, t = _logits(1)
    p, q = t.softmax(-1), s.softmax(-1)
    m = Categorical(probs=beta * p + (1 - beta) * q)
    want = beta * kl_divergence(Categorical(probs=p), m) + (1 - beta) * kl_divergence(
        Categorical(probs=q), m
    )
    torch.testing.assert_close(generalized_jsd(s, t, beta=beta), want, rtol=1e-9, atol=1e-12)
    assert bool((generalized_jsd(s, s.clone(), beta=beta).abs() < 1e-12).all())


def _trl_generalized_jsd_loss():
    """TRL 1.16's ``GKDTrainer.generalized_jsd_loss``, its own source compiled on its own:
    importing the trainer module pulls in datasets, accelerate... (tens of seconds)."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("trl is not installed (dev extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / "experimental/gkd/gkd_trainer.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree)
              if isinstance(n, ast.FunctionDef) and n.name == "generalized_jsd_loss")  # fmt: skip
    fn.decorator_list = []
    namespace = {"torch": torch, "F": torch.nn.functional}
    exec(compile(ast.Module([fn], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace["generalized_jsd_loss"]


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generalized_jsd_equals_trl(beta, temperature):
    trl_loss = _trl_generalized_jsd_loss()
    s, t = _logits(2, dtype=torch.float32)
    ref = trl_loss(s[None], t[None], beta=beta, temperature=temperature, reduction="none")
    ours = generalized_jsd(s, t, beta=beta, temperature=temperature)
    torch.testing.assert_close(ours, ref[0].sum(-1), rtol=1e-5, atol=1e-6)
    # TRL's batch mean over labelled tokens is our mean over the same tokens
    labels = torch.tensor([[1, -100, 2, 3, -100, 4, 5]])
    ref_mean = trl_loss(
        s[None], t[None], labels=labels, beta=beta, temperature=temperature,
        num_items_in_batch=int((labels != -100).sum()),
    )  # fmt: skip
    keep = labels[0] != -100
    torch.testing.assert_close(
        generalized_jsd(s[keep], t[keep], beta=beta, temperature=temperature).mean(), ref_mean,
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_gradient_matches_finite_differences(beta):
    s, t = _logits(3, tokens=3, vocab=5)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: generalized_jsd(x, t, beta=beta, temperature=1.3).sum(), (s,), eps=1e-6,
        atol=1e-6,
    )  # fmt: skip


def test_bad_beta_and_shapes_are_refused():
    s, t = _logits()
    with pytest.raises(SpectuneError, match="beta"):
        generalized_jsd(s, t, beta=1.5)
    with pytest.raises(SpectuneError, match="shape"):
        generalized_jsd(s, t[:, :-1])


# --------------------------------------------------------------------------- the batch loss


@pytest.fixture(scope="module")
def batch(smol_tokenizer):
    from spectune.data.tasks import generate_task_set, task_rationale

    train, _ = generate_task_set(6, 0, seed=0)
    feats, info = distill_features(train, smol_tokenizer, max_length=96, system=None,
                                   teacher_system="Be terse.", shots=train[:1],
                                   rationales=[task_rationale(ex) for ex in train])  # fmt: skip
    assert info["n_kept"] == 6 and info["n_rationale_rows"] == 6
    return DistillCollator(smol_tokenizer.eos_token_id)(feats), train


def test_features_share_the_response_tokens(batch):
    b, _ = batch
    answer = b["task"] == 0
    s = [row[lab != -100].tolist() for row, lab in zip(b["input_ids"][answer], b["labels"][answer],
                                                       strict=True)]  # fmt: skip
    t = [row[lab != -100].tolist() for row, lab in zip(b["teacher_input_ids"], b["teacher_labels"],
                                                       strict=True)]  # fmt: skip
    assert s == t and all(s)
    # the teacher's prompts are longer (system prompt and one solved example)
    assert b["teacher_attention_mask"].sum() > b["attention_mask"][answer].sum()


def test_batch_loss_is_zero_against_itself_and_sft_at_weight_one(batch, smol_tokenizer):
    from spectune.models.forward import decoder_and_head, labelled_nll

    b, _ = batch
    model = tiny_llama(len(smol_tokenizer))
    # the same model and the same prompt: no divergence (answer rows only, no rationale)
    answer = b["task"] == 0
    same = {"input_ids": b["input_ids"][answer], "attention_mask": b["attention_mask"][answer],
            "labels": b["labels"][answer], "teacher_input_ids": b["input_ids"][answer],
            "teacher_attention_mask": b["attention_mask"][answer],
            "teacher_labels": b["labels"][answer]}  # fmt: skip
    loss, n = distill_batch_loss(model, model, same, beta=1.0, temperature=1.0, sft_weight=0.0,
                                 rationale_weight=0.0)  # fmt: skip
    assert abs(float(loss)) < 1e-5 and n > 0
    # sft_weight 1: the plain NLL of the responses
    nll, count = labelled_nll(decoder_and_head(model), same["input_ids"], same["attention_mask"],
                              same["labels"])  # fmt: skip
    loss, _ = distill_batch_loss(model, model, same, beta=1.0, temperature=1.0, sft_weight=1.0,
                                 rationale_weight=0.0)  # fmt: skip
    assert float(loss) == pytest.approx(float(nll) / count, rel=1e-5)
    # a different teacher: positive divergence, gradients for the student only
    teacher = tiny_llama(len(smol_tokenizer), seed=1).requires_grad_(False)
    loss, n = distill_batch_loss(model, teacher, b, beta=0.5, temperature=2.0, sft_weight=0.2,
                                 rationale_weight=0.5)  # fmt: skip
    loss.backward()
    assert float(loss) > 0 and n == int((b["labels"][:, 1:] != -100).sum())
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_on_policy_batch_labels_the_students_own_answer(batch, smol_tokenizer):
    from spectune.tuning.objectives.distill.data import on_policy_inputs

    b, _ = batch
    model = tiny_llama(len(smol_tokenizer)).train()
    eot = smol_tokenizer.eos_token_id
    new = on_policy_inputs(model, b, pad_id=eot, eot=eot, max_new_tokens=3)
    assert model.training  # restored after generating
    answer = new["task"] == 0
    for row, j in zip(answer.nonzero().flatten().tolist(), range(int(answer.sum())), strict=True):
        s = new["input_ids"][row][new["labels"][row] != -100].tolist()
        t = new["teacher_input_ids"][j][new["teacher_labels"][j] != -100].tolist()
        assert s == t and 1 <= len(s) <= 4 and s[-1] == eot
        # the prompts are the original ones
        n = int(new["prompt_len"][row])
        assert new["input_ids"][row, :n].tolist() == b["input_ids"][row, :n].tolist()
    # rationale rows are kept as they were
    assert int((new["task"] == 1).sum()) == int((b["task"] == 1).sum())
    loss, _ = distill_batch_loss(model, model, new, beta=0.0, temperature=1.0, sft_weight=0.0,
                                 rationale_weight=1.0)  # fmt: skip
    assert math.isfinite(float(loss))


# --------------------------------------------------------------------------- bad teachers


def _config(model_dir, method="lora", **distill):
    return TuneConfig.from_dict(tiny_run_config(model_dir, method, objective="distill",
                                                distill=distill))  # fmt: skip


def test_teacher_with_other_vocabulary_or_tokenizer_fails_before_any_work(
    tiny_model_dir, tmp_path, smol_tokenizer
):
    small = save_tiny_llama(tmp_path / "small-vocab", 1000)
    smol_tokenizer.save_pretrained(small)
    out = tmp_path / "out"
    with pytest.raises(SpectuneError, match=r"vocabulary has 1000 tokens.*49152"):
        tune(_config(tiny_model_dir, teacher=str(small)), out=out, progress=False)
    assert not out.exists()

    other = save_tiny_llama(tmp_path / "other-tokenizer", len(smol_tokenizer))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<spectune-extra>"])
    tok.save_pretrained(other)
    with pytest.raises(SpectuneError, match=r"tokenizer \(49153 tokens\) differs"):
        tune(_config(tiny_model_dir, teacher=str(other)), out=out, progress=False)
    assert not out.exists()

    with pytest.raises(SpectuneError, match="not a folder"):
        tune(_config(tiny_model_dir, teacher=str(tmp_path / "nowhere")), out=out, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpectuneError, match="neither a model"):
        tune(_config(tiny_model_dir, teacher=str(empty)), out=out, progress=False)
    assert not out.exists()


def test_bad_settings_name_the_key(tiny_model_dir):
    with pytest.raises(SpectuneError, match="distill.loss"):
        _config(tiny_model_dir, loss="kl")
    with pytest.raises(SpectuneError, match="distill.beta is read only with distill.loss: jsd"):
        _config(tiny_model_dir, loss="reverse_kl", beta=0.2)
    with pytest.raises(SpectuneError, match="distill.temperature"):
        _config(tiny_model_dir, temperature=0)
    with pytest.raises(SpectuneError, match="distill.sft_weight"):
        _config(tiny_model_dir, sft_weight=1.5)
    data = tiny_run_config(tiny_model_dir, objective="sft", distill={"shots": 2})
    with pytest.raises(SpectuneError, match="distill: section is read by .*distill"):
        TuneConfig.from_dict(data)


# --------------------------------------------------------------------------- end to end


def _fast(model_dir, method, **distill):
    data = tiny_run_config(model_dir, method, objective="distill", distill=distill)
    data["eval"].update(latency_prompts=0)
    data["train"].update(max_steps=2, save_steps=2)
    return TuneConfig.from_dict(data)


FOLDER = {"config.yaml", "run.json", "before.json", "train_log.csv", "adapter",
          "metrics.json", "predictions.jsonl", "spectra", "plots", "report.html"}  # fmt: skip
EXTRAS = {"teacher_kl", "teacher_token_agreement", "teacher_agreement", "teacher_accuracy"}


def _check_folder(out, metrics):
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert FOLDER <= names
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] == "complete" and set(marker["files"]) >= names
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["run"]["objective"] == "distill"
    for phase in ("before", "after"):
        extras = saved[phase]["extras"]
        assert EXTRAS <= set(extras) and all(math.isfinite(extras[k]) for k in EXTRAS)
    assert math.isfinite(metrics.training.final_loss)
    assert "distill: teacher kl" in (out / "report.html").read_text()


@pytest.fixture(scope="module")
def lora_context_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "lora"
    return out, tune(_fast(tiny_model_dir, "lora", shots=2), out=out, progress=False)


def test_lora_student_of_a_context_teacher_writes_a_complete_folder(lora_context_run):
    out, result = lora_context_run
    _check_folder(out, result.metrics)
    data = result.metrics.data
    assert data["teacher"].startswith("context") and data["tokenize"]["shots"] == 2
    assert result.metrics.config["distill"]["loss"] == "reverse_kl"


def test_frog_student_of_a_model_folder_with_rationales_and_teacher_answers(
    tiny_model_dir, tmp_path, smol_tokenizer
):
    teacher = save_tiny_llama(tmp_path / "teacher", len(smol_tokenizer), seed=3)
    smol_tokenizer.save_pretrained(teacher)
    out = tmp_path / "frog"
    result = tune(_fast(tiny_model_dir, "frog", teacher=str(teacher), loss="jsd", beta=0.3,
                        responses="teacher", max_new_tokens=3, rationale_weight=0.5),
                  out=out, progress=False)  # fmt: skip
    _check_folder(out, result.metrics)
    tok = result.metrics.data["tokenize"]
    assert tok["n_rationale_rows"] > 0 and tok["teacher_responses"] > 0
    # only the answer task runs at inference: every held-out prompt carries the prefix
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["instruction"].startswith("[answer] ") for r in rows)


def test_full_student_of_a_spectune_run_folder(lora_context_run, tiny_model_dir, tmp_path):
    teacher_run, _ = lora_context_run
    out = tmp_path / "full"
    result = tune(_fast(tiny_model_dir, "full", teacher=str(teacher_run), loss="forward_kl",
                        on_policy=1.0, max_new_tokens=3, spectra_vs_teacher=True),
                  out=out, progress=False)  # fmt: skip
    _check_folder(out, result.metrics)
    assert "spectune run" in result.metrics.data["teacher"]
    # the student's layers against the teacher's (scale collapse): every matrix matched
    spectra = result.metrics.after.extras["spectra_vs_teacher"]
    assert spectra["n_matched"] >= 14 and len(spectra["layers"]) == spectra["n_matched"]
    assert all(math.isfinite(row["d_log_norm"]) for row in spectra["layers"])


# --------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
@pytest.mark.real_weights
def test_context_distillation_moves_the_embedded_model_towards_its_teacher(tmp_path):
    """Measured 2026-11-29 on 2 shared CPUs (load ~14, OMP_NUM_THREADS=1; 16 min in all, 554 s
    of training): teacher KL 0.931 -> 0.213 nats/token, token agreement 0.569 -> 0.804,
    answer agreement 0.000 -> 0.208, accuracy 0.000 -> 0.125, peak RSS (training, with the
    teacher) 2.97 GB."""
    from spectune.tuning.config import load_config

    config = load_config("configs/distill.yaml", [
        "data.n_train=160", "data.n_eval=24", "train.max_steps=16", "eval.latency_prompts=0",
        "eval.spectra=false", "eval.ppl_chars=1000"])  # fmt: skip
    m = tune(config, out=tmp_path / "distill", progress=False).metrics
    before, after = m.before.extras, m.after.extras
    print(json.dumps({"before": before, "after": after, "accuracy": [m.before.accuracy.accuracy,
                      m.after.accuracy.accuracy], "seconds": m.cost.train_seconds,
                      "peak_rss": m.cost.peak_rss_bytes}))  # fmt: skip
    assert after["teacher_kl"] < 0.8 * before["teacher_kl"]
    assert after["teacher_token_agreement"] > before["teacher_token_agreement"]
    assert after["teacher_agreement"] > before["teacher_agreement"]


# --------------------------------------------------------------------------- augment


def test_augment_writes_a_deduplicated_dolly_file_that_tune_reads(tiny_model_dir, tmp_path,
                                                                  capsys):  # fmt: skip
    from spectune.cli.main import main
    from spectune.data.instructions import load_instructions
    from spectune.tuning.objectives.sft import load_instruction_data

    out = tmp_path / "aug.jsonl"
    argv = ["augment", "--model", str(tiny_model_dir), "--out", str(out), "-n", "6",
            "--n-seeds", "16", "--max-new-tokens", "6", "--answer-tokens", "3",
            "--context", "Be terse.", "--seed", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    examples = load_instructions(out)
    side = json.loads((tmp_path / "aug.jsonl.json").read_text())
    assert 1 <= len(examples) == side["n_written"] <= 6
    assert side["n_attempts"] >= side["n_written"] + side["n_duplicates"] + side["n_empty"] - 1
    assert side["temperature"] == 0.8 and side["seed"] == 1 and side["context"] == "Be terse."
    assert sum(side["categories"].values()) == len(examples)
    keys = [ex.instruction.strip().lower() for ex in examples]
    assert len(set(keys)) == len(keys)
    # spectune tune reads it
    config = TuneConfig.from_dict(tiny_run_config(tiny_model_dir, data={"train": str(out)}))
    assert len(load_instruction_data(config).train) == len(examples) - 1
    # the same seed gives the same file; an existing one is replaced only with --overwrite
    first = out.read_text()
    assert main(argv) == 2 and out.read_text() == first
    assert main([*argv, "--overwrite"]) == 0 and out.read_text() == first
    assert side["spectune_augment"] == 1 and side["sha256"] == hashlib.sha256(
        out.read_bytes()).hexdigest()  # fmt: skip


def _dolly(path, n: int = 3):
    rows = [{"instruction": f"Add {i} and {i}.", "context": "", "response": str(2 * i),
             "category": "math"} for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_augment_never_replaces_the_seeds_or_a_file_it_did_not_write(tiny_model_dir, tmp_path,
                                                                     capsys):  # fmt: skip
    """Issue 20, case 2: --out equal to --seeds replaced the seeds; --out data/mydata replaced
    the user's data/mydata.json with the settings sidecar. Both are refused before any work,
    with and without --overwrite, and the files stay byte-identical."""
    from spectune.cli.main import main

    seeds = _dolly(tmp_path / "seeds.jsonl")
    mine = tmp_path / "mydata.json"
    mine.write_text('{"my": "own settings"}\n')
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}]))
    before = {p: p.read_bytes() for p in (seeds, mine, alpaca)}
    base = ["augment", "--model", str(tiny_model_dir), "-n", "2", "--no-progress"]
    cases = [
        (["--seeds", str(seeds), "--out", str(seeds)], f"--out {seeds} is the seeds file"),
        (["--seeds", str(alpaca), "--out", str(tmp_path / "alpaca")],
         f"its settings file {alpaca} is the seeds file"),
        (["--seeds", str(seeds), "--out", str(tmp_path / "mydata")],
         f"{mine} is not the settings file spectune augment writes for it, so it was not "
         "written by spectune augment; spectune never replaces a file it did not write"),
    ]  # fmt: skip
    for args, message in cases:
        for extra in ([], ["--overwrite"]):
            assert main([*base, *args, *extra]) == 2, (args, extra)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("spectune: error: "), err
            assert message in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpaca.json", "mydata.json",
                                                          "seeds.jsonl"]  # fmt: skip


def test_augment_overwrite_replaces_only_an_unchanged_pair_it_wrote(tmp_path):
    """--overwrite needs spectune's sidecar with the file's SHA-256: an edited file, a file
    without a sidecar or a sidecar of another file are the user's."""
    from spectune.data.augment import AugmentInfo, check_output, write_augmented
    from spectune.data.examples import InstructionExample

    out = tmp_path / "aug.jsonl"
    info = AugmentInfo("context", "tasks", 3, 2)
    ex = [InstructionExample("Say hi.", "hi", category="greet")]
    write_augmented(out, ex, info)
    with pytest.raises(SpectuneError, match=r"already exists \(spectune augment wrote it\); "
                       "pass --overwrite"):  # fmt: skip
        write_augmented(out, ex, info)
    write_augmented(out, [*ex, InstructionExample("Say bye.", "bye")], info, overwrite=True)
    assert len(out.read_text().splitlines()) == 2
    side = json.loads((tmp_path / "aug.jsonl.json").read_text())
    assert "previous_sha256" not in side  # only while the file is being replaced
    # an interruption between the sidecar and the file: the old file is still replaceable
    old = out.read_bytes()
    (tmp_path / "aug.jsonl.json").write_text(json.dumps({**side, "sha256": "0" * 64,
                                             "previous_sha256": side["sha256"]}))  # fmt: skip
    assert check_output(out, overwrite=True) == out
    (tmp_path / "aug.jsonl.json").write_text(json.dumps(side))
    out.write_bytes(old + b'{"instruction": "mine", "response": "mine"}\n')  # edited by hand
    edited = out.read_bytes()
    with pytest.raises(SpectuneError, match=r"changed since spectune augment wrote it"):
        write_augmented(out, ex, info, overwrite=True)
    assert out.read_bytes() == edited
    (tmp_path / "aug.jsonl.json").unlink()
    with pytest.raises(SpectuneError, match=r"has no settings file aug.jsonl.json beside it"):
        write_augmented(out, ex, info, overwrite=True)
    other = tmp_path / "other.jsonl"
    write_augmented(other, ex, info)
    (tmp_path / "other.jsonl.json").rename(tmp_path / "aug.jsonl.json")  # another file's
    with pytest.raises(SpectuneError, match=r"is not the settings file spectune augment writes"):
        write_augmented(out, ex, info, overwrite=True)
    assert out.read_bytes() == edited
    link = tmp_path / "link.jsonl"
    link.symlink_to(other)
    with pytest.raises(SpectuneError, match=r"link.jsonl is a symbolic link"):
        check_output(link, overwrite=True)


def test_augment_refuses_a_teacher_with_another_vocabulary_before_writing(
    tiny_model_dir, tmp_path, smol_tokenizer
):
    from spectune.cli.main import main

    small = save_tiny_llama(tmp_path / "small", 1000)
    smol_tokenizer.save_pretrained(small)
    out = tmp_path / "aug.jsonl"
    assert main(["augment", "--model", str(tiny_model_dir), "--teacher", str(small), "--out",
                 str(out), "-n", "2", "--no-progress"]) == 2  # fmt: skip
    assert not out.exists()
