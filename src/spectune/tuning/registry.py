"""Registries of named plug-ins: the fine-tuning methods and the training objectives.

One :class:`Registry` per kind (``spectune.tuning.methods.METHODS`` and
``spectune.tuning.objectives.OBJECTIVES``). Built-in plug-ins are modules that call
``register(...)`` when imported; a registry imports them the first time it is asked anything,
so an out-of-tree plug-in registered from user code sits beside them on equal terms.

A plug-in declares the config sections it reads (``sections``: name -> dataclass). The
registry keeps which plug-ins read which section, so that the config can refuse a section
given to a run whose method (or objective) does not read it, naming both.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from spectune.errors import SpectuneError

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class Registry:
    """Named plug-ins of one kind.

    Args:
        kind: ``"method"`` or ``"objective"`` (used in messages).
        base: the class every plug-in must be an instance of.
        builtins: modules that register the built-in plug-ins when imported.
        reserved: names a section may not take (the config's own keys).
    """

    def __init__(self, kind: str, base: type, builtins: Iterable[str], reserved: Iterable[str]):
        self.kind = kind
        self.base = base
        self._builtins = tuple(builtins)
        self._reserved = frozenset(reserved)
        self._items: dict[str, Any] = {}
        self._loaded = False

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: the modules call register() while importing
        for module in self._builtins:
            importlib.import_module(module)

    # -- registering ---------------------------------------------------------------------

    def register(self, name: str, spec: Any) -> Any:
        """Add ``spec`` under ``name``; returns it.

        Raises:
            SpectuneError: the name is taken or malformed, ``spec`` is not a plug-in of this
                kind, or it declares a section another plug-in declares with another class.
        """
        self._load_builtins()
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpectuneError(
                f"{self.kind} name {name!r} must be lower case letters, digits, '_' or '-', "
                "starting with a letter"
            )
        if name in self._items:
            raise SpectuneError(
                f"{self.kind} {name!r} is already registered ({self._items[name]!r}); pick "
                f"another name, or unregister_{self.kind}({name!r}) first"
            )
        if not isinstance(spec, self.base):
            raise SpectuneError(
                f"register_{self.kind}({name!r}, ...) needs an instance of "
                f"{self.base.__module__}.{self.base.__name__}, got {type(spec).__name__}"
            )
        if spec.name and spec.name != name:
            raise SpectuneError(
                f"this {self.kind} object is already registered as {spec.name!r}; register a "
                f"new instance under {name!r}"
            )
        sections = dict(getattr(spec, "sections", {}) or {})
        for section, cls in sections.items():
            if section in self._reserved or not _NAME.match(section):
                raise SpectuneError(
                    f"{self.kind} {name!r}: section name {section!r} is taken by the config "
                    "itself or malformed; pick another"
                )
            other = self.section_class(section)
            if other is not None and other is not cls:
                raise SpectuneError(
                    f"{self.kind} {name!r} declares section {section!r} as {cls.__name__}, but "
                    f"{', '.join(self.readers(section))} declare it as {other.__name__}"
                )
        spec.name = name
        self._items[name] = spec
        return spec

    def unregister(self, name: str) -> None:
        """Remove a registered plug-in (tests, notebooks)."""
        self._load_builtins()
        spec = self._items.pop(name, None)
        if spec is None:
            raise SpectuneError(f"{self.kind} {name!r} is not registered")
        spec.name = ""

    # -- reading -------------------------------------------------------------------------

    def get(self, name: str) -> Any:
        """The plug-in called ``name``.

        Raises:
            SpectuneError: no such plug-in; the message lists the registered ones.
        """
        self._load_builtins()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpectuneError(
                f"unknown {self.kind} {name!r}{hint}; registered {self.kind}s: "
                f"{', '.join(self.names())}"
            ) from None

    def _rank(self, spec: Any) -> int:
        """The position of the built-in module that defines ``spec``'s class (plug-ins from
        elsewhere after them), so listings do not depend on which module was imported first."""
        module = type(spec).__module__
        for i, builtin in enumerate(self._builtins):
            if module == builtin or module.startswith(builtin + "."):
                return i
        return len(self._builtins)

    def names(self) -> list[str]:
        """Registered names: the built-ins in the order of their modules, then the others;
        each group in registration order."""
        self._load_builtins()
        return sorted(self._items, key=lambda n: self._rank(self._items[n]))

    def describe(self) -> dict[str, str]:
        """name -> one-line description."""
        return {n: self._items[n].description for n in self.names()}

    def sections(self) -> dict[str, type]:
        """Every section any plug-in of this kind declares: name -> dataclass."""
        self._load_builtins()
        out: dict[str, type] = {}
        for spec in self._items.values():
            out.update(getattr(spec, "sections", {}) or {})
        return out

    def section_class(self, section: str) -> type | None:
        for spec in self._items.values():
            cls = (getattr(spec, "sections", {}) or {}).get(section)
            if cls is not None:
                return cls
        return None

    def readers(self, section: str) -> list[str]:
        """Names of the plug-ins that read ``section``."""
        self._load_builtins()
        return [n for n, s in self._items.items() if section in (s.sections or {})]

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._items

    def items(self) -> Mapping[str, Any]:
        self._load_builtins()
        return dict(self._items)


__all__ = ["Registry"]
