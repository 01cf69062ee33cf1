"""The demo: LoRA, DoRA, QLoRA and FROG at matched budgets on the embedded model.

``spectune demo`` (``make demo``) fine-tunes SmolLM2-135M-Instruct on the bundled task set
with each method, every one with the same trainable-parameter count (FROG's budget G is set
so that G x its target weights equals LoRA's r (in + out) over the same all-linear targets;
DoRA adds its magnitude vectors on top), then judges learning against forgetting, reads the
adapters' spectra against the base model's, and writes one comparison folder
(:mod:`spectune.studies.sweep` layout, written by :mod:`spectune.studies.runner`) with
``report.html``. The base model's own spectra (every matrix, WeightWatcher metrics) go to
``base_spectra/``.

The settings below are the demo's whole recipe; ``configs/demo.yaml`` holds the same settings
as a file (``spectune demo --config configs/demo.yaml`` after editing it; a test keeps the
two equal), and it works for ``spectune tune`` / ``sweep`` too.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spectune.models.loading import resolve_model_dir
from spectune.report.files import write_results
from spectune.results.runfolder import RunFolder
from spectune.studies.runner import RunOutcome
from spectune.studies.sweep import run_comparison
from spectune.tuning.config import TuneConfig, apply_overrides
from spectune.tuning.methods import get_method
from spectune.tuning.methods.base import BuildContext
from spectune.watch import analyze, summarize

#: The demo's base config (every method starts from it).
DEMO_CONFIG: dict[str, Any] = {
    "model": "default",
    "seed": 0,
    "target_modules": "all-linear",
    "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05},
    # system "": an empty system turn instead of SmolLM2's default one: 36 instead of 52
    # tokens per example, a third less compute in training and judging alike
    "data": {"train": "tasks", "n_train": 2000, "n_eval": 64, "max_length": 96, "system": ""},
    "eval": {
        "max_new_tokens": 12,
        "batch_size": 32,
        "ppl_chars": 4000,
        "ppl_window": 256,
        "ppl_stride": 192,
        "latency_tokens": 16,
        "latency_prompts": 2,
    },
    "train": {
        "max_steps": 25,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "linear",
        "warmup_steps": 3,
        "logging_steps": 5,
        "save_steps": 25,
        "save_total_limit": 1,
    },
}

#: Per-method changes to :data:`DEMO_CONFIG` (data, not dispatch: full fine-tuning's learning
#: rate is 50x lower, as its best rate is far below LoRA's). Budgets are matched at run time.
METHOD_OVERRIDES: dict[str, list[str]] = {"full": ["train.learning_rate=2e-5"]}

#: the method whose trainable count the others are matched to
REFERENCE = "lora"

DEMO_METHODS = ("lora", "dora", "qlora", "frog")


def demo_runs(
    methods: tuple[str, ...],
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> list[tuple[str, TuneConfig, dict[str, Any]]]:
    """The demo's runs: one config per method, each at the reference method's (LoRA's)
    trainable count where the method can match a budget (:meth:`Method.match_budget`).

    Args:
        methods: the methods to compare.
        overrides: ``key=value`` changes for every run.
        base: raw base config (default :data:`DEMO_CONFIG`).
    """
    base = apply_overrides(
        copy.deepcopy(DEMO_CONFIG if base is None else base), list(overrides or [])
    )
    named = [(m, m, METHOD_OVERRIDES.get(m, [])) for m in methods]
    return [
        (name, config, {"method": name})
        for name, config in matched_configs(named, base, source="demo")
    ]


def matched_configs(
    variants: Sequence[tuple[str, str, list[str]]],
    base: dict[str, Any],
    *,
    match: bool = True,
    source: str = "demo",
) -> list[tuple[str, TuneConfig]]:
    """``(name, config)`` per ``(name, method, key=value overrides)``: the base config with
    the method and its overrides, then (``match``) set to the reference method's (LoRA's)
    trainable count under the base config where the method can match a budget
    (:meth:`Method.match_budget`).

    Raises:
        SpectuneError: an override the config refuses (the config's own message, after
            ``source (name)``).
    """
    model_dir = resolve_model_dir(base.get("model", "default"))
    reference = _budget(REFERENCE, base, model_dir) if match else None
    out = []
    for name, method, items in variants:
        label = f"{source} ({name})"
        config = TuneConfig.from_dict(
            apply_overrides(base, [f"method={method}", *items]),
            source=label,
            foreign_sections="drop",
        )
        if reference is not None:
            changes = get_method(method).match_budget(_context(config, model_dir), reference)
            if changes:
                config = TuneConfig.from_dict(
                    apply_overrides(config.to_dict(), changes), source=label
                )
        out.append((name, config))
    return out


def trainable_count(config: TuneConfig) -> int | None:
    """The trainable count of a run config from the model's shapes (no weights); None when
    its method cannot count it so."""
    from spectune.tuning.methods.base import meta_model

    model_dir = resolve_model_dir(config.model)
    return get_method(config.method).trainable_count(
        _context(config, model_dir), meta_model(model_dir)
    )


def _context(config: TuneConfig, model_dir: Path) -> BuildContext:
    return BuildContext(config, model_dir, Path(tempfile.gettempdir()), progress=False)


def _budget(method: str, base: dict[str, Any], model_dir: Path) -> int:
    """The trainable count of ``method`` under the base config, from the shapes (no weights):
    the reference the others are matched to."""
    from spectune.errors import SpectuneError
    from spectune.tuning.methods import get_method
    from spectune.tuning.methods.base import meta_model

    config = TuneConfig.from_dict(
        apply_overrides(base, [f"method={method}"]), source="demo", foreign_sections="drop"
    )
    count = get_method(method).trainable_count(_context(config, model_dir), meta_model(model_dir))
    if count is None:
        raise SpectuneError(
            f"demo: method {method!r} cannot count its trainable parameters "
            "from the model's shapes; pick another reference method"
        )
    return count


def _short(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def write_base_spectra(
    out: Path, model: str = "default", *, progress: bool = True
) -> dict[str, Any]:
    """The base model's spectra (every matrix) into ``out`` with the usual figures and its
    correlation flow (``flow.csv``)."""
    folder = resolve_model_dir(model)
    details = analyze(folder, precision="float32", progress=progress)
    summary = summarize(details)
    write_results(details, summary, out, plots=True, source=folder, flow=True)
    return summary


def demo(
    out: str | Path = "results/demo",
    *,
    methods: tuple[str, ...] = DEMO_METHODS,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> list[RunOutcome]:
    """Run the demo comparison into ``out``; returns one
    :class:`~spectune.studies.runner.RunOutcome` per method.

    ``base`` replaces :data:`DEMO_CONFIG` (e.g. ``configs/demo.yaml`` edited); ``overrides``
    change every run.
    """
    runs = demo_runs(methods, overrides, base)
    first = runs[0][1]
    notes = [
        "before = the float32 base model; 4-bit methods' forgetting includes quantization",
        f"matched budgets: every method that can set its trainable count is set to "
        f"{REFERENCE}'s at the base config's rank on {first.target_modules} (DoRA adds its "
        "magnitude vectors); full fine-tuning trains everything",
    ]
    settings = []
    for name, config, _ in runs:
        keys = get_method(config.method).settings
        if keys:
            values = ", ".join(f"{col}={_short(config.get(key))}" for col, key in keys.items())
            settings.append(f"{name} {values}")
    if settings:
        notes.append("settings: " + "; ".join(settings))
    meta = {"base_config": first.to_dict(), "methods": list(methods), "notes": notes}
    model = "SmolLM2-135M-Instruct" if first.model == "default" else Path(first.model).name
    title = f"spectune demo: {', '.join(methods)} at matched budgets on {model}"

    def base_spectra(folder: RunFolder) -> None:
        folder.own("base_spectra")
        if progress:
            print("base model spectra -> base_spectra/", file=sys.stderr, flush=True)
        write_base_spectra(Path(folder.path) / "base_spectra", first.model, progress=progress)

    return run_comparison(
        runs,
        out,
        kind="demo",
        title=title,
        meta=meta,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
        prelude=base_spectra,
    )


__all__ = [
    "DEMO_CONFIG",
    "DEMO_METHODS",
    "METHOD_OVERRIDES",
    "demo",
    "demo_runs",
    "matched_configs",
    "trainable_count",
    "write_base_spectra",
]
