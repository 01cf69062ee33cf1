"""The judge cache: a base model's judgment kept on disk, so the runs that start from the same
model, data and settings judge it once.

An entry is the JSON dict of :func:`spectune.judging.all.judge` (with ``model``, what was judged)
in ``$SPECTUNE_CACHE/judge`` (:func:`cache_dir`), named by a hash of everything the numbers
depend on (:func:`cache_key`): the model folder and its files (name, size, modification time),
the held-out examples, the judging settings, the tokenizer's chat template and end-of-turn
marker (:func:`spectune.models.templates.template_key`: ``data.template`` changes the prompts),
the dtype and attention implementation, the
versions of the entries, of spectune and of Python (the forgetting text depends on it). A
damaged entry is judged again. The caller loads the model (only on a miss): this layer knows
no tune config.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spectune import __version__
from spectune._io import write_json
from spectune.data.examples import InstructionExample
from spectune.judging.all import judge
from spectune.models.loading import cache_root, check_cache_writable
from spectune.models.templates import template_key

#: version of the cache entries (bump when judging changes; 2: the template is in the key,
#: the accuracy counts unterminated answers)
JUDGE_VERSION = 2


def cache_dir() -> Path:
    """The folder of the entries: ``judge`` under spectune's cache."""
    return cache_root() / "judge"


def check_writable() -> Path:
    """Fail early, with the fix, when the cache cannot be written (see
    :func:`spectune.models.loading.check_cache_writable`)."""
    return check_cache_writable(cache_dir())


def examples_hash(examples: Sequence[InstructionExample]) -> str:
    """SHA-256 of the examples (their Dolly records, in order; a conversation's messages too)."""
    h = hashlib.sha256()
    for ex in examples:
        record: dict[str, Any] = ex.to_dolly()
        if ex.history or ex.system is not None:
            record["messages"] = ex.to_messages()
        h.update(json.dumps(record, sort_keys=True).encode())
    return h.hexdigest()


def model_fingerprint(model_dir: Path) -> list[Any]:
    """``(name, size, mtime_ns)`` of every file of a model folder, sorted by name."""
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cache_key(
    model_dir: Path,
    heldout: Sequence[InstructionExample],
    settings: dict[str, Any],
    *,
    dtype: str,
    attn_implementation: str,
    template: dict[str, Any] | None = None,
) -> str:
    """The entry's name: a hash of the model's files, the held-out data, the settings (the
    keywords of :func:`~spectune.judging.all.judge`), the tokenizer's template
    (:func:`~spectune.models.templates.template_key`), dtype, attention and versions."""
    key_data: dict[str, Any] = {
        "v": JUDGE_VERSION,
        "spectune": __version__,
        "model": str(model_dir.resolve()),
        "files": model_fingerprint(model_dir),
        "heldout": examples_hash(heldout),
        "settings": settings,
        "python": sys.version_info[:2],
    }
    if template is not None:
        key_data["template"] = template
    if dtype != "float32":  # float32 keys stay those of the runs before model_dtype existed
        key_data["dtype"] = dtype
    if attn_implementation != "sdpa":
        key_data["attn"] = attn_implementation
    return hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]


def judge_cached(
    load_model: Callable[[], Any],
    tokenizer: Any,
    heldout: Sequence[InstructionExample],
    settings: dict[str, Any],
    *,
    model_dir: Path,
    dtype: str,
    attn_implementation: str,
    progress: bool = True,
) -> dict[str, Any]:
    """A base model's judgment, read from the cache or judged (and cached) now.

    Args:
        load_model: loads the model to judge (called only when the cache has no entry).
        tokenizer: its tokenizer.
        heldout: the held-out examples.
        settings: keywords of :func:`~spectune.judging.all.judge` (part of the key).
        model_dir: the model folder (its files are part of the key).
        dtype: the dtype it is loaded in ("float32", "bfloat16"...), named in ``model``.
        attn_implementation: the attention implementation it is loaded with.
        progress: progress bars and a status line on stderr.

    Returns:
        :func:`~spectune.judging.all.judge`'s dict, with ``model`` ("base model, <dtype>").
    """
    key = cache_key(
        model_dir,
        heldout,
        settings,
        dtype=dtype,
        attn_implementation=attn_implementation,
        template=template_key(tokenizer),
    )
    path = cache_dir() / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            pass  # a damaged entry is recomputed
    if progress:
        print("judging the base model (cached for later runs)", file=sys.stderr, flush=True)
    # a base model judged on a template it was never taught runs past the limit, as expected:
    # the accuracy records it, without a warning
    result = judge(
        load_model(), tokenizer, heldout, progress=progress, warn_unterminated=False, **settings
    )
    result["model"] = f"base model, {dtype}"
    write_json(path, result)
    return result


__all__ = [
    "JUDGE_VERSION",
    "cache_dir",
    "cache_key",
    "check_writable",
    "examples_hash",
    "judge_cached",
    "model_fingerprint",
]
