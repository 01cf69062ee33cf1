"""The tune / sweep / report / demo commands on the tiny model: exit codes, files, errors."""

from __future__ import annotations

import csv
import json

import pytest

from spectune.cli.main import main
from spectune.tuning.config import yaml_dump, yaml_load
from tests.conftest import tiny_run_config

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def config_file(tiny_model_dir, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("# spectune tune tiny.yaml\n" + yaml_dump(tiny_run_config(tiny_model_dir)))
    return path


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tune_cli_with_overrides_then_refuses_a_second_run(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["tune", str(config_file), "r=2", "train.max_steps=2", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["schema_version"] == 2
    assert metrics["config"]["lora"]["r"] == 2 and metrics["training"]["global_step"] == 2
    assert metrics["settings"] == {"r": 2, "lora_alpha": 8, "lora_dropout": 0.0}
    printed = capsys.readouterr()
    assert "learning (held-out accuracy) vs forgetting" in printed.out
    assert "'loss'" not in printed.out and "Loading weights" not in printed.err  # --no-progress
    saved = yaml_load((out / "config.yaml").read_text(), "saved")
    assert saved["lora"]["r"] == 2 and saved["output_dir"] == str(out)
    assert main(["tune", str(config_file), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a complete run; pass --overwrite" in err
    # the report command re-renders the page of a run folder
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text().startswith("<!doctype html>")


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["method=lorra"],
            "unknown method 'lorra' (did you mean 'lora'?); registered methods: lora,",
        ),
        (["objective=sft2"], "unknown objective 'sft2'"),
        (["r=0"], "lora.r must be >= 1, got 0"),
        (
            ["frog.budget=0.1"],
            "the frog: section is read by method(s)/objective(s) frog, but this run's method is 'lora'",
        ),
        (["data.train=/nope/x.jsonl"], "dataset file /nope/x.jsonl does not exist"),
        (["target_modules=[nothing]"], "matches no module"),
        (["train.lerning_rate=1"], "did you mean: 'lerning_rate' -> 'learning_rate'"),
        (["--resume", "--overwrite"], "exclude each other"),
    ],
)
def test_tune_cli_bad_input_is_one_line_exit_2(args, message, config_file, tmp_path, capsys):
    code = main(["tune", str(config_file), *args, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("spectune: error: ") and err.count("\n") == 1 and message in err


def test_report_cli_on_a_folder_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds neither metrics.json" in capsys.readouterr().err


def test_sweep_cli_grid_writes_the_comparison_and_resumes(config_file, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", str(config_file), "train.max_steps=2", "--grid", "r=2,4", "method=lora,frog",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    rows = _rows(out / "results.csv")
    assert [r["name"] for r in rows] == ["r2_lora", "r2_frog", "r4_lora"]  # frog runs once
    assert all(r["status"] == "complete" for r in rows)
    assert [int(rows[0]["trainable"]), int(rows[2]["trainable"])] == [2 * 2048, 4 * 2048]
    meta = json.loads((out / "comparison.json").read_text())
    assert meta["kind"] == "sweep" and meta["skipped_duplicates"] == [
        {"setting": {"r": 4, "method": "frog"}, "same_as": "r2_frog"}
    ]
    md = (out / "results.md").read_text().splitlines()
    assert md[0].startswith("| name | method |") and len(md) == 2 + 3
    assert {p.name for p in (out / "plots").iterdir()} >= {"loss_curves.png", "accuracy.png",
                                                           "forgetting.png", "tradeoff.png"}  # fmt: skip
    assert (out / "report.html").is_file()
    for name in ("r2_lora", "r2_frog", "r4_lora"):
        assert json.loads((out / "runs" / name / "run.json").read_text())["status"] == "complete"
    # a second plain run is refused; --resume keeps the finished runs as they are
    assert main(args) == 2
    stamp = (out / "runs" / "r2_lora" / "metrics.json").stat().st_mtime_ns
    assert main([*args, "--resume"]) == 0
    assert (out / "runs" / "r2_lora" / "metrics.json").stat().st_mtime_ns == stamp
    assert _rows(out / "results.csv") == rows  # the same runs, read back from their metrics


def test_sweep_cli_bad_grid(config_file, tmp_path, capsys):
    code = main(["sweep", str(config_file), "--grid", "r=8,0", "--out", str(tmp_path / "s")])
    assert code == 2
    assert "grid setting {'r': 0}" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_shipped_demo_config_is_the_builtin_one():
    from spectune.studies.demo import DEMO_CONFIG

    text = (CONFIGS / "demo.yaml").read_text()
    assert yaml_load(text, "demo.yaml") == DEMO_CONFIG


def test_demo_budgets_match_lora(tiny_model_dir):
    from spectune.studies.demo import DEMO_CONFIG, demo_runs
    from spectune.tuning.methods.frog import total_trainable

    runs = demo_runs(("lora", "dora", "qlora", "frog"), [f"model={tiny_model_dir}"])
    assert [n for n, _, _ in runs] == ["lora", "dora", "qlora", "frog"]
    frog = runs[-1][1]
    targets = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3)  # all-linear weights, by hand
    lora = DEMO_CONFIG["lora"]["r"] * 2 * 1024  # r (in + out) summed over the 14 linear layers
    assert frog.section("frog").budget == pytest.approx(lora / targets)
    assert total_trainable(frog.section("frog").budget, targets) == lora
    assert [c.section("lora").r for _, c, _ in runs[:3]] == [8, 8, 8]  # LoRA's own r
    shira = demo_runs(("shira",), [f"model={tiny_model_dir}"])[0][1]
    assert shira.section("shira").r == 8  # SHiRA: r (in + out) per target, like LoRA
    assert all(c.training_arguments()["max_steps"] == DEMO_CONFIG["train"]["max_steps"]
               for _, c, _ in runs)  # fmt: skip


@pytest.mark.slow
def test_demo_cli_on_the_tiny_model(tiny_model_dir, smol_tokenizer, tmp_path, capsys):
    """The whole demo path (matched budgets, base spectra, four methods, comparison page)."""
    out = tmp_path / "demo"
    small = [f"model={tiny_model_dir}", "train.max_steps=2", "data.n_train=32", "data.n_eval=8",
             "eval.ppl_chars=300", "eval.ppl_window=64", "eval.ppl_stride=32",
             "eval.latency_prompts=1", "eval.latency_tokens=2", "eval.max_new_tokens=3"]  # fmt: skip
    assert main(["demo", "--out", str(out), "--no-progress", *small]) == 0
    rows = _rows(out / "results.csv")
    assert [r["method"] for r in rows] == ["lora", "dora", "qlora", "frog"]
    counts = {r["method"]: int(r["trainable"]) for r in rows}
    assert counts["lora"] == counts["qlora"] == counts["frog"] == 8 * 2048
    assert counts["dora"] == counts["lora"] + 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64)  # magnitudes
    import pandas as pd

    base = pd.read_csv(out / "base_spectra" / "details.csv")  # the tiny model's, not SmolLM2's
    assert len(base) == 15 and base["N"].max() == len(smol_tokenizer)  # 14 linear + embedding
    meta = json.loads((out / "comparison.json").read_text())
    assert (
        meta["title"]
        == f"spectune demo: lora, dora, qlora, frog at matched budgets on {tiny_model_dir.name}"
    )
    assert all(meta["notes"])
    assert (out / "report.html").is_file() and (out / "results.md").is_file()
    assert "demo finished in" in capsys.readouterr().out


def _tree(folder):
    """Every path under ``folder`` with its bytes (None for a folder, the target for a link)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = (f"-> {p.readlink()}" if p.is_symlink() else
                    None if p.is_dir() else p.read_bytes())  # fmt: skip
    return out


def test_a_marker_whose_files_is_a_string_is_refused_and_deletes_nothing(config_file, tmp_path,
                                                                          capsys):  # fmt: skip
    """Issue 20, case 4: "files": "adapter" was iterated letter by letter, so --overwrite
    deleted the files a, d, p, t, e, r. run.json is checked against its schema first."""
    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "w.bin").write_bytes(b"weights")
    for letter in "adptr" + "e":
        (out / letter).write_text(f"the user's {letter}")
    (out / "run.json").write_text(json.dumps({"spectune_run": 1, "kind": "tune",
                                              "status": "complete", "files": "adapter"}))  # fmt: skip
    before = _tree(out)
    for flags in (["--overwrite"], ["--resume"], []):
        code = main(["tune", str(config_file), "--out", str(out), "--no-progress", *flags])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"{out / 'run.json'}: field 'files' is 'adapter', not a list of plain file names" \
            in err  # fmt: skip
    assert _tree(out) == before


@pytest.mark.parametrize(
    "field,value",
    [("spectune_run", True), ("status", "done"), ("kind", ["tune"]), ("files", [3]),
     ("files", ["adapter/w.bin"]), ("tree", {"adapter": "w.bin"}), ("tree", {"adapter": ["../x"]}),
     ("tree", {"../up": ["x"]}), ("resumed", "yesterday"), ("prelude_done", "yes")],
)  # fmt: skip
def test_every_marker_field_is_type_checked(field, value, tmp_path):
    from spectune.errors import SpectuneError
    from spectune.results.runfolder import RunFolder

    marker = {"spectune_run": 1, "kind": "tune", "status": "complete", "files": ["run.json"],
              "tree": {}, field: value}  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps(marker))
    with pytest.raises(SpectuneError, match=rf"run.json: field '{field}' is .*; spectune acts on "
                       "no damaged run.json"):  # fmt: skip
        RunFolder(tmp_path).read_marker()


def test_resume_refuses_links_planted_in_the_run_folder(config_file, tmp_path, capsys,
                                                        monkeypatch):  # fmt: skip
    """Issue 20, case 7: plots/ and spectra/ planted as links to another folder in an
    interrupted run: --resume wrote 14 files into it. Now --resume (and --overwrite) refuse,
    naming the link, and nothing outside (or inside) changes."""
    from spectune.tuning import recipe

    out = tmp_path / "run"
    real = recipe.callbacks

    def interrupting(run):
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 3:
                    raise KeyboardInterrupt

        return [*real(run), Stop()]

    monkeypatch.setattr(recipe, "callbacks", interrupting)
    assert main(["tune", str(config_file), "--out", str(out), "--no-progress"]) == 130
    capsys.readouterr()
    monkeypatch.setattr(recipe, "callbacks", real)
    target = tmp_path / "elsewhere"
    for name in ("plots", "spectra"):
        (target / name).mkdir(parents=True)
        (out / name).symlink_to(target / name, target_is_directory=True)
    (target / "plots" / "theirs.txt").write_text("theirs")
    before, inside = _tree(target), _tree(out)
    for flags in (["--resume"], ["--overwrite"]):
        code = main(["tune", str(config_file), "--out", str(out), "--no-progress", *flags])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"output folder {out} holds a symbolic link (plots and 1 more); spectune never " \
            "writes or deletes through a link" in err  # fmt: skip
    assert _tree(target) == before and _tree(out) == inside
    # the links removed, the run resumes and completes
    for name in ("plots", "spectra"):
        (out / name).unlink()
    code = main(["tune", str(config_file), "--out", str(out), "--no-progress", "--resume"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert _tree(target) == before


def test_a_link_planted_while_the_run_trains_is_never_written_through(config_file, tmp_path,
                                                                      capsys, monkeypatch):  # fmt: skip
    """Case 7 while the run is live: a link planted at the next checkpoint's folder makes
    the run stop with one line naming it, before the Trainer writes through it."""
    from spectune.tuning import recipe

    out, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    real = recipe.callbacks

    def planting(run):
        from transformers import TrainerCallback

        class Plant(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    (out / "checkpoints" / "checkpoint-2").symlink_to(outside)

        return [*real(run), Plant()]

    monkeypatch.setattr(recipe, "callbacks", planting)
    assert main(["tune", str(config_file), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'checkpoints' / 'checkpoint-2'} is a symbolic link " \
        "inside the results folder" in err, err  # fmt: skip
    assert list(outside.iterdir()) == []
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
