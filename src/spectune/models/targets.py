"""Target matching: which modules of a model a peft-style ``target_modules`` spec selects.

Every method that adapts chosen layers reads its targets here (peft's own rules, so a spec
means the same to spectune as to ``LoraConfig``): ``"all-linear"`` (every ``nn.Linear`` but
the output head), a list of names or name suffixes (``"q_proj"`` matches
``model.layers.0.self_attn.q_proj``), or a regular expression matching a whole module name;
``exclude_modules`` (names or suffixes) are then left out. :func:`layer_of` reads the block
number and kind of a module name, for tables that group targets by layer.
"""

from __future__ import annotations

import re

from torch import nn

from spectune.errors import SpectuneError

#: the target spec that selects every linear layer but the output head (as in peft)
ALL_LINEAR = "all-linear"

_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_of(name: str) -> tuple[int | None, str]:
    """(block number, module kind) of a module name: ``model.layers.3.mlp.up_proj`` -> (3,
    ``mlp.up_proj``); names without a number give (None, name)."""
    match = _LAYER_RE.search(name)
    if match is None:
        return None, name
    return int(match.group(1)), name[match.end() :] or name


def name_patterns(names: list[str]) -> list[str]:
    """Module names with block numbers replaced by ``*``, deduplicated, in first-seen order."""
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name), None)
    return list(seen)


def matches_any(name: str, patterns: list[str]) -> bool:
    """Whether ``name`` is one of ``patterns`` or ends with ``"." + pattern``."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def match_modules(
    model: nn.Module,
    target_modules: str | list[str],
    exclude_modules: list[str] | None = None,
    *,
    label: str = "target_modules",
) -> list[str]:
    """Names of the modules a peft-style target spec selects, in model order.

    Args:
        model: any ``nn.Module`` (a meta-device model works: only names and types are read).
        target_modules: the spec (module docstring).
        exclude_modules: names or suffixes to leave out.
        label: how the setting is called in the error message.

    Raises:
        SpectuneError: nothing matches; the message lists the model's linear modules (block
            numbers shown as ``*``).
    """
    modules = dict(model.named_modules())
    linear = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n]
    if target_modules == ALL_LINEAR:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        matched = [n for n in linear if modules[n] is not head]
    elif isinstance(target_modules, str):
        matched = [n for n in modules if n and re.fullmatch(target_modules, n)]
    else:
        matched = [n for n in modules if n and matches_any(n, target_modules)]
    if exclude_modules:
        matched = [n for n in matched if not matches_any(n, exclude_modules)]
    if not matched:
        available = name_patterns(linear)
        shown = ", ".join(available[:25]) + (" ..." if len(available) > 25 else "")
        if isinstance(target_modules, str) and target_modules != ALL_LINEAR:
            suffixes = [n for n in linear if n.split(".")[-1] == target_modules]
            if suffixes:  # a bare module name: peft reads a single string as a full-name regex
                raise SpectuneError(
                    f"{label}={target_modules!r} is read as a regular expression that must "
                    f"match a whole module name (as in peft), and matches none; for every module "
                    f"called {target_modules} pass a list: {label}=[{target_modules}] "
                    f"({len(suffixes)} modules)"
                )
        raise SpectuneError(
            f"{label}={target_modules!r}"
            + (f" (exclude_modules={exclude_modules!r})" if exclude_modules else "")
            + f" matches no module of this {type(model).__name__}; its linear modules are: "
            + (shown or "none")
        )
    return matched


__all__ = ["ALL_LINEAR", "layer_of", "match_modules", "matches_any", "name_patterns"]
