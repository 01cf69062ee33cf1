"""Judging what was already trained (``spectune judge``): a model, a peft adapter made by peft
or another tool, or a spectune run's adapter, on the yardsticks and settings of ``tune``.

:func:`judge_model` runs the recipe's judging and watch phases without training (it lives
with the studies, above :mod:`spectune.tuning`, whose config, methods and phases it uses):

- the config is a :class:`~spectune.tuning.config.TuneConfig` (its ``data``, ``eval``,
  ``model_dtype``, ``attn_implementation``, ``seed`` and ``objective`` are what count); for a
  spectune run it is the run's own ``config.yaml``, with the paths its ``inputs.json`` pinned,
  so the held-out questions and the judge settings are the run's;
- with an adapter, the base model (MODEL) is judged first as "before", through the judge cache
  (:func:`~spectune.tuning.judging.judge_base_model`: the very numbers a ``tune`` run on that
  model and data read), then the model with the adapter as "after"; learning and forgetting
  are their differences, the adapter's spectra are analyzed beside the base's with its
  intruder dimensions and the base-against-tuned comparison
  (:func:`~spectune.tuning.watching.watch_update`);
- MODEL alone (a base or merged model) is judged once, as "after", with no "before".

A peft adapter is checked against MODEL before any weight is read: each adapted module must
exist in MODEL with the shapes the adapter's matrices need, a base folder named in
``adapter_config.json`` must have MODEL's architecture, and a base named by a hub id must
carry MODEL's name when MODEL's name is known. A spectune run's adapter is loaded by the
run's method (:meth:`~spectune.tuning.methods.base.Method.load`), so every method's adapter
(FROG's, a full fine-tune's, QLoRA's 4-bit base) is judged as the run judged it.

The folder written is run-like (``run.json`` of kind ``judge``): ``config.yaml``,
``before.json`` (with an adapter), ``predictions.jsonl``, ``spectra/``, ``plots/``,
``metrics.json`` (:class:`~spectune.results.metrics.RunMetrics`: what ``spectune report``,
the sweep tables, ``advise`` and ``compare`` read) and ``report.html``. Nothing was trained:
the cost of a spectune run is its own (read from its ``metrics.json``), otherwise the adapter's
size and parameter count with no training time.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spectune._io import write_json, write_text
from spectune.errors import SpectuneError
from spectune.judging import cache as judge_cache
from spectune.judging.all import judge
from spectune.models import hardware
from spectune.models.loading import DEFAULT_MODEL_NAME, check_model, resolve_model_dir
from spectune.models.templates import apply_template, fit_embeddings
from spectune.results.metrics import (
    Cost,
    Forgetting,
    Judging,
    Learning,
    RunInfo,
    RunMetrics,
    SpectraSummary,
    Training,
)
from spectune.results.runfolder import CONFIG, RunFolder
from spectune.tuning import pins as P
from spectune.tuning.checks import load_run_data
from spectune.tuning.config import TuneConfig, load_config, yaml_dump
from spectune.tuning.judging import (
    base_loader,
    correct,
    judge_base_model,
    judge_settings,
    predictions_jsonl,
)
from spectune.tuning.methods import get_method
from spectune.tuning.methods.base import BuildContext, Built, SpectraInput, count_parameters
from spectune.tuning.run import TuneResult

#: the kind of a judge folder's ``run.json``
KIND = "judge"
#: what marks a peft adapter folder
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
#: config fields two models must share for an adapter of one to fit the other
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
                "num_attention_heads", "num_key_value_heads", "vocab_size")  # fmt: skip


@dataclass
class Judged:
    """What ``spectune judge`` judges.

    Attributes:
        kind: ``"model"`` (MODEL alone: a base or merged model), ``"peft"`` (a peft adapter
            folder made by peft or another tool) or ``"run"`` (a spectune run's adapter).
        label: the method column of tables: the run's method, ``peft-<type>`` or ``model``.
        adapter: the adapter folder (None for ``"model"``).
        run_dir: the spectune run folder (``"run"``).
        peft_config: ``adapter_config.json`` (a peft adapter, or a LoRA-family run's).
    """

    kind: str
    label: str
    adapter: Path | None = None
    run_dir: Path | None = None
    peft_config: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "run":
            return f"the adapter of spectune run {self.run_dir} ({self.label})"
        if self.kind == "peft":
            return f"peft adapter {self.adapter} ({self.peft_config.get('peft_type')})"
        return "the model itself"


def _read_peft_config(folder: Path) -> dict[str, Any]:
    path = folder / PEFT_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SpectuneError(f"--adapter {folder}: {path.name} cannot be read ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("peft_type"), str):
        raise SpectuneError(
            f"--adapter {folder}: {path.name} has no peft_type; it is not a peft adapter's config"
        )
    if not any((folder / name).is_file() for name in PEFT_WEIGHTS):
        raise SpectuneError(
            f"--adapter {folder}: no {' or '.join(PEFT_WEIGHTS)} beside {PEFT_CONFIG}; copy the "
            "adapter's weights file into it"
        )
    return data


def find_adapter(adapter: str | os.PathLike[str]) -> Judged:
    """What ``--adapter`` names: a spectune run folder (or its ``adapter/``), or a peft
    adapter folder.

    Raises:
        SpectuneError: not a folder, neither a peft adapter nor a spectune run, an incomplete
            run, a run without ``adapter/``.
    """
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise SpectuneError(f"--adapter {adapter}: no such folder; pass a peft adapter folder")
    run_dir = path.parent if path.name == "adapter" and P.is_run_folder(path.parent) else path
    if P.is_run_folder(run_dir):
        marker = RunFolder(run_dir).read_marker() or {}
        if marker.get("kind", "tune") != "tune" or marker.get("status") != "complete":
            raise SpectuneError(
                f"--adapter {run_dir} is a spectune {marker.get('kind', 'tune')} folder with "
                f"status {marker.get('status')!r}, not a complete tune run; finish it (spectune "
                "tune --resume) or pass a peft adapter folder"
            )
        if not (run_dir / "adapter").is_dir():
            raise SpectuneError(
                f"--adapter {run_dir}: the run has no adapter/; judge its merged/ model as MODEL"
            )
        method = load_config(run_dir / CONFIG, foreign_sections="drop").method
        peft = run_dir / "adapter" / PEFT_CONFIG
        cfg = _read_peft_config(run_dir / "adapter") if peft.is_file() else {}
        return Judged("run", method, run_dir / "adapter", run_dir, cfg)
    if not (path / PEFT_CONFIG).is_file():
        raise SpectuneError(
            f"--adapter {adapter} is neither a peft adapter folder (no {PEFT_CONFIG}) nor a "
            "spectune run folder (run.json and config.yaml); pass the folder that "
            "save_pretrained wrote"
        )
    cfg = _read_peft_config(path)
    return Judged("peft", f"peft-{cfg['peft_type'].lower()}", path, None, cfg)


# --------------------------------------------------------------------------- base checks


def model_name(given: str, model_dir: Path) -> str | None:
    """MODEL's name where it is known: the embedded model's, a hub id's, a hub cache folder's
    (``models--Org--Name``), or the ``_name_or_path`` its config.json records; None
    otherwise."""
    if given == "default":
        return DEFAULT_MODEL_NAME
    if not Path(given).expanduser().exists() and not given.endswith(".gguf"):
        return given.rstrip("/").rsplit("/", 1)[-1]  # a hub id
    for part in reversed(model_dir.resolve().parts):
        if part.startswith("models--"):
            return part.rsplit("--", 1)[-1]
    try:
        recorded = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = recorded.get("_name_or_path") if isinstance(recorded, dict) else None
    if isinstance(name, str) and name and not Path(name).is_absolute():
        return name.rstrip("/").rsplit("/", 1)[-1]
    return None


def _shape_fields(model_dir: Path) -> dict[str, Any]:
    from spectune.models.loading import read_model_config

    cfg = read_model_config(model_dir)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return {k: getattr(text, k, None) for k in SHAPE_FIELDS}


def _architecture_problem(a: Path, b: Path) -> str | None:
    """How two model folders' architectures differ (None: same shapes)."""
    fa, fb = _shape_fields(a), _shape_fields(b)
    diff = [f"{k} {fa[k]} vs {fb[k]}" for k in SHAPE_FIELDS if fa[k] != fb[k]]
    return ", ".join(diff[:3]) or None


def _adapter_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a peft adapter's safetensors file (header only); empty for a
    ``.bin`` file."""
    path = folder / PEFT_WEIGHTS[0]
    if not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise SpectuneError(f"--adapter {folder}: {path.name} cannot be read ({exc})") from None


def _lora_shape_problem(folder: Path, model_dir: Path) -> str | None:
    """The first LoRA matrix of the adapter that does not fit MODEL (a module it lacks, or
    other in / out features), or None."""
    from spectune.tuning.methods.base import meta_model

    shapes = _adapter_shapes(folder)
    pairs = [(k, s) for k, s in shapes.items() if ".lora_A." in k or ".lora_B." in k]
    if not pairs:
        return None
    modules = dict(meta_model(model_dir).named_modules())
    for key, shape in pairs:
        name = key.split(".lora_")[0].removeprefix("base_model.model.")
        module = modules.get(name)
        if module is None:
            return f"it adapts {name}, which MODEL does not have"
        want_in, want_out = (
            getattr(module, "in_features", None),
            getattr(module, "out_features", None),
        )
        if want_in is None or len(shape) != 2:
            continue
        if ".lora_A." in key and shape[1] != want_in:
            return f"its {key} reads {shape[1]} features, MODEL's {name} has {want_in}"
        if ".lora_B." in key and shape[0] != want_out:
            return f"its {key} writes {shape[0]} features, MODEL's {name} has {want_out}"
    return None


def check_base(judged: Judged, given: str, model_dir: Path) -> list[str]:
    """Refuse an adapter whose base is not MODEL (one line naming both); notes otherwise.

    Raises:
        SpectuneError: the run's base model or the folder ``adapter_config.json`` names has
            another architecture, an adapted module is missing from MODEL or has other
            shapes, or a base named by a hub id has another name than MODEL's.
    """
    if judged.adapter is None:
        return []
    named = judged.peft_config.get("base_model_name_or_path") or None
    if judged.kind == "run":
        named, base_dir = P.run_base_model(judged.run_dir, f"--adapter {judged.run_dir}")
    else:
        base_dir = Path(named).expanduser() if named and Path(named).expanduser().is_dir() else None
    notes: list[str] = []

    def refuse(why: str) -> SpectuneError:
        return SpectuneError(
            f"--adapter {judged.adapter} was trained on {named or 'another model'}, not on MODEL "
            f"{given} ({model_dir}): {why}; pass the base model it was trained on as MODEL"
        )

    if base_dir is not None and (base_dir / "config.json").is_file():
        if base_dir.resolve() != model_dir.resolve():
            problem = _architecture_problem(base_dir, model_dir)
            if problem:
                raise refuse(f"another architecture ({problem})")
            notes.append(
                f"MODEL {model_dir} is another folder than the adapter's base {base_dir}, with "
                "the same architecture; the adapter was judged on MODEL"
            )
    elif named and judged.kind == "peft":
        mine = model_name(given, model_dir)
        theirs = str(named).rstrip("/").rsplit("/", 1)[-1]
        if mine is not None and mine.lower() != theirs.lower():
            raise refuse(f"the adapter names base {theirs!r}, MODEL is {mine!r}")
        if mine is None:
            notes.append(f"the adapter's base {named!r} could not be checked by name against MODEL")
    problem = _lora_shape_problem(judged.adapter, model_dir)
    if problem:
        raise refuse(problem)
    return notes


# --------------------------------------------------------------------------- the config


def judge_config(
    model: str,
    judged: Judged,
    config: TuneConfig | str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> TuneConfig:
    """The judging config: ``config`` (a TuneConfig, or a YAML file) or, for a spectune run,
    the run's own ``config.yaml`` with the inputs its ``inputs.json`` pinned (the same held-out
    questions and judge settings), or the defaults; then ``overrides`` (``key=value``, as
    ``spectune tune`` takes them) and ``model`` set to MODEL."""
    if isinstance(config, TuneConfig):
        cfg = copy.deepcopy(config)
        if overrides:
            from spectune.tuning.config import apply_overrides

            cfg = TuneConfig.from_dict(apply_overrides(cfg.to_dict(), list(overrides)))
    elif config is not None:
        cfg = load_config(config, list(overrides))
    elif judged.kind == "run":
        saved = judged.run_dir / CONFIG
        cfg = load_config(saved, list(overrides), foreign_sections="drop")
        cfg = P.pinned_config(cfg, P.read(judged.run_dir, quiet=True))
    else:
        cfg = load_config(None, list(overrides))
    cfg.model = str(model)
    return cfg


# --------------------------------------------------------------------------- judging


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def load_judged(
    judged: Judged,
    config: TuneConfig,
    model_dir: Path,
    workdir: Path,
    progress: bool,
    tokenizer: Any = None,
) -> tuple[Any, SpectraInput | None, int, int]:
    """The model to judge, in eval mode on the compute device, what the spectral engine reads
    of its adapter (None: nothing, or a kind it cannot read), and the adapter's parameter
    count and the model's.

    Raises:
        SpectuneError: peft cannot put the adapter on MODEL (its message, naming both).
    """
    if judged.kind == "run":
        run_cfg = P.pinned_config(
            load_config(judged.run_dir / CONFIG, foreign_sections="drop"),
            P.read(judged.run_dir, quiet=True),
        )
        method = get_method(run_cfg.method)
        ctx = BuildContext(run_cfg, model_dir, workdir, progress)
        base, _ = method.load_base(ctx)
        if tokenizer is not None:
            fit_embeddings(base, tokenizer)  # the rows of a marker the run added as a token
        n_base = count_parameters(base)[1]
        model = hardware.to_compute_device(method.load(ctx, base, judged.adapter))
        model.eval()
        what = method.spectra(Built(model), ctx, judged.adapter)
        return model, what, count_parameters(model)[1] - n_base, n_base
    base = base_loader(model_dir, config, tokenizer)()
    n_base = count_parameters(base)[1]
    if judged.kind == "model":
        return base.eval(), None, 0, n_base
    from peft import PeftModel  # lazy: peft imports bitsandbytes, noisy on a CPU

    try:
        model = PeftModel.from_pretrained(base, judged.adapter)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise SpectuneError(
            f"--adapter {judged.adapter} does not fit MODEL {model_dir} "
            f"({' '.join(str(exc).split())[:200]}); pass the base model it was trained on"
        ) from None
    model.eval()
    lora = str(judged.peft_config.get("peft_type")).upper() == "LORA"
    what = SpectraInput(judged.adapter, peft=True) if lora else None
    return model, what, count_parameters(model)[1] - n_base, n_base


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _metrics(
    out: Path,
    folder: RunFolder,
    judged: Judged,
    config: TuneConfig,
    model_dir: Path,
    data: Any,
    before: Judging | None,
    after: Judging,
    verdicts: tuple[list[bool] | None, list[bool]],
    counts: tuple[int, int],
    summary: dict[str, Any] | None,
    notes: list[str],
) -> RunMetrics:
    """The judge folder's :class:`RunMetrics`: a spectune run's cost, training and settings
    are its own; otherwise nothing was trained here."""
    import torch

    from spectune.tuning.collect import versions

    latency = (
        None if after.latency is None else after.latency.ms_per_token,
        None if before is None or before.latency is None else before.latency.ms_per_token,
    )
    trained = RunMetrics.load(judged.run_dir) if judged.kind == "run" else None
    adapter, total = counts
    if trained is not None:
        cost = replace(trained.cost, ms_per_token=latency[0], ms_per_token_before=latency[1])
        training, settings = trained.training, trained.settings
        extras, validation = dict(trained.method_extras), trained.validation
    else:
        cost = Cost(
            0.0, 0.0, 0, 0, None, 0, False, adapter, total,
            100.0 * adapter / total if total else 0.0,
            0 if judged.adapter is None else _folder_bytes(judged.adapter),
            latency[0], latency[1],
        )  # fmt: skip
        training, settings, extras, validation = Training(None, None, 0, None), {}, {}, None
    extras["judged"] = {
        "what": judged.describe(),
        "model": config.model,
        "adapter": None if judged.adapter is None else str(judged.adapter),
        "base_model_name_or_path": judged.peft_config.get("base_model_name_or_path"),
    }
    return RunMetrics(
        run=RunInfo(
            name=out.name,
            method=judged.label,
            objective=config.objective,
            model=config.model,
            model_dir=str(model_dir),
            seed=config.seed,
            device=str(hardware.compute_device()),
            threads=torch.get_num_threads(),
            started=folder.state.get("started"),
            versions=versions(),
        ),
        config=config.to_dict(),
        settings=settings,
        data=dict(data.info),
        before=before,
        after=after,
        learning=Learning.compare(
            before, after, correct_before=verdicts[0], correct_after=verdicts[1]
        ),
        forgetting=Forgetting.compare(before, after),
        cost=cost,
        training=training,
        spectra=None if summary is None else SpectraSummary.from_summary(summary),
        method_extras=extras,
        notes=notes,
        validation=validation,
    )


def _take_folder(out: Path, overwrite: bool) -> tuple[RunFolder, bool]:
    """The judge folder, checked (nothing created): a folder of another kind or of the user's
    is refused; an interrupted judge folder is judged again; a complete one needs
    ``overwrite``."""
    folder = RunFolder(out, KIND)
    marker = folder.read_marker() if out.is_dir() else None
    again = overwrite or (
        marker is not None and marker.get("kind") == KIND and marker.get("status") != "complete"
    )
    folder.check(overwrite=again)
    return folder, again


def _check_outside(out: Path, judged: Judged, model_dir: Path) -> None:
    """Refuse an output folder inside what is judged (its files would change under it)."""
    real = out.resolve()
    for what, path in (("MODEL", model_dir), ("--adapter", judged.run_dir or judged.adapter)):
        if path is not None and (real == path.resolve() or path.resolve() in real.parents):
            raise SpectuneError(f"--out {out} is inside {what} {path}; pick a folder outside it")


def judge_model(
    model: str = "default",
    *,
    out: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None = None,
    config: TuneConfig | str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> TuneResult:
    """Judge a model, or a model with an adapter, on ``tune``'s yardsticks and settings, and
    write a run-like folder (see the module docstring).

    Args:
        model: MODEL, as ``model:`` takes it (``default``, a folder...); a merged model is a
            model.
        out: the results folder (new, empty, or an earlier ``spectune judge`` output).
        adapter: a peft adapter folder (made by peft or another tool), or a spectune run
            folder (or its ``adapter/``); None judges MODEL alone (no "before").
        config: a :class:`TuneConfig` or a YAML file (its ``data`` / ``eval`` settings);
            default the run's own for a spectune run, else the defaults.
        overrides: ``key=value`` items, as ``spectune tune`` takes them.
        overwrite: replace a complete earlier judge output in ``out``.
        progress: progress bars and status lines on stderr.

    Returns:
        A :class:`~spectune.tuning.run.TuneResult`: the folder and its metrics.

    Raises:
        SpectuneError: MODEL or the adapter cannot be used, the adapter's base is not MODEL,
            the output folder holds files that are not a judge output, bad config or data.
    """
    out = Path(out)
    judged = find_adapter(adapter) if adapter is not None else Judged("model", "model")
    cfg = judge_config(model, judged, config, overrides)
    cfg.output_dir = str(out)
    model_dir = resolve_model_dir(cfg.model)
    tokenizer = check_model(model_dir, cfg.data.template)
    # the run's chat template and end-of-turn marker (data.template, data.end_of_turn): a
    # marker the run added as a token is added again, the same id, and fitted into the base
    notes = apply_template(tokenizer, cfg.data.template, cfg.data.end_of_turn)
    notes += check_base(judged, cfg.model, model_dir)
    _check_outside(out, judged, model_dir)
    data = load_run_data(cfg)
    folder, again = _take_folder(out, overwrite)
    if cfg.eval.before and judged.adapter is not None:
        judge_cache.check_writable()
    folder.open(overwrite=again)
    with folder:
        try:
            metrics = _judge(folder, judged, cfg, model_dir, tokenizer, data, notes, progress)
        except Exception as exc:  # an interruption (KeyboardInterrupt) stays "running"
            folder.fail(f"{type(exc).__name__}: {exc}")
            raise
    return TuneResult(out, metrics)


def _judge(
    folder: RunFolder,
    judged: Judged,
    config: TuneConfig,
    model_dir: Path,
    tokenizer: Any,
    data: Any,
    notes: list[str],
    progress: bool,
) -> RunMetrics:
    """The judge folder's work: before (with an adapter), after, spectra, files."""
    from spectune.report.files import write_results
    from spectune.report.pages.run import write_run_report
    from spectune.tuning.collect import write_run_plots, write_spectra_files

    out = folder.path
    folder.own(CONFIG)
    write_text(
        out / CONFIG,
        f"# spectune judge {config.model} --out {out} (resolved config)\n"
        + yaml_dump(config.to_dict()),
    )
    before, before_answers = None, None
    if judged.adapter is not None and config.eval.before:
        result = judge_base_model(model_dir, tokenizer, data.heldout, config, progress=progress)
        before_answers = list(result.get("predictions") or [])
        result["extras"] = {}
        before = Judging.from_dict(result)
        folder.own("before.json")
        write_json(out / "before.json", result)
    notes = [f"judged by spectune judge: {judged.describe()} on {model_dir}; nothing was "
             "trained here", *notes]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="spectune-judge-") as tmp:
        model, what, n_adapter, n_total = load_judged(
            judged, config, model_dir, Path(tmp), progress, tokenizer
        )
        _say(f"judging {judged.describe()} on {model_dir}", progress)
        result = judge(model, tokenizer, data.heldout, progress=progress, **judge_settings(config))
        answers = list(result["predictions"])
        result["extras"] = {}
        after = Judging.from_dict(result)
        folder.own("predictions.jsonl")
        write_text(
            out / "predictions.jsonl", predictions_jsonl(data.heldout, before_answers, answers)
        )
        details = summary = comparison = None
        if judged.adapter is not None and config.eval.spectra:
            if what is None:
                notes.append(f"spectra left out: spectune reads no {judged.label} adapter")
            else:
                from spectune.tuning.watching import watch_update

                folder.own("spectra")
                details, summary, comparison = watch_update(
                    what, model_dir, config, progress=progress, notes=notes
                )
                write_results(details, summary, out / "spectra", plots=False)
    verdicts = (
        correct(data.heldout, before_answers) if before_answers else None,
        correct(data.heldout, answers),
    )
    metrics = _metrics(
        out, folder, judged, config, model_dir, data, before, after, verdicts,
        (n_adapter, n_total), summary, notes,
    )  # fmt: skip
    folder.own("plots")
    write_run_plots(out / "plots", metrics, [], details)
    if details is not None:
        write_spectra_files(out / "spectra", details, comparison)
    folder.own("metrics.json")
    metrics.save(out)
    folder.own("report.html")
    write_run_report(out)
    folder.finish()
    return metrics


__all__ = [
    "KIND",
    "Judged",
    "check_base",
    "find_adapter",
    "judge_config",
    "judge_model",
    "load_judged",
    "model_name",
]
