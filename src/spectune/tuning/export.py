"""Exporting a finished run's model: the base with the method's update merged, as one GGUF file
(llama.cpp, Ollama).

:func:`export_gguf` takes a complete results folder of ``spectune tune``, builds the merged
model the way ``tune --merge`` does (``merged/`` when the run wrote it; otherwise the base
model, the method's adapter put on it with the method's ``load`` and merged with its
``merge``) and writes it with :func:`spectune.models.gguf_export.write_gguf`.

Where the file goes, and what is never replaced:

- by default ``model-<type>.gguf`` inside the run folder, recorded in its ``run.json`` as
  written by the run (the folder's lock held meanwhile); a file of that name the run did not
  write is refused, as every file in a results folder is;
- with ``out``: that file; an existing one is replaced only if spectune wrote it (it carries
  :data:`~spectune.models.gguf_export.MARKER_KEY`); a symbolic link there is refused.

Every write is atomic: an export that fails leaves the earlier file, if any, as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from spectune.errors import SpectuneError
from spectune.results.runfolder import RunFolder


def default_gguf_name(qtype: str) -> str:
    """The file name an export writes inside the run folder."""
    return f"model-{qtype}.gguf"


def _check_run(run_dir: Path) -> dict[str, Any]:
    """The run's marker, refusing a folder that holds no complete tune run with an adapter."""
    if not run_dir.is_dir():
        raise SpectuneError(f"{run_dir}: no such folder; pass a results folder of spectune tune")
    marker = RunFolder(run_dir).read_marker()
    if marker is None or not (run_dir / "config.yaml").is_file():
        raise SpectuneError(
            f"{run_dir} holds no spectune tune run (no run.json and config.yaml); pass a "
            "results folder of spectune tune"
        )
    if marker.get("kind", "tune") != "tune":
        raise SpectuneError(
            f"{run_dir} holds a spectune {marker.get('kind')} run, not a tune run; pass the "
            "folder of one run (a sweep's runs are in its sub-folders)"
        )
    if marker.get("status") != "complete":
        raise SpectuneError(
            f"{run_dir}: the run is not complete (status {marker.get('status')!r}); finish it "
            "with spectune tune --resume --out " + str(run_dir) + " before exporting"
        )
    if not (run_dir / "merged").is_dir() and not (run_dir / "adapter").is_dir():
        raise SpectuneError(
            f"{run_dir} has neither adapter/ nor merged/: there is no trained update to export"
        )
    return marker


def _merged_from_adapter(run_dir: Path, *, progress: bool) -> tuple[Any, Any]:
    """The base model with the run's adapter merged, and the tokenizer."""
    from transformers import PreTrainedModel

    from spectune.models.tokenizer import load_tokenizer
    from spectune.tuning.config import load_config
    from spectune.tuning.methods import get_method
    from spectune.tuning.methods.base import BuildContext, Built
    from spectune.tuning.pins import run_base_model

    cfg = load_config(run_dir / "config.yaml", foreign_sections="drop")
    method = get_method(cfg.method)
    _, model_dir = run_base_model(run_dir, f"run folder {run_dir}")
    adapter = run_dir / "adapter"
    has_tokenizer = (adapter / "tokenizer.json").is_file()
    tokenizer = load_tokenizer(adapter if has_tokenizer else model_dir)
    with tempfile.TemporaryDirectory(prefix="spectune-export-") as tmp:
        ctx = BuildContext(cfg, model_dir, Path(tmp), progress)
        base, _ = method.load_base(ctx)
        model = method.load(ctx, base, adapter)
        try:
            merged = method.merge(Built(model, tokenizer=tokenizer), ctx, adapter)
        except NotImplementedError:
            merged = None
    if not isinstance(merged, PreTrainedModel) or _has_adapter_layers(merged):
        raise SpectuneError(
            f"method {cfg.method!r} cannot merge its update into the base model's weights, so "
            f"the run {run_dir} has no plain model to write as GGUF; serve its adapter with the "
            "base model, or tune with a method that merges (lora, dora, full, frog...)"
        )
    return merged.float().eval(), tokenizer


def _has_adapter_layers(model: Any) -> bool:
    """Whether a model still holds peft adapter layers (a merge that did not happen)."""
    return any("lora_" in name or "base_layer" in name for name, _ in model.named_parameters())


def merged_model(run_dir: str | os.PathLike[str], *, progress: bool = False) -> tuple[Any, Any]:
    """The run's merged model (float32, eval mode) and its tokenizer.

    Raises:
        SpectuneError: not a complete tune run, its base model is gone, or its method cannot
            merge (named, with what to do instead).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from spectune.models.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    _check_run(run_dir)
    if (run_dir / "merged").is_dir():
        model = AutoModelForCausalLM.from_pretrained(run_dir / "merged", dtype=torch.float32)
        return model.eval(), load_tokenizer(run_dir / "merged")
    return _merged_from_adapter(run_dir, progress=progress)


def _check_destination(path: Path) -> None:
    """Refuse a link, a folder, or a file spectune did not write, at ``path``."""
    from spectune.models.gguf_export import written_by_spectune

    if path.is_symlink():
        raise SpectuneError(
            f"{path} is a symbolic link; spectune never writes through a link: remove it or "
            "pick another --out"
        )
    if path.is_dir():
        raise SpectuneError(f"--out {path} is a folder; give a file name ending in .gguf")
    if path.exists() and not written_by_spectune(path):
        raise SpectuneError(
            f"{path} exists and was not written by spectune export; spectune never replaces a "
            "file it did not write: move it or pick another --out"
        )


def export_gguf(
    run_dir: str | os.PathLike[str],
    *,
    qtype: str = "f16",
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Path:
    """Write a complete run's merged model as one GGUF file.

    Args:
        run_dir: a results folder of ``spectune tune`` (complete).
        qtype: ``f32``, ``f16`` or ``q8_0``.
        out: the file to write (default ``model-<qtype>.gguf`` in the run folder).
        progress: progress bars while the base model loads.

    Returns:
        The file written.

    Raises:
        SpectuneError: not a complete tune run; a method that cannot merge; an architecture,
            tensor type or tokenizer the writer does not know; a destination that is a link,
            a folder or a file spectune did not write (nothing is written).
    """
    from spectune.models.gguf_export import GGUF_TYPES, gguf_architecture, write_gguf

    run_dir = Path(run_dir)
    if qtype not in GGUF_TYPES:
        raise SpectuneError(f"--type {qtype!r} is not a GGUF type spectune writes; use one of "
                            f"{', '.join(GGUF_TYPES)}")  # fmt: skip
    _check_run(run_dir)
    inside = out is None
    path = run_dir / default_gguf_name(qtype) if inside else Path(out)
    if not inside and path.suffix != ".gguf":
        raise SpectuneError(f"--out {path}: give a file name ending in .gguf")
    if not inside:
        _check_destination(path)
    model, tokenizer = merged_model(run_dir, progress=progress)
    gguf_architecture(model.config)  # an unknown architecture is named before the folder is taken
    source = f"spectune run {run_dir.resolve()}"
    name = run_dir.resolve().name
    if not inside:
        _check_destination(path)  # again: the merge took a while
        return write_gguf(model, tokenizer, path, qtype=qtype, name=name, source=source)
    folder = RunFolder(run_dir)
    folder.open(resume=True)  # a complete run: its marker, under its lock
    try:
        folder.own(path.name)  # refuses a file of that name the run did not write
        return write_gguf(model, tokenizer, path, qtype=qtype, name=name, source=source)
    finally:
        folder.close()


__all__ = ["default_gguf_name", "export_gguf", "merged_model"]
