"""What a run depends on, pinned when it starts: ``inputs.json`` in its results folder.

A run reads inputs from outside its folder: the base model (``model``), the data files
(``data.train``, ``data.eval``), a chat template file (``data.template``) and what its
objective names (a distillation teacher: ``distill.teacher``, a model folder or another run's
folder). When the run starts, each is recorded with its absolute path and a fingerprint,
beside the resolved config:

======================  ===================================================================
input                   fingerprint
======================  ===================================================================
a file                  its size and SHA-256 (up to :data:`HASH_LIMIT` bytes), else its size
                        and modification time
a model folder          the same for each of its top-level files (config.json, weights,
                        tokenizer; not ``*.md``)
a GGUF file             its size and SHA-256, whatever its size (the key of the folder it is
(``model``, teacher)    dequantized into); the folder is rebuilt from it on a resume
a hub id                its id and the commit its revision resolved to (the snapshot folder
(``org/name[@rev]``)    in the Hugging Face cache, read directly on a resume: a branch that
                        moved since does not change the run)
a spectune run folder   its config.yaml and the files under adapter/ and merged/, and its
                        base model (path and fingerprint)
the embedded model      its cache folder's name (a key of the GGUF file it is built from)
(``default``)           and the cache's manifest (file sizes, the transformers version that
                        built it), not the files' times: the cache is rebuilt from the same
                        GGUF file byte for byte, so a cache deleted and rebuilt does not stop
                        a resume; another transformers version may dequantize otherwise and
                        does
a data folder           the same for each file under it (a ``save_to_disk`` folder: its
(no config.json)        splits' folders too); ``FOLDER:SPLIT`` reads ``FOLDER``
a ``datasets`` name     its split's ``datasets`` fingerprint (it names the revision and the
                        files in the datasets cache) and row count; pinned as given, not as
                        a path
======================  ===================================================================

``--resume`` reads every input at its pinned absolute path, whatever the current directory
(:func:`pinned_config`), and refuses before the results folder is touched (the marker stays
as it was): a config that differs from the one the run started with, the changed fields
named (:func:`check_config`: also an edited ``config.yaml``); an input that is gone or
changed, named with what changed (:func:`check_unchanged`). A run never reads from its own
results folder (:func:`check_outside`): ``--overwrite`` would delete its input first.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune.data.formats import is_dataset_name, load_named
from spectune.errors import SpectuneError
from spectune.models.loading import (
    MANIFEST,
    default_model_dir,
    gguf_sha256,
    resolve_model_dir,
    safetensors_problem,
    torch_file_problem,
)
from spectune.models.sources import is_gguf_file, parse_hub_id, snapshot_of
from spectune.models.templates import TEMPLATE_NAMES
from spectune.tuning.config import TuneConfig, load_config

if TYPE_CHECKING:
    from spectune.tuning.objectives.base import Objective

#: the file in a run folder that holds the pins
PINS = "inputs.json"
#: the inputs that name a model, resolved as ``model:`` is (a hub id, a GGUF file)
MODEL_INPUTS = ("model", "distill.teacher")
#: files up to this size are fingerprinted by their SHA-256, larger ones by size and mtime
HASH_LIMIT = 8 << 20
VERSION = 1


# --------------------------------------------------------------------------- fingerprints


def _file_print(path: Path) -> dict[str, Any]:
    st = path.stat()
    if st.st_size <= HASH_LIMIT:
        return {"size": st.st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _files_print(root: Path, names: list[Path]) -> dict[str, Any]:
    return {p.relative_to(root).as_posix(): _file_print(p) for p in sorted(names) if p.is_file()}


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a spectune run (``config.yaml`` and ``run.json``)."""
    return (path / "config.yaml").is_file() and (path / "run.json").is_file()


def run_base_model(run_dir: Path, what: str) -> tuple[str, Path]:
    """The base model of the spectune run in ``run_dir``: its ``model`` setting and folder,
    the path pinned in its ``inputs.json`` or (a run made before pins) its config's ``model``
    from the current directory.

    Raises:
        SpectuneError: ``what`` (the run folder) named with its missing base model.
    """
    record = read(run_dir, quiet=True)
    pin = (record or {}).get("inputs", {}).get("model")
    if pin and pin.get("given") != "default":
        path = Path(pin["path"])
        if is_gguf_file(path):
            return pin["given"], resolve_model_dir(path, f"{what}: its base model")
        if not (path / "config.json").is_file():
            raise SpectuneError(
                f"{what}: the base model of that run, {path} (model: {pin.get('given')}), is "
                "gone; put it back there or pick another"
            )
        return pin["given"], path
    cfg = load_config(run_dir / "config.yaml", foreign_sections="drop")
    try:
        return cfg.model, resolve_model_dir(cfg.model)
    except SpectuneError as exc:
        raise SpectuneError(f"{what}: the base model of that run cannot be found ({exc})") from None


def _on_disk(path: Path) -> Path:
    """What a path setting reads on disk: ``FOLDER:SPLIT`` (a split of a data folder) reads
    ``FOLDER``."""
    folder = str(path).rpartition(":")[0]
    return Path(folder) if not path.exists() and folder and Path(folder).is_dir() else path


def fingerprint(given: str, path: Path) -> dict[str, Any]:
    """The fingerprint of one input (see the module docstring)."""
    path = _on_disk(path)
    if not path.exists() and is_dataset_name(given):
        loaded, _ = load_named(given)
        return {"kind": "dataset", "rows": len(loaded), "fingerprint": loaded._fingerprint}
    if given == "default":
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        return {
            "kind": "default",
            "cache": path.name,
            "transformers": manifest.get("transformers_version"),
            "files": manifest.get("files"),
        }
    if is_gguf_file(path):
        return {"kind": "gguf", "size": path.stat().st_size, "sha256": gguf_sha256(path)}
    if path.is_file():
        return {"kind": "file", **_file_print(path)}
    hub = snapshot_of(path)
    if hub is not None:
        return {"kind": "hub", "repo": hub.repo, "commit": hub.commit}
    if is_run_folder(path):
        names = [path / "config.yaml"]
        for sub in ("adapter", "merged"):
            if (path / sub).is_dir():
                names += [p for p in (path / sub).rglob("*") if not p.name.startswith(".")]
        given, base = run_base_model(path, f"run folder {path}")
        base = base.resolve()
        return {
            "kind": "run",
            "files": _files_print(path, names),
            "base": {"path": str(base), "fingerprint": fingerprint(given, base)},
        }
    model = (path / "config.json").is_file() or (path / "adapter_config.json").is_file()
    names = [
        p
        for p in (path.iterdir() if model else path.rglob("*"))
        if not any(part.startswith(".") for part in p.relative_to(path).parts)
        and not p.name.lower().endswith(".md")
    ]
    return {"kind": "folder", "files": _files_print(path, names)}


def _what_changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two fingerprints of one input, in a few words."""
    if old.get("kind") != new.get("kind"):
        return f"it was a {old.get('kind')}, it is a {new.get('kind')} now"
    if old.get("kind") == "dataset":
        if old.get("rows") != new.get("rows"):
            return f"its rows changed ({old.get('rows')} -> {new.get('rows')})"
        return "its datasets fingerprint changed (another revision, or other files)"
    if old.get("kind") == "default":
        if old.get("transformers") != new.get("transformers"):
            return (
                f"its cache was built by transformers {old.get('transformers')}, now by "
                f"{new.get('transformers')}"
            )
        if old.get("cache") != new.get("cache"):
            return "its cache is built from another GGUF file now"
        return "its cache holds other files"
    if old.get("kind") == "hub":
        return (
            f"it is {new.get('repo')} at commit {new.get('commit')} now, it was "
            f"{old.get('repo')} at {old.get('commit')}"
        )
    if old.get("kind") in ("file", "gguf"):
        if old.get("size") != new.get("size"):
            return f"its size changed ({old.get('size')} -> {new.get('size')} bytes)"
        return "its content changed"
    if old.get("kind") == "run":
        ob, nb = old.get("base") or {}, new.get("base") or {}
        if ob.get("path") != nb.get("path"):
            return f"its base model is {nb.get('path')} now, it was {ob.get('path')}"
        if ob.get("fingerprint") != nb.get("fingerprint"):
            return f"its base model {nb.get('path')} changed: " + _what_changed(
                ob.get("fingerprint") or {}, nb.get("fingerprint") or {}
            )
    a, b = old.get("files") or {}, new.get("files") or {}
    for name in sorted(set(a) | set(b)):
        if name not in b:
            return f"{name} is gone"
        if name not in a:
            return f"{name} is new"
        if a[name] != b[name]:
            sa, sb = a[name].get("size"), b[name].get("size")
            if sa != sb:
                return f"{name} changed ({sa} -> {sb} bytes)"
            if "sha256" in a[name] and "sha256" in b[name]:
                return f"{name} changed (same size, other content)"
            return f"{name} changed (same size, modified since)"
    return "it changed"


# --------------------------------------------------------------------------- the record


def config_inputs(config: TuneConfig, objective: Objective) -> dict[str, str]:
    """The settings of ``config`` that name what the run reads (dotted key -> value as
    given): ``model``, the data files, a Jinja template file, and the objective's
    (:meth:`Objective.inputs`)."""
    out = {"model": config.model}
    if config.data.train != "tasks":
        out["data.train"] = config.data.train
    if config.data.eval is not None:
        out["data.eval"] = config.data.eval
    if config.data.template not in TEMPLATE_NAMES:  # a Jinja file
        out["data.template"] = config.data.template
    out.update(objective.inputs(config))
    return out


def absolute(given: str) -> Path:
    """Where a path setting points from the current directory (symlinks resolved); a
    ``datasets`` name (:func:`~spectune.data.formats.is_dataset_name`) is no path: it stays as
    given, so a resumed run loads the same name."""
    if is_dataset_name(given):
        return Path(given)
    return Path(os.path.expanduser(given)).resolve()


def input_path(key: str, given: str, model_dir: Path | None = None) -> Path:
    """The absolute path a run reads input ``key`` (given as ``given``) from: a file or folder
    from the current directory; for a model (:data:`MODEL_INPUTS`) a GGUF file itself (not
    the folder it is dequantized into) and a hub id its snapshot folder in the Hugging Face
    cache. ``model_dir``: the run's resolved model folder (``key`` ``model``)."""
    path = absolute(given)
    if key not in MODEL_INPUTS or is_gguf_file(path):
        return path
    if key == "model" and model_dir is not None:
        return model_dir.resolve()
    if not path.exists() and parse_hub_id(given) is not None:
        return resolve_model_dir(given, key).resolve()
    return path


def pin(
    config: TuneConfig, objective: Objective, model_dir: Path, reading: TuneConfig | None = None
) -> dict[str, Any]:
    """The record of a run that starts now: its config (without ``output_dir``), the current
    directory, and every input as given, with its absolute path (as ``reading``, the config
    the inputs are read with, names it: :func:`pinned_config`) and fingerprint."""
    data = config.to_dict()
    data.pop("output_dir", None)
    inputs = {}
    where = config_inputs(reading or config, objective)
    for key, given in config_inputs(config, objective).items():
        path = input_path(key, where.get(key, given), model_dir)
        inputs[key] = {"given": given, "path": str(path), "fingerprint": fingerprint(given, path)}
    return {"spectune_inputs": VERSION, "cwd": str(Path.cwd()), "config": data, "inputs": inputs}


def read(out: Path, *, quiet: bool = False) -> dict[str, Any] | None:
    """The pins of the run in ``out``; None when it has none (a run made before pins).

    Raises:
        SpectuneError: the file is damaged (not with ``quiet``: then None).
    """
    path = Path(out) / PINS
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        ok = (
            isinstance(record, dict)
            and record.get("spectune_inputs") == VERSION
            and isinstance(record.get("config"), dict)
            and isinstance(record.get("inputs"), dict)
            and all(
                isinstance(v, dict)
                and isinstance(v.get("given"), str)
                and isinstance(v.get("path"), str)
                and isinstance(v.get("fingerprint"), dict)
                for v in record["inputs"].values()
            )
        )
    except (OSError, ValueError) as exc:
        ok, record = False, str(exc)
    if ok:
        return record
    if quiet:
        return None
    raise SpectuneError(
        f"{path} is damaged: it records what the run started from, so the run cannot be "
        "resumed; start over with --overwrite"
    )


def pinned_config(config: TuneConfig, record: dict[str, Any] | None) -> TuneConfig:
    """A copy of ``config`` whose path settings are the absolute paths pinned in ``record``
    (the config itself, when there is no record). The embedded model stays ``default``."""
    config = copy.deepcopy(config)
    for key, pinned in (record or {}).get("inputs", {}).items():
        if pinned["given"] == "default" or config.get(key) != pinned["given"]:
            continue
        head, _, leaf = key.partition(".")
        if not leaf:
            setattr(config, head, pinned["path"])
        elif head in config.sections:
            setattr(config.sections[head], leaf, pinned["path"])
        else:
            setattr(getattr(config, head), leaf, pinned["path"])
    return config


# --------------------------------------------------------------------------- the checks


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def check_config(out: Path, record: dict[str, Any], config: TuneConfig) -> None:
    """Refuse to resume with another config than the one the run started with (an edited
    ``config.yaml`` too), naming the changed fields.

    Raises:
        SpectuneError: the fields that differ, with both values.
    """
    saved = TuneConfig.from_dict(
        {**record["config"], "output_dir": config.output_dir},
        source=str(Path(out) / PINS),
        foreign_sections="drop",
    ).to_dict()
    now = config.to_dict()
    for data in (saved, now):
        data.pop("output_dir", None)
    a, b = _leaves(saved), _leaves(now)
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k, "(unset)") != b.get(k, "(unset)")]
    if diff:
        shown = ", ".join(
            f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in diff[:4]
        ) + (" ..." if len(diff) > 4 else "")
        raise SpectuneError(
            f"--resume: the config differs from the one the run in {out} started with "
            f"({shown}); a resume continues the same run: undo the change (the started config "
            f"is in {PINS}) or start over with --overwrite"
        )


def check_unchanged(out: Path, record: dict[str, Any]) -> None:
    """Refuse to resume when an input the run started from is gone or changed.

    Raises:
        SpectuneError: the input (setting, absolute path) and what changed.
    """
    for key, pinned in record["inputs"].items():
        given, path = pinned["given"], Path(pinned["path"])
        where = f"{key} {path}" if given == str(path) else f"{key} {given} (pinned as {path})"
        path = _on_disk(path)
        if pinned["fingerprint"].get("kind") == "dataset":  # a datasets name: no path to check
            now = fingerprint(given, path)
            if now != pinned["fingerprint"]:
                raise SpectuneError(
                    f"--resume: {where} changed since the run in {out} started "
                    f"({_what_changed(pinned['fingerprint'], now)}); restore it, or start over "
                    "with --overwrite"
                )
            continue
        if given == "default":
            path = default_model_dir()
        elif not path.exists():
            hub = pinned["fingerprint"]
            back = (
                f"fetch it again (`hf download {hub.get('repo')} --revision {hub.get('commit')}`)"
                if hub.get("kind") == "hub"
                else "put it back there"
            )
            raise SpectuneError(
                f"--resume: {where} is gone since the run in {out} started; {back}, or start "
                "over with --overwrite"
            )
        try:
            now = fingerprint(given, path)
        except (OSError, ValueError) as exc:
            raise SpectuneError(f"--resume: {where} cannot be read ({exc})") from None
        if now != pinned["fingerprint"]:
            raise SpectuneError(
                f"--resume: {where} changed since the run in {out} started "
                f"({_what_changed(pinned['fingerprint'], now)}); a resumed run must train on "
                "what it started from: restore it, or start over with --overwrite"
            )


def check_outside(out: Path, record: dict[str, Any]) -> None:
    """Refuse a run that reads from its own results folder (its teacher, its base model, a
    data file in there): ``--overwrite`` would delete the input, a resume write into it.

    Raises:
        SpectuneError: naming the setting and the folder.
    """
    folder = Path(out).resolve()
    for key, pinned in record["inputs"].items():
        paths = [(key, Path(pinned["path"]))]
        base = pinned["fingerprint"].get("base")
        if isinstance(base, dict) and base.get("path"):
            paths.append((f"the base model of {key}", Path(base["path"])))
        for what, path in paths:
            if path == folder or folder in path.parents:
                inside = "is" if path == folder else "lies inside"
                raise SpectuneError(
                    f"{what} {path} {inside} the output folder {out}: a run cannot write into "
                    "(or --overwrite) what it reads; pick another --out"
                )


def check_checkpoint(checkpoint: Path) -> None:
    """Refuse to resume from a checkpoint with a truncated, corrupt or pickled file (each
    PyTorch file loaded weights-only onto the meta device, as the Trainer will load it).

    Raises:
        SpectuneError: the file, what is wrong, and what to do.
    """
    for path in sorted(checkpoint.rglob("*")):
        if not path.is_file():
            continue
        problem = None
        if path.name == "training_args.bin":
            continue  # the Trainer writes it and never loads it
        if path.suffix in (".pt", ".pth", ".bin"):
            problem = torch_file_problem(path, trainer=True)
        elif path.suffix == ".safetensors":
            problem = safetensors_problem(path)
            problem = problem and f"{path}: {problem}"
        elif path.name == "trainer_state.json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                problem = f"{path} is unreadable ({' '.join(str(exc).split())[:120]})"
        if problem:
            raise SpectuneError(
                f"--resume: {problem}; delete {checkpoint} to resume from the checkpoint "
                "before it, or start over with --overwrite"
            )


__all__ = [
    "HASH_LIMIT",
    "PINS",
    "check_checkpoint",
    "check_config",
    "check_outside",
    "check_unchanged",
    "config_inputs",
    "fingerprint",
    "input_path",
    "is_run_folder",
    "pin",
    "pinned_config",
    "read",
    "run_base_model",
]
